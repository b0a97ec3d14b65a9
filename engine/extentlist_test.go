package engine_test

import (
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/retention"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

func treeBytes(t *testing.T, r *repo.Repository) (n int64) {
	t.Helper()
	r.Index().EachBlob(func(_ blob.ID, l index.Location) error {
		if l.Type == blob.Tree {
			n += int64(l.Length)
		}
		return nil
	})
	return n
}

// A large file's extents live in extent-list blobs: a day with a few
// changed pages stores only the lists around them, prune keeps the lists of
// kept snapshots, and a lost list costs that one file.
func TestExtentListsOfALargeFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "zoomserv")
	os.MkdirAll(dir, 0o755)
	db := filepath.Join(dir, "X500.db")
	rng := rand.New(rand.NewSource(21))
	writePages(t, db, 4096, rng) // 16 MiB, ≈1000 chunks
	os.WriteFile(filepath.Join(dir, "small.conf"), []byte("port 389\n"), 0o644)
	r := enginetest.NewRepo(t)
	sn1 := backup(t, r, day1, dir)
	var n1 tree.Node
	engine.Walk(ctx, r, sn1, db, func(_ string, n *tree.Node) error { n1 = *n; return nil })
	if len(n1.Lists) < 4 || len(n1.Content) < 500 {
		t.Fatalf("X500.db: %d extents in %d lists; want lists for a 16 MiB database", len(n1.Content), len(n1.Lists))
	}
	flat := int64(len(n1.Content)) * 36 // what one extent list in the tree would take

	// Day 2: three pages rewritten.
	f, _ := os.OpenFile(db, os.O_RDWR, 0)
	for _, pg := range []int64{10, 2000, 4000} {
		f.WriteAt(page(rng), pg*4096)
	}
	f.Close()
	before := treeBytes(t, r)
	sn2 := backup(t, r, day1.Add(24*time.Hour), dir)
	grown := treeBytes(t, r) - before
	t.Logf("flat extent list %d bytes; day 2 stored %d bytes of trees and lists", flat, grown)
	if grown > flat/2 {
		t.Errorf("day 2 stored %d bytes of trees for 3 changed pages; a flat list is %d", grown, flat)
	}

	// Forget day 1, prune: day 2's lists stay (the cleanup check reads all).
	if _, err := engine.Forget(ctx, r, engine.ForgetOptions{Policy: retention.Policy{Last: 1}, Now: day1.Add(48 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := engine.Prune(ctx, r, engine.PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	restore(t, r, sn2, engine.RestoreOptions{Target: target})
	compareTrees(t, dir, filepath.Join(target, dir))

	// Damage one list blob of day 2: check and restore name X500.db only.
	var n2 tree.Node
	engine.Walk(ctx, r, sn2, db, func(_ string, n *tree.Node) error { n2 = *n; return nil })
	loc, _, _ := r.Index().Lookup(n2.Lists[len(n2.Lists)/2])
	packFile := filepath.Join(r.Location(), repo.PackName(loc.Pack))
	good, _ := os.ReadFile(packFile)
	bad := append([]byte(nil), good...)
	bad[loc.Offset+uint64(loc.Length)/2] ^= 1
	os.Chmod(packFile, 0o600)
	os.WriteFile(packFile, bad, 0o600)
	defer os.WriteFile(packFile, good, 0o600) // whole again for the cleanup check
	rep, err := engine.Check(ctx, r, engine.CheckOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(rep.Errors, "\n")
	if !strings.Contains(all, db) || !strings.Contains(all, "extent list") {
		t.Errorf("check does not name X500.db's lost extent list:\n%s", all)
	}
	res, err := engine.Restore(ctx, r, sn2, engine.RestoreOptions{Target: t.TempDir()})
	if !errors.Is(err, engine.ErrRestoreIncomplete) || len(res.Problems) != 1 || res.Problems[0].Path != db || res.Files != 1 {
		t.Errorf("restore with a lost extent list: %v %+v", err, res)
	}
}

// The extent lists of a directory's files are read together (on several
// goroutines): one damaged list costs its own file, in the middle of the
// others, and every other file's content is exactly what was stored.
func TestLoadTreeReadsTheListsOfEveryFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "zoomserv")
	os.MkdirAll(dir, 0o755)
	rng := rand.New(rand.NewSource(22))
	names := []string{"A.db", "B.db", "C.db"}
	for _, name := range names {
		writePages(t, filepath.Join(dir, name), 2048, rng) // 8 MiB, ≈25 lists each
	}
	r := enginetest.NewRepo(t)
	sn := backup(t, r, day1, dir)
	var subtree blob.ID
	engine.Walk(ctx, r, sn, dir, func(p string, n *tree.Node) error {
		if p == dir {
			subtree = n.Subtree
		}
		return nil
	})
	whole, err := r.LoadTree(ctx, subtree)
	if err != nil {
		t.Fatal(err)
	}
	// The reference, before the damage: each list decoded on its own.
	stored, err := r.LoadTreeLists(ctx, subtree)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range whole.Nodes {
		var flat []tree.Extent
		for _, e := range stored.Nodes[i].Content {
			if !e.List {
				flat = append(flat, e)
				continue
			}
			data, err := r.LoadBlob(ctx, e.ID, nil)
			if err != nil {
				t.Fatal(err)
			}
			ext, _, err := tree.DecodeList(data)
			if err != nil {
				t.Fatal(err)
			}
			flat = append(flat, ext...)
		}
		if !slices.Equal(want.Content, flat) {
			t.Errorf("%s: LoadTree gives %d extents, its lists hold %d", want.Name, len(want.Content), len(flat))
		}
	}
	b := whole.Nodes[1]
	if b.Name != "B.db" || len(b.Lists) < 16 {
		t.Fatalf("node %q has %d lists; the test needs B.db with many", b.Name, len(b.Lists))
	}
	damaged := b.Lists[len(b.Lists)/2]
	loc, _, _ := r.Index().Lookup(damaged)
	packFile := filepath.Join(r.Location(), repo.PackName(loc.Pack))
	good, _ := os.ReadFile(packFile)
	bad := append([]byte(nil), good...)
	bad[loc.Offset+uint64(loc.Length)/2] ^= 1
	os.Chmod(packFile, 0o600)
	os.WriteFile(packFile, bad, 0o600)
	// Whole again for the cleanup check.
	defer os.WriteFile(packFile, good, 0o600)
	r2, err := repo.Open(ctx, enginetest.Local(r.Location()), enginetest.OpenOptionsIn(t.TempDir())) // nothing cached
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	got, err := r2.LoadTree(ctx, subtree)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range got.Nodes {
		want := whole.Nodes[i]
		if !slices.Equal(n.Lists, want.Lists) {
			t.Errorf("%s: lists %d, want %d", n.Name, len(n.Lists), len(want.Lists))
		}
		if n.Name == "B.db" {
			if n.Content != nil || !strings.Contains(n.ContentError, damaged.Short()) {
				t.Errorf("B.db with list %s damaged: %d extents, error %q", damaged.Short(), len(n.Content), n.ContentError)
			}
			continue
		}
		if n.ContentError != "" || !slices.Equal(n.Content, want.Content) {
			t.Errorf("%s: %d extents (error %q), want its %d", n.Name, len(n.Content), n.ContentError, len(want.Content))
		}
	}
}
