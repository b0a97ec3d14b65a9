package tapeio

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/tape"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/tree"
)

// The catalog names, for every snapshot, exactly the packs that hold its
// trees, extent lists and chunks, although the export looks up what
// snapshots share only once: compared with a walk that looks up every blob
// of every snapshot.
func TestSnapshotNeedsEveryPackOfItsBlobs(t *testing.T) {
	ctx := context.Background()
	o := enginetest.InitOptions()
	o.PackSize = 1 << 16 // many packs, so that snapshots need different ones
	dir := t.TempDir()
	r, err := repo.Init(ctx, enginetest.Local(filepath.Join(dir, "repo")), o, enginetest.OpenOptionsIn(filepath.Join(dir, "cache")))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	src := t.TempDir()
	rng := rand.New(rand.NewSource(4))
	db := make([]byte, 3<<20) // X500.db: extent lists
	rng.Read(db)
	for day := 0; day < 3; day++ {
		copy(db[day*700<<10:], bytes.Repeat([]byte{byte(day + 1)}, 64<<10))
		os.WriteFile(filepath.Join(src, "X500.db"), db, 0o600)
		os.MkdirAll(filepath.Join(src, "same"), 0o700)
		os.WriteFile(filepath.Join(src, "same", "f"), []byte("unchanged"), 0o600)
		b := make([]byte, 80<<10)
		rng.Read(b)
		os.MkdirAll(filepath.Join(src, fmt.Sprintf("day%d", day)), 0o700)
		os.WriteFile(filepath.Join(src, fmt.Sprintf("day%d", day), "new"), b, 0o600)
		if _, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{src}}); err != nil {
			t.Fatal(err)
		}
	}
	d := &drive{dir: t.TempDir(), blockSize: 4096, capacity: 64 << 20}
	res, err := Export(ctx, r, d, ExportOptions{Write: tape.WriteOptions{BlockSize: 4096}})
	if err != nil {
		t.Fatal(err)
	}
	notes := map[string][]string{}
	for _, c := range res.Catalogs {
		for _, n := range c.Notes {
			notes[n.Name] = n.Needs
		}
	}
	sns, _, err := r.Snapshots(ctx)
	if err != nil || len(sns) != 3 {
		t.Fatalf("%d snapshots (%v)", len(sns), err)
	}
	differ := false
	for _, sn := range sns {
		want := everyPack(t, r, sn)
		got := notes[repo.SnapshotName(sn.ID)]
		if !slices.Equal(got, want) {
			t.Errorf("snapshot %s needs %v in the catalog, its blobs are in %v", sn.ID.Short(), got, want)
		}
		differ = differ || !slices.Equal(want, everyPack(t, r, sns[0]))
	}
	if !differ {
		t.Fatal("every snapshot needs the same packs: the test means them to differ")
	}
}

// everyPack looks up every blob of sn, one by one.
func everyPack(t *testing.T, r *repo.Repository, sn *repo.Snapshot) []string {
	ctx := context.Background()
	set := map[string]bool{}
	add := func(id [32]byte) {
		loc, ok, err := r.LookupBlob(ctx, id)
		if err != nil || !ok {
			t.Fatalf("blob %x: %v %v", id[:4], ok, err)
		}
		set[repo.PackName(loc.Pack)] = true
	}
	add(sn.Tree)
	err := engine.Walk(ctx, r, sn, "", func(_ string, n *tree.Node) error {
		if n.Kind == tree.Dir {
			add(n.Subtree)
		}
		for _, id := range n.Lists {
			add(id)
		}
		for _, e := range n.Content {
			if !e.Hole {
				add(e.ID)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for p := range set {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// An extent list that cannot be read leaves its file's chunks out of the
// catalog's needs: the export says so instead of planning from it quietly.
func TestExportNamesAnUnreadableExtentList(t *testing.T) {
	ctx := context.Background()
	r := enginetest.NewRepo(t)
	src := t.TempDir()
	db := make([]byte, 2<<20) // X500.db: ≈130 chunks, in extent lists
	rand.New(rand.NewSource(8)).Read(db)
	os.WriteFile(filepath.Join(src, "X500.db"), db, 0o600)
	sn, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{src}})
	if err != nil {
		t.Fatal(err)
	}
	d0 := &drive{dir: t.TempDir(), blockSize: 4096, capacity: 64 << 20}
	if res, err := Export(ctx, r, d0, ExportOptions{Write: tape.WriteOptions{BlockSize: 4096}}); err != nil || len(res.Problems) != 0 {
		t.Fatalf("a whole repository exports with problems: %v, %v", res, err)
	}
	var node tree.Node
	engine.Walk(ctx, r, sn, filepath.Join(src, "X500.db"), func(_ string, n *tree.Node) error { node = *n; return nil })
	if len(node.Lists) < 2 {
		t.Fatalf("X500.db has %d extent lists; the test needs several", len(node.Lists))
	}
	list := node.Lists[len(node.Lists)/2]
	loc, _, _ := r.Index().Lookup(list)
	packFile := filepath.Join(r.Location(), repo.PackName(loc.Pack))
	good, _ := os.ReadFile(packFile)
	bad := append([]byte(nil), good...)
	bad[loc.Offset+uint64(loc.Length)/2] ^= 1
	os.Chmod(packFile, 0o600)
	os.WriteFile(packFile, bad, 0o600)
	// Whole again for the cleanup check.
	defer os.WriteFile(packFile, good, 0o600)
	r2, err := repo.Open(ctx, enginetest.Local(r.Location()), enginetest.OpenOptionsIn(t.TempDir())) // no decoded frame cached
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	d := &drive{dir: t.TempDir(), blockSize: 4096, capacity: 64 << 20}
	res, err := Export(ctx, r2, d, ExportOptions{Write: tape.WriteOptions{BlockSize: 4096}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Problems) != 1 || !strings.Contains(res.Problems[0], list.Short()) {
		t.Errorf("export with a damaged extent list %s: problems %v", list.Short(), res.Problems)
	}
}
