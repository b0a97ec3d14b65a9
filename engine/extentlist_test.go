package engine_test

import (
	"errors"
	"math/rand"
	"os"
	"path/filepath"
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
