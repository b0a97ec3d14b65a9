package tapeio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/tape"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

// drive is a tape-drive double: volumes are files in dir, every write must
// be exactly blockSize bytes (else EINVAL), and after capacity bytes a
// volume takes no more (ENOSPC, no partial block).
type drive struct {
	dir       string
	blockSize int
	capacity  int64
}

func (d *drive) path(seq int) string { return filepath.Join(d.dir, fmt.Sprintf("vol-%03d.tar", seq)) }

func (d *drive) OpenWrite(ctx context.Context, seq int) (io.WriteCloser, error) {
	f, err := os.Create(d.path(seq))
	return &driveVol{d: d, f: f}, err
}

func (d *drive) OpenRead(ctx context.Context, seq int) (io.ReadCloser, error) {
	return os.Open(d.path(seq))
}

type driveVol struct {
	d *drive
	f *os.File
	n int64
}

func (v *driveVol) Write(p []byte) (int, error) {
	if len(p) != v.d.blockSize {
		return 0, syscall.EINVAL
	}
	if v.n+int64(len(p)) > v.d.capacity {
		return 0, syscall.ENOSPC
	}
	n, err := v.f.Write(p)
	v.n += int64(n)
	return n, err
}

func (v *driveVol) Close() error { return v.f.Close() }

// TestExportEndOfMediaRestores exports to a drive that reports end of
// media part way through volumes; the set still imports and restores.
func TestExportEndOfMediaRestores(t *testing.T) {
	ctx := context.Background()
	r := enginetest.NewRepo(t)
	src := t.TempDir()
	rng := rand.New(rand.NewSource(7))
	for i := 0; i < 3; i++ {
		b := make([]byte, 100<<10)
		rng.Read(b)
		os.WriteFile(filepath.Join(src, fmt.Sprintf("f%d", i)), b, 0o600)
		if _, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{src}}); err != nil {
			t.Fatal(err)
		}
	}
	d := &drive{dir: t.TempDir(), blockSize: 4096, capacity: 160 << 10}
	res, err := Export(ctx, r, d, ExportOptions{Write: tape.WriteOptions{BlockSize: 4096}})
	if err != nil {
		t.Fatal(err)
	}
	dropped := 0
	for _, c := range res.Catalogs {
		dropped += len(c.Dropped)
	}
	if len(res.Catalogs) < 3 || dropped == 0 {
		t.Fatalf("%d volumes, %d dropped members: the drive should have met end of media", len(res.Catalogs), dropped)
	}
	var paths []string
	for i := len(res.Catalogs); i >= 1; i-- {
		paths = append(paths, d.path(i))
	}
	dir := filepath.Join(t.TempDir(), "imported")
	imp, err := Import(ctx, enginetest.Local(dir), paths, ImportOptions{Read: ReadOptions{BlockSize: 4096}, Open: enginetest.OpenOptions()})
	if err != nil {
		t.Fatalf("import: %v (%+v)", err, imp)
	}
	// The volumes are files: read in place, and copied into the spool as
	// from a tape device; the spool indexed in memory, and (too many blobs
	// for memory) in its cache file.
	defer func(n int) { maxBlobsInMemory = n }(maxBlobsInMemory)
	for _, c := range []struct {
		spool bool
		max   int
	}{{false, 1 << 20}, {true, 1 << 20}, {false, 0}, {true, 0}} {
		spool := c.spool
		maxBlobsInMemory = c.max
		target := t.TempDir()
		rr, err := Restore(ctx, paths, RestoreOptions{Read: ReadOptions{BlockSize: 4096}, Snapshot: "latest", Spool: spool,
			Open: enginetest.OpenOptions(), Restore: engine.RestoreOptions{Target: target}})
		if err != nil {
			t.Fatalf("tape restore (spool %v, %d blobs in memory): %v", spool, c.max, err)
		}
		if rr.Files != 3 {
			t.Errorf("spool %v: restored %d files, want 3", spool, rr.Files)
		}
		for i := 0; i < 3; i++ {
			p := filepath.Join(src, fmt.Sprintf("f%d", i))
			want, _ := os.ReadFile(p)
			if got, err := os.ReadFile(filepath.Join(target, p)); err != nil || !bytes.Equal(got, want) {
				t.Errorf("spool %v: %s differs after tape restore: %v", spool, p, err)
			}
		}
	}
}

// A repository's compression dictionary travels on tape: import and direct
// tape restore both decode blobs compressed with it.
func TestDictionaryTravelsOnTape(t *testing.T) {
	ctx := context.Background()
	r := enginetest.NewRepoV1(t) // only version 1 repositories have dictionaries
	src := t.TempDir()
	var db bytes.Buffer
	for i := 0; db.Len() < 2<<20; i++ {
		fmt.Fprintf(&db, "dn: cn=user%d,ou=people,o=Zoomserv\nmail: user%d@example.org\ntelephoneNumber: +1 555 %04d\n\n", i, i*7, i%10000)
	}
	os.WriteFile(filepath.Join(src, "X500.db"), db.Bytes(), 0o600)
	if _, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{src}}); err != nil {
		t.Fatal(err)
	}
	dicts, err := r.DictNames(ctx)
	if err != nil || len(dicts) != 1 {
		t.Fatalf("repository dictionaries: %v %v (want one after 2 MiB of database chunks)", dicts, err)
	}
	d := &drive{dir: t.TempDir(), blockSize: 4096, capacity: 64 << 20}
	res, err := Export(ctx, r, d, ExportOptions{Write: tape.WriteOptions{BlockSize: 4096}})
	if err != nil {
		t.Fatal(err)
	}
	onTape := false
	for _, c := range res.Catalogs {
		for _, m := range c.Members {
			onTape = onTape || m.Name == dicts[0]
		}
	}
	if !onTape {
		t.Fatalf("%s is not on the tape", dicts[0])
	}
	paths := []string{d.path(1)}
	dir := filepath.Join(t.TempDir(), "imported")
	if imp, err := Import(ctx, enginetest.Local(dir), paths, ImportOptions{Read: ReadOptions{BlockSize: 4096}, Open: enginetest.OpenOptions()}); err != nil {
		t.Fatalf("import: %v (%+v)", err, imp)
	}
	imported, err := repo.Open(ctx, enginetest.Local(dir), enginetest.OpenOptions())
	if err != nil {
		t.Fatal(err)
	}
	enginetest.CheckAndClose(t, imported)
	target := t.TempDir()
	if _, err := Restore(ctx, paths, RestoreOptions{Read: ReadOptions{BlockSize: 4096}, Snapshot: "latest",
		Open: enginetest.OpenOptions(), Restore: engine.RestoreOptions{Target: target}}); err != nil {
		t.Fatalf("tape restore: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(target, src, "X500.db")); !bytes.Equal(got, db.Bytes()) {
		t.Error("X500.db differs after tape restore")
	}
}

// A version 1 repository lost its dictionary and a later backup stored the
// database's chunks again: the tape restore of that backup reads them
// through the other copies (export lists their packs; the spool has no
// index files to find them in, its index keeps them).
func TestTapeRestoreAfterLostDictionary(t *testing.T) {
	ctx := context.Background()
	var db bytes.Buffer
	for i := 0; db.Len() < 2<<20; i++ {
		fmt.Fprintf(&db, "dn: cn=user%d,ou=people,o=Zoomserv\nmail: user%d@example.org\ntelephoneNumber: +1 555 %04d\n\n", i, i*7, i%10000)
	}
	// The spool's index takes the copy in the pack whose name sorts
	// first; the test needs the one that does not decode to be there.
	// Pack names depend on the temporary paths in the trees, so a few
	// repositories are made until one has that order (each has it with
	// even odds).
	var r *repo.Repository
	var src string
	for try := 0; r == nil; try++ {
		if try == 16 {
			t.Fatal("test set-up: in 16 repositories, no copy that does not decode was in the pack that sorts first")
		}
		r, src = lostDictionaryRepo(t, db.Bytes())
	}
	defer r.Close()
	d := &drive{dir: t.TempDir(), blockSize: 4096, capacity: 64 << 20}
	if _, err := Export(ctx, r, d, ExportOptions{Write: tape.WriteOptions{BlockSize: 4096}}); err != nil {
		t.Fatal(err)
	}
	defer func(n int) { maxBlobsInMemory = n }(maxBlobsInMemory)
	for _, c := range []struct {
		spool bool
		max   int
	}{{false, 1 << 20}, {true, 1 << 20}, {false, 0}} {
		maxBlobsInMemory = c.max
		target := t.TempDir()
		rr, err := Restore(ctx, []string{d.path(1)}, RestoreOptions{Read: ReadOptions{BlockSize: 4096}, Snapshot: "latest", Spool: c.spool,
			Open: enginetest.OpenOptions(), Restore: engine.RestoreOptions{Target: target}})
		if err != nil {
			var probs []repo.Problem
			if rr != nil && rr.RestoreResult != nil {
				probs = rr.Problems
			}
			t.Fatalf("tape restore (spool %v, %d blobs in memory): %v %+v", c.spool, c.max, err, probs)
		}
		if got, _ := os.ReadFile(filepath.Join(target, src, "X500.db")); !bytes.Equal(got, db.Bytes()) {
			t.Errorf("spool %v, %d blobs in memory: X500.db differs after tape restore", c.spool, c.max)
		}
	}
}

// lostDictionaryRepo backs up db as X500.db in a version 1 repository,
// deletes its dictionary and backs up again (storing the chunks again). It
// returns the open repository and the backed-up directory, or nil when no
// copy that does not decode is in a pack whose name sorts before another
// copy's pack.
func lostDictionaryRepo(t *testing.T, db []byte) (*repo.Repository, string) {
	t.Helper()
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "repo")
	r, err := repo.Init(ctx, enginetest.Local(dir), enginetest.InitOptionsV1(), enginetest.OpenOptions())
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "X500.db"), db, 0o600)
	if _, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{src}}); err != nil {
		t.Fatal(err)
	}
	dicts, err := r.DictNames(ctx)
	if err != nil || len(dicts) != 1 {
		t.Fatalf("repository dictionaries: %v %v (want one after 2 MiB of database chunks)", dicts, err)
	}
	r.Close()
	if err := os.Remove(filepath.Join(dir, dicts[0])); err != nil {
		t.Fatal(err)
	}
	if r, err = repo.Open(ctx, enginetest.Local(dir), enginetest.OpenOptions()); err != nil {
		t.Fatal(err)
	}
	sn, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{src}})
	if err != nil {
		t.Fatal(err)
	}
	if sn.Summary.BlobsAdded == 0 {
		t.Fatal("the backup after the loss stored nothing again")
	}
	indexed := map[blob.ID]blob.ID{} // the copies the index names, which do not decode
	err = r.EachBlob(func(id blob.ID, loc repo.Location) error { indexed[id] = loc.Pack; return nil })
	for id, pk := range indexed {
		others, oerr := r.OtherCopies(ctx, id)
		if err = errors.Join(err, oerr); err != nil {
			t.Fatal(err)
		}
		for _, p := range others {
			if repo.PackName(pk) < repo.PackName(p) {
				return r, src
			}
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	return nil, ""
}
