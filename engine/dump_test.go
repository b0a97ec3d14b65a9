package engine_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// lookup returns the node at snapshot path p.
func lookup(t *testing.T, r engine.TreeLoader, sn *repo.Snapshot, p string) *tree.Node {
	t.Helper()
	n, err := engine.Lookup(ctx, r, sn, p)
	if err != nil {
		t.Fatalf("lookup %s: %v", p, err)
	}
	return n
}

// A directory dumped as tar and extracted by GNU tar (as root: with owners)
// is the source tree: content, modes, owners, nanosecond mtimes, symlinks,
// hard links sharing an inode, a FIFO and a device, names with newlines and
// invalid UTF-8, a sparse file with its holes.
func TestDumpTarExtractedByGNUTarEqualsSource(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		t.Fatal("GNU tar is needed for this test:", err)
	}
	src := filepath.Join(t.TempDir(), "zoomserv")
	makeTree(t, src, 7)
	r := enginetest.NewRepo(t)
	sn := backup(t, r, day1, src)

	archive := filepath.Join(t.TempDir(), "dump.tar")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	res, err := engine.DumpTar(ctx, r, sn, src, f)
	if err != nil {
		t.Fatalf("dump %s: %v", src, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if len(res.Problems) != 0 || len(res.Warnings) != 0 || res.Entries < 30 {
		t.Errorf("dump result: %+v", res)
	}
	target := t.TempDir()
	args := []string{"-x", "-p", "-f", archive, "-C", target}
	if os.Geteuid() == 0 {
		args = append(args, "--same-owner", "--numeric-owner")
	}
	if out, err := exec.Command("tar", args...).CombinedOutput(); err != nil {
		t.Fatalf("tar %v: %v\n%s", args, err, out)
	}
	got := filepath.Join(target, "zoomserv")
	compareTrees(t, src, got) // the sparse file too: content, and holes as holes
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(got, "sparse"), &st); err != nil || st.Blocks*512 > 1<<20 {
		t.Errorf("the sparse file (8 MiB, 8 KiB of data) was extracted with %d blocks (%v)", st.Blocks, err)
	}
	// Go's archive/tar reads the same archive: the sparse member with its
	// real name, size and content.
	f, err = os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	members := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("archive/tar: %v", err)
		}
		members++
		if h.Name == "zoomserv/sparse" {
			data, err := io.ReadAll(tr)
			want, _ := os.ReadFile(filepath.Join(src, "sparse"))
			if err != nil || !bytes.Equal(data, want) || h.Size != 8<<20 || h.ModTime.UnixNano() != fileMTime(t, filepath.Join(src, "sparse")) {
				t.Errorf("archive/tar reads the sparse member as %d bytes (%v), size %d, mtime %v", len(data), err, h.Size, h.ModTime)
			}
		}
	}
	if int64(members) != res.Entries {
		t.Errorf("archive/tar reads %d members, the dump wrote %d", members, res.Entries)
	}
}

func fileMTime(t *testing.T, p string) int64 {
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime().UnixNano()

}

// Dumping / gives members named by their whole snapshot path.
func TestDumpTarOfTheRootNamesWholePaths(t *testing.T) {
	src := filepath.Join(t.TempDir(), "data")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", "f"), []byte("content"), 0o644)
	r := enginetest.NewRepo(t)
	sn := backup(t, r, day1, src)
	var buf bytes.Buffer
	if _, err := engine.DumpTar(ctx, r, sn, "/", &buf); err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		names[h.Name] = string(data)
	}
	want := strings.TrimPrefix(filepath.Join(src, "sub", "f"), "/")
	if names[want] != "content" || len(names) != strings.Count(want, "/")+1 {
		t.Errorf("members %v, want every directory down to %s", names, want)
	}
}

// One file dumped equals the file: a small one, a 16 MiB database whose
// extents live in extent lists, and a sparse file (holes as zeros).
func TestDumpFileEqualsSource(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "zoomserv")
	os.MkdirAll(dir, 0o755)
	rng := rand.New(rand.NewSource(3))
	writePages(t, filepath.Join(dir, "X500.db"), 4096, rng)
	os.WriteFile(filepath.Join(dir, "small.conf"), []byte("port 389\n"), 0o644)
	sp, _ := os.Create(filepath.Join(dir, "sparse"))
	sp.WriteAt(page(rng), 5<<20)
	sp.Truncate(12 << 20)
	sp.Close()
	r := enginetest.NewRepo(t)
	sn := backup(t, r, day1, dir)
	if n := lookup(t, r, sn, filepath.Join(dir, "X500.db")); len(n.Lists) == 0 {
		t.Fatalf("X500.db has no extent lists (%d extents): the test needs them", len(n.Content))
	}
	if n := lookup(t, r, sn, filepath.Join(dir, "sparse")); !hasHole(n.Content) {
		t.Fatal("the sparse file was stored without holes: the test needs them")
	}
	for _, name := range []string{"X500.db", "small.conf", "sparse"} {
		p := filepath.Join(dir, name)
		var out bytes.Buffer
		if err := engine.DumpFile(ctx, r, p, lookup(t, r, sn, p), &out); err != nil {
			t.Fatalf("dump %s: %v", name, err)
		}
		want, _ := os.ReadFile(p)
		if !bytes.Equal(out.Bytes(), want) {
			t.Errorf("%s: dumped %d bytes differ from the %d of the file", name, out.Len(), len(want))
		}
	}
}

func hasHole(es []tree.Extent) bool {
	for _, e := range es {
		if e.Hole {
			return true
		}
	}
	return false
}

// failingChunk is a repository in which one chunk fails verification.
type failingChunk struct {
	engine.DumpRepo
	bad blob.ID
}

func (f failingChunk) LoadBlob(ctx context.Context, id blob.ID, buf []byte) ([]byte, error) {
	if id == f.bad {
		return nil, errors.New("blob " + id.Short() + ": " + repo.ErrCorruptBlob.Error())
	}
	return f.DumpRepo.LoadBlob(ctx, id, buf)
}

// A chunk that fails verification stops a dump with an error naming the
// file and the offset; the archive is left without its end (tar reports
// it), never a silently short one.
func TestDumpStopsAtAChunkThatFailsVerification(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "zoomserv")
	os.MkdirAll(dir, 0o755)
	writePages(t, filepath.Join(dir, "X500.db"), 1024, rand.New(rand.NewSource(5)))
	os.WriteFile(filepath.Join(dir, "z-after"), []byte("after the database"), 0o644)
	r := enginetest.NewRepo(t)
	sn := backup(t, r, day1, dir)
	db := filepath.Join(dir, "X500.db")
	n := lookup(t, r, sn, db)
	bad := failingChunk{r, n.Content[len(n.Content)/2].ID}

	err := engine.DumpFile(ctx, bad, db, n, io.Discard)
	if err == nil || !strings.Contains(err.Error(), db) || !strings.Contains(err.Error(), "offset") {
		t.Errorf("dump file with a bad chunk: %v, want an error naming %s and the offset", err, db)
	}
	var buf bytes.Buffer
	_, err = engine.DumpTar(ctx, bad, sn, dir, &buf)
	if err == nil || !strings.Contains(err.Error(), db) {
		t.Errorf("dump tar with a bad chunk: %v, want an error naming %s", err, db)
	}
	tr := tar.NewReader(&buf)
	var rerr error
	for rerr == nil {
		if _, rerr = tr.Next(); rerr == nil {
			_, rerr = io.Copy(io.Discard, tr)
		}
	}
	if rerr == io.EOF {
		t.Error("the archive cut at the bad chunk reads as a complete archive")
	}
}

// lostContent is a repository whose trees say a file's extent list is lost.
type lostContent struct {
	engine.DumpRepo
	name string
}

func (l lostContent) LoadTree(ctx context.Context, id blob.ID) (*tree.Tree, error) {
	t, err := l.DumpRepo.LoadTree(ctx, id)
	if err == nil {
		if n := t.Find(l.name); n != nil {
			n.ContentError = "extent list 1234abcd: corrupt blob"
		}
	}
	return t, err
}

// A file whose content the snapshot lacks is left out of a directory's
// archive, named, and the dump fails (ErrDumpIncomplete) after writing a
// complete archive of the rest; dumped alone it is an error naming it.
func TestDumpLeavesOutAndNamesAFileWithoutContent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "zoomserv")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "X500.db"), []byte("database"), 0o600)
	os.WriteFile(filepath.Join(dir, "ok.conf"), []byte("fine"), 0o644)
	r := enginetest.NewRepo(t)
	sn := backup(t, r, day1, dir)
	lost := lostContent{r, "X500.db"}
	var buf bytes.Buffer
	res, err := engine.DumpTar(ctx, lost, sn, dir, &buf)
	if !errors.Is(err, engine.ErrDumpIncomplete) || len(res.Problems) != 1 || res.Problems[0].Path != filepath.Join(dir, "X500.db") {
		t.Fatalf("dump: %v, %+v", err, res)
	}
	tr := tar.NewReader(&buf)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the archive of the rest is not complete: %v", err)
		}
		names = append(names, h.Name)
	}
	if strings.Join(names, " ") != "zoomserv/ zoomserv/ok.conf" {
		t.Errorf("members %v", names)
	}
	p := filepath.Join(dir, "X500.db")
	if err := engine.DumpFile(ctx, lost, p, lookup(t, lost, sn, p), io.Discard); !errors.Is(err, engine.ErrNoContent) || !strings.Contains(err.Error(), p) {
		t.Errorf("dump of the file alone: %v", err)
	}
}

// A path the snapshot lacks is ErrNotInSnapshot, named.
func TestDumpOfAMissingPath(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o644)
	r := enginetest.NewRepo(t)
	sn := backup(t, r, day1, dir)
	for _, p := range []string{filepath.Join(dir, "missing"), filepath.Join(dir, "file", "below")} {
		_, err := engine.DumpTar(ctx, r, sn, p, io.Discard)
		if !errors.Is(err, engine.ErrNotInSnapshot) || !strings.Contains(err.Error(), p) {
			t.Errorf("dump %s: %v, want ErrNotInSnapshot naming it", p, err)
		}
	}
}
