package engine_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/restic/chunker"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/backendtest"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/crypto"
	"github.com/stasisbackup/stasis/repo/tree"
)

// otherPolynomial is a second irreducible chunker polynomial, so that the
// destination of a copy chunks differently from the source.
const otherPolynomial = chunker.Pol(0x2F0F2F4A2D6F93)

// newOtherRepo creates a destination repository with another password,
// id key and chunker polynomial than enginetest's, on st; it is checked
// with ReadData when the test ends.
func newOtherRepo(t *testing.T, st repo.Storage) *repo.Repository {
	t.Helper()
	if !otherPolynomial.Irreducible() {
		t.Fatalf("test polynomial %v is not irreducible", otherPolynomial)
	}
	o := repo.InitOptions{Polynomial: otherPolynomial, IDKey: []byte("another-id-key-for-copy-tests-32"),
		Password: []byte("a different password"), KDF: crypto.TestKDFParams}
	r, err := repo.Init(ctx, st, o, repo.OpenOptions{CacheDir: filepath.Join(t.TempDir(), "cache")})
	if err != nil {
		t.Fatalf("init destination: %v", err)
	}
	t.Cleanup(func() { enginetest.CheckAndClose(t, r) })
	return r
}

// rewritePage overwrites 100 bytes of X500.db at off (a day's change of a
// database updated in place).
func rewritePage(t *testing.T, dir string, off int64, day byte) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, "X500.db"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	page := make([]byte, 100)
	for i := range page {
		page[i] = day
	}
	if _, err := f.WriteAt(page, off); err != nil {
		t.Fatal(err)
	}
	f.Close()
	old := time.Unix(1800000000+int64(day), 0)
	os.Chtimes(filepath.Join(dir, "X500.db"), old, old)
}

// sameCopy fails the test unless the copy of sn in dst restores exactly as
// sn does from src and keeps its metadata.
func sameCopy(t *testing.T, src, dst *repo.Repository, sn, cp *repo.Snapshot) {
	t.Helper()
	if cp.Original == nil || *cp.Original != sn.ID {
		t.Errorf("copy %s of %s: original %v", cp.ID.Short(), sn.ID.Short(), cp.Original)
	}
	if cp.ID == sn.ID || cp.Tree == sn.Tree {
		t.Errorf("copy %s has the source's snapshot or tree id: ids are keyed per repository", cp.ID.Short())
	}
	if !cp.Time.Equal(sn.Time) || cp.Host != sn.Host || !reflect.DeepEqual(cp.Tags, sn.Tags) || !reflect.DeepEqual(cp.Paths, sn.Paths) ||
		!reflect.DeepEqual(cp.Summary, sn.Summary) || string(cp.Quiesce) != string(sn.Quiesce) || cp.Username != sn.Username {
		t.Errorf("copy %s lost metadata:\n source %+v\n copy   %+v", cp.ID.Short(), sn, cp)
	}
	a, b := t.TempDir(), t.TempDir()
	restore(t, src, sn, engine.RestoreOptions{Target: a})
	restore(t, dst, cp, engine.RestoreOptions{Target: b})
	compareTrees(t, a, b)
}

func copyAll(t *testing.T, src, dst *repo.Repository) *engine.CopyResult {
	t.Helper()
	list, _, err := src.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var counts engine.Counts
	var phases []engine.CountsValue // at the end of each copied snapshot
	res, err := engine.Copy(ctx, src, dst, list, engine.CopyOptions{Progress: &counts, OnSnapshot: func(cs engine.CopiedSnapshot) {
		if !cs.Skipped {
			phases = append(phases, counts.Load())
		}
	}})
	if err != nil {
		t.Fatalf("copy: %v", err)
	}
	if len(res.Snapshots) != len(list) {
		t.Fatalf("copy dealt with %d snapshots of %d", len(res.Snapshots), len(list))
	}
	// Progress: one phase per copied snapshot, ending at its totals.
	k := 0
	for i, cs := range res.Snapshots {
		if cs.Skipped {
			continue
		}
		s := cs.Source.Summary
		files := s.FilesNew + s.FilesChanged + s.FilesUnchanged
		want := engine.CountsValue{Files: files, Bytes: s.TotalBytes, TotalFiles: files, TotalBytes: s.TotalBytes,
			Phase: fmt.Sprintf("snapshot %d/%d", i+1, len(list))}
		if phases[k] != want {
			t.Errorf("progress after copying %s: %+v, want %+v", cs.Source.ID.Short(), phases[k], want)
		}
		k++
	}
	return res
}

// TestCopy copies two days into a repository with another password, key
// and chunker polynomial; every copy restores as its source does; a second
// copy copies nothing; after a third day only the new snapshot is copied,
// with few blobs read and stored.
func TestCopy(t *testing.T) {
	data := filepath.Join(t.TempDir(), "src")
	makeTree(t, data, 7)
	src := enginetest.NewRepo(t)
	dst := newOtherRepo(t, backend.NewLocal(filepath.Join(t.TempDir(), "dst")))

	sn1 := backup(t, src, day1, data)
	rewritePage(t, data, 300<<10, 2)
	sn2 := backup(t, src, day1.Add(24*time.Hour), data)

	res := copyAll(t, src, dst)
	for _, cs := range res.Snapshots {
		t.Logf("copied %s as %s: %d blobs read, %d added, %d bytes stored", cs.Source.ID.Short(), cs.Copy.ID.Short(), cs.BlobsRead, cs.BlobsAdded, cs.StoredAdded)
	}
	for i, want := range []*repo.Snapshot{sn1, sn2} {
		cs := res.Snapshots[i]
		if cs.Skipped || cs.Source.ID != want.ID {
			t.Fatalf("snapshot %d: %+v, want %s copied", i, cs, want.ID.Short())
		}
		sameCopy(t, src, dst, want, cs.Copy)
	}
	if first := res.Snapshots[0]; first.BlobsAdded == 0 || first.StoredAdded == 0 {
		t.Errorf("first copy added %d blobs, %d bytes", first.BlobsAdded, first.StoredAdded)
	}
	if p := res.Snapshots[1].Copy.Parent; p == nil || *p != res.Snapshots[0].Copy.ID {
		t.Errorf("copy of day 2 has parent %v, want the copy of day 1 %s", p, res.Snapshots[0].Copy.ID.Short())
	}
	// Day 2 changed one page: few new blobs, and (the day-1 copy gives
	// the mapping of unchanged chunks) few reads.
	if second := res.Snapshots[1]; second.BlobsAdded > 12 || second.BlobsRead > 6 {
		t.Errorf("day 2: %d blobs added, %d read; want a handful", second.BlobsAdded, second.BlobsRead)
	}

	again := copyAll(t, src, dst)
	for i, cs := range again.Snapshots {
		if !cs.Skipped || cs.Copy.ID != res.Snapshots[i].Copy.ID || cs.BlobsAdded != 0 {
			t.Errorf("second copy of %s: %+v, want skipped as %s", cs.Source.ID.Short(), cs, res.Snapshots[i].Copy.ID.Short())
		}
	}

	rewritePage(t, data, 700<<10, 3)
	sn3 := backup(t, src, day1.Add(48*time.Hour), data)
	third := copyAll(t, src, dst)
	if third.Snapshots[0].Skipped != true || third.Snapshots[1].Skipped != true || third.Snapshots[2].Skipped {
		t.Fatalf("third copy: %+v", third.Snapshots)
	}
	cs := third.Snapshots[2]
	if cs.BlobsAdded == 0 || cs.BlobsAdded > 12 || cs.BlobsRead > 6 {
		t.Errorf("day 3: %d blobs added, %d read; want a handful", cs.BlobsAdded, cs.BlobsRead)
	}
	sameCopy(t, src, dst, sn3, cs.Copy)
	list, _, err := dst.Snapshots(ctx)
	if err != nil || len(list) != 3 {
		t.Fatalf("destination has %d snapshots (%v), want 3", len(list), err)
	}
}

// TestCopyChain copies a copy on: the third repository records the first
// one's snapshot as original, so copying from the first skips it.
func TestCopyChain(t *testing.T) {
	data := filepath.Join(t.TempDir(), "src")
	makeTree(t, data, 8)
	a := enginetest.NewRepo(t)
	sn := backup(t, a, day1, data)
	b := newOtherRepo(t, backend.NewLocal(filepath.Join(t.TempDir(), "b")))
	c := newOtherRepo(t, backend.NewLocal(filepath.Join(t.TempDir(), "c")))
	copyAll(t, a, b)
	res := copyAll(t, b, c)
	if cp := res.Snapshots[0].Copy; cp.Original == nil || *cp.Original != sn.ID {
		t.Fatalf("copy of a copy: original %v, want %s", cp.Original, sn.ID.Short())
	}
	if again := copyAll(t, a, c); !again.Snapshots[0].Skipped {
		t.Errorf("copy from the first repository into the third copied again: %+v", again.Snapshots[0])
	}
	sameCopy(t, a, c, sn, res.Snapshots[0].Copy)
}

func otherPassword(context.Context) ([]byte, error) { return []byte("a different password"), nil }

// TestCopyResumes stops a copy when the destination storage fails: the
// destination has no new snapshot and checks clean (Cleanup), and the next
// copy finishes. Stopped after its blobs were flushed (the snapshot file
// failed), the next copy stores no blob again.
func TestCopyResumes(t *testing.T) {
	data := filepath.Join(t.TempDir(), "src")
	makeTree(t, data, 9)
	src := enginetest.NewRepo(t)
	sn := backup(t, src, day1, data)
	for _, c := range []struct {
		name  string
		fault backendtest.Fault
		again bool // the blobs are durable: the next copy adds none
	}{
		{"snapshot file fails", backendtest.Fault{Op: backendtest.OpPut, Name: "snapshots/*", Err: errors.New("disk pulled")}, true},
		{"third pack fails", backendtest.Fault{Op: backendtest.OpPut, Name: "packs/*/*", Skip: 2, Err: errors.New("disk pulled")}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "dst")
			faulty := backendtest.NewFaulty(backend.NewLocal(dir))
			o := repo.InitOptions{Polynomial: otherPolynomial, IDKey: []byte("another-id-key-for-copy-tests-32"),
				Password: []byte("a different password"), KDF: crypto.TestKDFParams, PackSize: 256 << 10}
			cache := filepath.Join(t.TempDir(), "cache")
			r, err := repo.Init(ctx, faulty, o, repo.OpenOptions{CacheDir: cache})
			if err != nil {
				t.Fatal(err)
			}
			faulty.Inject(c.fault)
			_, err = engine.Copy(ctx, src, r, []*repo.Snapshot{sn}, engine.CopyOptions{})
			if err == nil || faulty.Hits() == 0 || !strings.Contains(err.Error(), "disk pulled") {
				t.Fatalf("copy with a failing destination: %v (fault hit %d times)", err, faulty.Hits())
			}
			r.Close()

			r2, err := repo.Open(ctx, backend.NewLocal(dir), repo.OpenOptions{CacheDir: cache, Password: otherPassword})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { enginetest.CheckAndClose(t, r2) })
			if list, _, _ := r2.Snapshots(ctx); len(list) != 0 {
				t.Fatalf("a failed copy left %d snapshots", len(list))
			}
			res := copyAll(t, src, r2).Snapshots[0]
			if res.Skipped || (c.again && res.BlobsAdded != 0) || (!c.again && res.BlobsAdded == 0) {
				t.Errorf("resumed copy: skipped %v, %d blobs added", res.Skipped, res.BlobsAdded)
			}
			sameCopy(t, src, r2, sn, res.Copy)
		})
	}
}

// A copy from an unencrypted repository, with an id cache of one entry
// (every blob falls out of it at once), gives snapshots that restore as
// their sources.
func TestCopyPlainSourceTinyCache(t *testing.T) {
	data := filepath.Join(t.TempDir(), "src")
	makeTree(t, data, 10)
	dir := t.TempDir()
	src, err := repo.Init(ctx, backend.NewLocal(filepath.Join(dir, "plain")), repo.InitOptions{Polynomial: enginetest.Polynomial, InsecureNoPassword: true},
		repo.OpenOptions{CacheDir: filepath.Join(dir, "cache")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { enginetest.CheckAndClose(t, src) })
	sn1 := backup(t, src, day1, data)
	rewritePage(t, data, 100<<10, 4)
	sn2 := backup(t, src, day1.Add(time.Hour), data)
	dst := newOtherRepo(t, backend.NewLocal(filepath.Join(dir, "dst")))
	res, err := engine.Copy(ctx, src, dst, []*repo.Snapshot{sn2, sn1}, engine.CopyOptions{MapEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Snapshots) != 2 || res.Snapshots[0].Source.ID != sn1.ID {
		t.Fatalf("copied %+v, want both, oldest first", res.Snapshots)
	}
	for i, sn := range []*repo.Snapshot{sn1, sn2} {
		sameCopy(t, src, dst, sn, res.Snapshots[i].Copy)
	}
}

// A damaged chunk in the source stops the copy with an error naming the
// snapshot and the file; the destination gets no snapshot and checks clean.
func TestCopyDamagedSource(t *testing.T) {
	data := filepath.Join(t.TempDir(), "src")
	makeTree(t, data, 11)
	dir := t.TempDir()
	src, err := repo.Init(ctx, backend.NewLocal(filepath.Join(dir, "src")), enginetest.InitOptions(), enginetest.OpenOptionsIn(filepath.Join(dir, "cache")))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	sn := backup(t, src, day1, data)
	var leaf tree.Node
	p := filepath.Join(data, "sub", "deeper", "leaf")
	if err := engine.Walk(ctx, src, sn, p, func(_ string, n *tree.Node) error { leaf = *n; return nil }); err != nil || len(leaf.Content) == 0 {
		t.Fatalf("walk to %s: %v", p, err)
	}
	loc, ok, err := src.Index().Lookup(leaf.Content[0].ID)
	if err != nil || !ok {
		t.Fatalf("lookup: %v %v", ok, err)
	}
	packFile := filepath.Join(dir, "src", repo.PackName(loc.Pack))
	b, err := os.ReadFile(packFile)
	if err != nil {
		t.Fatal(err)
	}
	b[loc.Offset+uint64(loc.Length)/2] ^= 0x40
	os.Chmod(packFile, 0o644)
	if err := os.WriteFile(packFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// The damaged frame may hold chunks of other small files too: the copy
	// names the first of them it meets.
	var hit []string
	engine.Walk(ctx, src, sn, data, func(path string, n *tree.Node) error {
		for _, e := range n.Content {
			if l, ok, _ := src.Index().Lookup(e.ID); ok && l.Pack == loc.Pack && l.Offset == loc.Offset {
				hit = append(hit, path)
				break
			}
		}
		return nil
	})
	dst := newOtherRepo(t, backend.NewLocal(filepath.Join(dir, "dst")))
	_, err = engine.Copy(ctx, src, dst, []*repo.Snapshot{sn}, engine.CopyOptions{})
	named := false
	for _, h := range hit {
		named = named || (err != nil && strings.Contains(err.Error(), h+":"))
	}
	if err == nil || !errors.Is(err, repo.ErrCorruptBlob) || !named || !strings.Contains(err.Error(), sn.ID.Short()) {
		t.Fatalf("copy of a damaged source: %v; want ErrCorruptBlob naming one of %q (%s among them) and snapshot %s", err, hit, p, sn.ID.Short())
	}
	t.Logf("copy of a damaged source: %v", err)
	if list, _, _ := dst.Snapshots(ctx); len(list) != 0 {
		t.Errorf("the destination got %d snapshots", len(list))
	}
}

// A directory's hint leads to the same subdirectory in both hint trees,
// and to nothing when either lacks it or holds something else by that
// name.
func TestCopySubHint(t *testing.T) {
	var a, b, c, d blob.ID
	a[0], b[0], c[0], d[0] = 1, 2, 3, 4
	hs := &tree.Tree{Nodes: []tree.Node{{Name: "both", Kind: tree.Dir, Subtree: a}, {Name: "file", Kind: tree.File}, {Name: "only-src", Kind: tree.Dir, Subtree: c}}}
	hd := &tree.Tree{Nodes: []tree.Node{{Name: "both", Kind: tree.Dir, Subtree: b}, {Name: "file", Kind: tree.Dir, Subtree: d}}}
	if src, dst, ok := engine.SubHint(hs, hd, "both"); !ok || src != a || dst != b {
		t.Errorf("hint of both: %v %s %s, want %s %s", ok, src.Short(), dst.Short(), a.Short(), b.Short())
	}
	for _, name := range []string{"file", "only-src", "neither"} {
		if _, _, ok := engine.SubHint(hs, hd, name); ok {
			t.Errorf("hint of %s, want none", name)
		}
	}
	if _, _, ok := engine.SubHint(nil, nil, "both"); ok {
		t.Error("hint without hint trees")
	}
}
