package engine_test

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/tree"
)

// fileSaverRun runs a file saver (and blob saver) of r over paths, with parent
// nodes by path and a parent cutoff, and returns the nodes and the parts.
func fileSaverRun(t *testing.T, r *repo.Repository, cutoff int64, parents map[string]*tree.Node, paths ...string) ([]tree.Node, *engine.Parts) {
	t.Helper()
	p := engine.NewParts(ctx, r, engine.BackupOptions{Polynomial: enginetest.Polynomial})
	p.SetParentCutoff(cutoff)
	p.RunFileWorkers(2)
	p.RunBlobSavers(2)
	var futs []*engine.Future
	for _, path := range paths {
		f, err := p.SubmitFile(ctx, path, parents[path])
		if err != nil {
			t.Fatal(err)
		}
		futs = append(futs, f)
	}
	var nodes []tree.Node
	for _, f := range futs {
		n, err := f.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	return nodes, p
}

// fileSaverContent reads a file's node back from the repository.
func fileSaverContent(t *testing.T, r *repo.Repository, n tree.Node) []byte {
	t.Helper()
	var out []byte
	for _, e := range n.Content {
		if e.Hole {
			out = append(out, make([]byte, e.Length)...)
			continue
		}
		data, err := r.LoadBlob(ctx, e.ID, nil)
		if err != nil {
			t.Fatalf("load chunk of %s: %v", n.Name, err)
		}
		out = append(out, data...)
	}
	return out
}

// fileSaverRandomFile writes size random bytes (from seed) to path and returns them.
func fileSaverRandomFile(t *testing.T, path string, size int, seed int64) []byte {
	t.Helper()
	data := make([]byte, size)
	rand.New(rand.NewSource(seed)).Read(data)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

// A new file is read whole and chunked; its chunks are stored and its
// node's content gives the file back. A second run with the first node as
// parent reuses it unread while the file is older than the parent's
// cutoff, and reads it again when it is not.
func TestFileSaverReadsAndReusesFromTheParent(t *testing.T) {
	r := enginetest.NewRepo(t)
	path := filepath.Join(t.TempDir(), "data.bin")
	data := fileSaverRandomFile(t, path, 3<<20, 1)

	nodes, p := fileSaverRun(t, r, 0, nil, path)
	n := nodes[0]
	if n.Size != uint64(len(data)) || n.Flags != 0 || len(n.Content) < 2 {
		t.Fatalf("node %s: size %d, flags %v, %d extents; want %d bytes in several chunks", n.Name, n.Size, n.Flags, len(n.Content), len(data))
	}
	if !bytes.Equal(fileSaverContent(t, r, n), data) {
		t.Fatal("the stored chunks do not give the file back")
	}
	if s := p.Summary(); s.FilesNew != 1 || s.BytesRead != int64(len(data)) || s.TotalBytes != int64(len(data)) || s.BlobsAdded != int64(len(n.Content)) {
		t.Errorf("summary %+v; want 1 new file of %d bytes read, %d blobs", s, len(data), len(n.Content))
	}

	later := time.Now().Add(time.Hour).UnixNano()
	nodes, p = fileSaverRun(t, r, later, map[string]*tree.Node{path: &n}, path)
	if s := p.Summary(); s.FilesUnchanged != 1 || s.BytesRead != 0 || s.BlobsAdded != 0 {
		t.Errorf("unchanged file: summary %+v; want it reused unread", s)
	}
	if len(nodes[0].Content) != len(n.Content) || nodes[0].Content[0] != n.Content[0] {
		t.Errorf("unchanged file's content differs from its parent's")
	}
	if got := p.Progress(); got.Files != 1 || got.Bytes != int64(len(data)) {
		t.Errorf("progress %+v; want the reused file counted as done", got)
	}

	_, p = fileSaverRun(t, r, n.MTime, map[string]*tree.Node{path: &n}, path)
	if s := p.Summary(); s.FilesChanged != 1 || s.BytesRead != int64(len(data)) || s.BlobsAdded != 0 {
		t.Errorf("file as new as the parent: summary %+v; want it read again (and deduplicated)", s)
	}
}

// A changed file whose parent's chunks the repository does not hold (a
// damaged or repaired repository; here another repository's snapshot) is
// still guided by them, and every chunk is stored: the guide's batched
// lookup must not take "the parent had it" for "it is stored".
func TestGuidedChunkingStoresWhatTheRepositoryLacks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.bin")
	data := fileSaverRandomFile(t, path, 3<<20, 4)
	nodes, _ := fileSaverRun(t, enginetest.NewRepo(t), 0, nil, path)
	n := nodes[0]

	other := enginetest.NewRepo(t)
	nodes, p := fileSaverRun(t, other, n.MTime, map[string]*tree.Node{path: &n}, path)
	if s := p.Summary(); s.FilesChanged != 1 || s.BlobsAdded != int64(len(n.Content)) {
		t.Errorf("summary %+v; want the changed file's %d chunks all stored", s, len(n.Content))
	}
	if !bytes.Equal(fileSaverContent(t, other, nodes[0]), data) {
		t.Error("the chunks stored do not give the file back")
	}
}

// Two names of a hard-linked file are read once and share the content.
func TestFileSaverReadsAHardLinkOnce(t *testing.T) {
	r := enginetest.NewRepo(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	data := fileSaverRandomFile(t, a, 100<<10, 2)
	if err := os.Link(a, b); err != nil {
		t.Fatal(err)
	}
	nodes, p := fileSaverRun(t, r, 0, nil, a, b)
	if s := p.Summary(); s.BytesRead != int64(len(data)) {
		t.Errorf("read %d bytes of a %d-byte file with two names; want it read once", s.BytesRead, len(data))
	}
	if nodes[1].Size != nodes[0].Size || len(nodes[1].Content) != len(nodes[0].Content) || !bytes.Equal(fileSaverContent(t, r, nodes[1]), data) {
		t.Errorf("second name %+v does not share the first's content", nodes[1])
	}
}

// A file that is gone by the time it is read is a problem of the snapshot,
// not an error: its node is marked unreadable.
func TestFileSaverRecordsAnUnreadableFile(t *testing.T) {
	r := enginetest.NewRepo(t)
	path := filepath.Join(t.TempDir(), "gone")
	fileSaverRandomFile(t, path, 10, 3)
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	p := engine.NewParts(ctx, r, engine.BackupOptions{})
	p.RunFileWorkers(1)
	p.RunBlobSavers(1)
	f := p.SubmitNode(ctx, path, tree.Node{Name: "gone", Kind: tree.File, Size: uint64(fi.Size())})
	n, err := f.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("a vanished file failed the saver: %v", err)
	}
	if n.Flags != tree.Unreadable || n.Size != 0 || n.Error == "" {
		t.Errorf("node %+v; want unreadable, empty, with the error", n)
	}
	if ps := p.Problems(); len(ps) != 1 || ps[0].Path != path || ps[0].Kind != repo.ProblemUnreadable {
		t.Errorf("problems %+v; want %s unreadable", ps, path)
	}
}

// A file found in its directory's listing that the quiesce selection takes
// but that was not held still (it appeared once the service was stopped: a
// restarted PostgreSQL's pg_internal.init.PID) and is removed before it is
// opened is left out of the snapshot with a warning, and the snapshot is
// complete. Without quiescing, or outside the selection, such a file is
// unreadable (it may have been renamed into a directory already walked).
func TestFileSaverLeavesOutAFileOfTheResumedService(t *testing.T) {
	for _, held := range []bool{true, false} {
		r := enginetest.NewRepo(t)
		dir := t.TempDir()
		gone, kept := filepath.Join(dir, "pg_internal.init.15507"), filepath.Join(dir, "kept")
		fileSaverRandomFile(t, gone, 10, 5)
		fileSaverRandomFile(t, kept, 10, 6)
		fi, err := os.Lstat(gone)
		if err != nil {
			t.Fatal(err)
		}
		os.Remove(gone)
		p := engine.NewParts(ctx, r, engine.BackupOptions{HeldStill: func(p string) bool { return held && p == gone }})
		p.RunFileWorkers(1)
		p.RunBlobSavers(1)
		f := p.SubmitListed(ctx, gone, tree.Node{Name: filepath.Base(gone), Kind: tree.File, Size: uint64(fi.Size())})
		k := p.SubmitListed(ctx, kept, tree.Node{Name: "kept", Kind: tree.File, Size: 10})
		d := p.SaveTree(ctx, dir, tree.Node{Name: filepath.Base(dir), Kind: tree.Dir}, []*engine.Future{f, k})
		dn, err := d.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatalf("a removed file failed the saver: %v", err)
		}
		if err := r.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		tr, err := r.LoadTree(ctx, dn.Subtree)
		if err != nil {
			t.Fatal(err)
		}
		ps := p.Problems()
		if held {
			if !f.Gone() || len(ps) != 1 || ps[0].Path != gone || ps[0].Kind != repo.ProblemWarning {
				t.Errorf("held still: gone %v, problems %+v; want it left out with one warning", f.Gone(), ps)
			}
			if len(tr.Nodes) != 1 || tr.Nodes[0].Name != "kept" || tr.Nodes[0].Flags != 0 {
				t.Errorf("held still: tree %+v; want only kept, read", tr.Nodes)
			}
			continue
		}
		if f.Gone() || len(ps) != 1 || ps[0].Kind != repo.ProblemUnreadable || len(tr.Nodes) != 2 {
			t.Errorf("not held still: gone %v, problems %+v, %d entries; want it recorded unreadable", f.Gone(), ps, len(tr.Nodes))
		}
	}
}

// A file is split into holes and data spans, and no data span crosses a
// multiple of the chunk window (so that windows are chunked on their own).
func TestFileSpansSplitAtTheChunkWindow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sparse.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteAt([]byte("head"), 0)
	f.WriteAt(make([]byte, 1<<20), engine.ChunkWindow-512<<10) // across the first window's end
	size := int64(engine.ChunkWindow + 512<<10)
	spans := engine.FileSpans(f, size)
	var at int64
	split := false
	for _, s := range spans {
		if s.Start != at || s.End <= s.Start {
			t.Fatalf("spans %+v do not cover the file in order", spans)
		}
		if !s.Hole && s.Start/engine.ChunkWindow != (s.End-1)/engine.ChunkWindow {
			t.Errorf("data span %+v crosses a window boundary", s)
		}
		split = split || s.End == engine.ChunkWindow
		at = s.End
	}
	if at != size || !split {
		t.Errorf("spans %+v: want them to end at %d with a cut at %d", spans, size, engine.ChunkWindow)
	}
}

// A changed file is chunked with its chunks in the parent snapshot as a
// guide (unchanged stretches are hashed, not run through the chunker): the
// chunks must be exactly those the chunker alone makes, after pages
// rewritten in place, pages appended, and bytes inserted (a shift that the
// chunker must resynchronise after).
func TestGuidedChunkingMakesTheChunkersChunks(t *testing.T) {
	dir := t.TempDir()
	db, log := filepath.Join(dir, "X500.db"), filepath.Join(dir, "tx.log")
	rng := rand.New(rand.NewSource(21))
	writePages(t, db, 10240, rng) // 40 MiB: two chunk windows, chunked at once
	big := make([]byte, 12<<20)
	rng.Read(big)
	if err := os.WriteFile(log, big, 0o644); err != nil {
		t.Fatal(err)
	}
	sparse := filepath.Join(dir, "sparse.db") // data, a hole, data
	writePages(t, sparse, 2048, rng)
	sf, _ := os.OpenFile(sparse, os.O_RDWR, 0)
	sf.WriteAt(bytes.Repeat(page(rng), 256), 30<<20)
	sf.Close()
	r := enginetest.NewRepo(t)
	backup(t, r, day1, dir)

	sf, _ = os.OpenFile(sparse, os.O_RDWR, 0)
	sf.WriteAt(page(rng), 100*4096)
	sf.WriteAt(page(rng), 30<<20+4096)
	sf.Close()
	f, err := os.OpenFile(db, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, pg := range []int64{0, 3, 700, 701, 702, 4000, 8191, 8192, 10239} {
		f.WriteAt(page(rng), pg*4096)
	}
	f.WriteAt(page(rng), 10240*4096) // appended
	f.Close()
	shifted := append(append(append([]byte(nil), big[:5<<20]...), "inserted"...), big[5<<20:]...)
	if err := os.WriteFile(log, shifted, 0o644); err != nil {
		t.Fatal(err)
	}
	guided := backup(t, r, day1.Add(24*time.Hour), dir)
	if guided.Summary.FilesChanged != 3 {
		t.Fatalf("%d files changed, want 3", guided.Summary.FilesChanged)
	}
	fresh := enginetest.NewRepo(t) // same id key and polynomial: same chunk ids
	plain := backup(t, fresh, day1.Add(24*time.Hour), dir)
	for _, p := range []string{db, log, sparse} {
		g, c := lookup(t, r, guided, p).Content, lookup(t, fresh, plain, p).Content
		if len(g) != len(c) {
			t.Fatalf("%s: %d chunks with the guide, %d by the chunker alone", p, len(g), len(c))
		}
		for i := range g {
			if g[i] != c[i] {
				t.Fatalf("%s: chunk %d is %s (%d bytes) with the guide, %s (%d bytes) by the chunker alone", p, i, g[i].ID.Short(), g[i].Length, c[i].ID.Short(), c[i].Length)
			}
		}
	}
	target := t.TempDir()
	restore(t, r, guided, engine.RestoreOptions{Target: target})
	compareTrees(t, dir, filepath.Join(target, dir))
}
