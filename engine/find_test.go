package engine_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// countingLoader counts the loads of each tree.
type countingLoader struct {
	engine.TreeLoader
	loads map[blob.ID]int
	fail  blob.ID
}

func (c *countingLoader) LoadTree(ctx context.Context, id blob.ID) (*tree.Tree, error) {
	c.loads[id]++
	if id == c.fail {
		return nil, errors.New("load tree " + id.Short() + ": " + repo.ErrCorruptBlob.Error())
	}
	return c.TreeLoader.LoadTree(ctx, id)
}

// threeDays backs up a tree on three days: day 2 adds ldif/new.ldif, day 3
// deletes it again; a deep directory stays the same all along.
func threeDays(t *testing.T, r *repo.Repository) (dir string, snaps []*repo.Snapshot) {
	dir = filepath.Join(t.TempDir(), "zoomserv")
	os.MkdirAll(filepath.Join(dir, "ldif"), 0o755)
	os.MkdirAll(filepath.Join(dir, "archive", "2025", "q4"), 0o755)
	os.WriteFile(filepath.Join(dir, "X500.db"), []byte("database"), 0o600)
	os.WriteFile(filepath.Join(dir, "ldif", "people.ldif"), []byte("dn: cn=alice"), 0o644)
	os.WriteFile(filepath.Join(dir, "archive", "2025", "q4", "old.ldif"), []byte("dn: cn=bob"), 0o644)
	snaps = append(snaps, backup(t, r, day1, dir))
	os.WriteFile(filepath.Join(dir, "ldif", "New.LDIF"), []byte("dn: cn=carol"), 0o644)
	snaps = append(snaps, backup(t, r, day1.Add(24*time.Hour), dir))
	os.Remove(filepath.Join(dir, "ldif", "New.LDIF"))
	snaps = append(snaps, backup(t, r, day1.Add(48*time.Hour), dir))
	return dir, snaps
}

func find(t *testing.T, r engine.TreeLoader, snaps []*repo.Snapshot, opts engine.FindOptions) map[string][]string {
	t.Helper()
	got := map[string][]string{}
	err := engine.Find(ctx, r, snaps, opts, func(res *engine.FindResult) error {
		if len(res.Problems) > 0 {
			t.Errorf("snapshot %s: problems %+v", res.Snapshot.ID.Short(), res.Problems)
		}
		for _, h := range res.Hits {
			got[res.Snapshot.ID.Short()] = append(got[res.Snapshot.ID.Short()], h.Path)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("find %v: %v", opts.Patterns, err)
	}
	return got
}

// Find across three days: a file that lived only on day 2 is found only
// there; base-name globs, globs with '/' (whole path when absolute, trailing
// components otherwise), several patterns, and --ignore-case.
func TestFindAcrossThreeSnapshots(t *testing.T) {
	r := enginetest.NewRepo(t)
	dir, snaps := threeDays(t, r)
	d1, d2, d3 := snaps[0].ID.Short(), snaps[1].ID.Short(), snaps[2].ID.Short()
	newFile := filepath.Join(dir, "ldif", "New.LDIF")
	people := filepath.Join(dir, "ldif", "people.ldif")
	old := filepath.Join(dir, "archive", "2025", "q4", "old.ldif")
	for _, c := range []struct {
		name string
		opts engine.FindOptions
		want map[string][]string
	}{
		{"added on day 2, deleted on day 3", engine.FindOptions{Patterns: []string{"New.LDIF"}},
			map[string][]string{d2: {newFile}}},
		{"case matters by default", engine.FindOptions{Patterns: []string{"*.ldif"}},
			map[string][]string{d1: {old, people}, d2: {old, people}, d3: {old, people}}},
		{"ignore case", engine.FindOptions{Patterns: []string{"*.ldif"}, IgnoreCase: true},
			map[string][]string{d1: {old, people}, d2: {old, newFile, people}, d3: {old, people}}},
		{"trailing components", engine.FindOptions{Patterns: []string{"ldif/*"}},
			map[string][]string{d1: {people}, d2: {newFile, people}, d3: {people}}},
		{"whole path", engine.FindOptions{Patterns: []string{dir + "/*/*/*/old.ldif"}},
			map[string][]string{d1: {old}, d2: {old}, d3: {old}}},
		{"an absolute pattern matches from the root only", engine.FindOptions{Patterns: []string{"/q4/*"}},
			map[string][]string{}},
		{"a directory and a file", engine.FindOptions{Patterns: []string{"q?", "X500.db"}},
			map[string][]string{d1: {filepath.Join(dir, "X500.db"), filepath.Join(dir, "archive", "2025", "q4")},
				d2: {filepath.Join(dir, "X500.db"), filepath.Join(dir, "archive", "2025", "q4")},
				d3: {filepath.Join(dir, "X500.db"), filepath.Join(dir, "archive", "2025", "q4")}}},
	} {
		got := find(t, r, snaps, c.opts)
		if len(got) != len(c.want) {
			t.Errorf("%s: hits %v, want %v", c.name, got, c.want)
			continue
		}
		for id, want := range c.want {
			if strings.Join(got[id], "\n") != strings.Join(sortedByWalk(want), "\n") {
				t.Errorf("%s: snapshot %s: hits %q, want %q", c.name, id, got[id], want)
			}
		}
	}
	// Hits carry the stored metadata.
	engine.Find(ctx, r, snaps[1:2], engine.FindOptions{Patterns: []string{"New.LDIF"}}, func(res *engine.FindResult) error {
		if h := res.Hits[0]; h.Kind != tree.File || h.Size != 12 || h.Mode != 0o644 || h.MTime == 0 {
			t.Errorf("hit %+v", h)
		}
		return nil
	})
	if err := engine.Find(ctx, r, snaps, engine.FindOptions{Patterns: []string{"[x"}}, func(*engine.FindResult) error { return nil }); err == nil || !strings.Contains(err.Error(), "[x") {
		t.Errorf("a malformed pattern: %v", err)
	}
}

// sortedByWalk orders paths as a depth-first walk in name order does: it is
// the byte order of the paths with '/' sorting before every other byte.
func sortedByWalk(ps []string) []string {
	out := append([]string(nil), ps...)
	key := func(s string) string { return strings.ReplaceAll(s, "/", "\x00") }
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if key(out[j]) < key(out[i]) {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// Identical subtrees are searched once across snapshots: every tree is
// loaded at most once (also with a whole-path pattern, where the reuse is by
// tree and path), and a tree that cannot be loaded is a problem of each
// snapshot that holds it, named by its directory.
func TestFindLoadsEachTreeOnce(t *testing.T) {
	r := enginetest.NewRepo(t)
	dir, snaps := threeDays(t, r)
	for _, pattern := range []string{"*.ldif", dir + "/ldif/*"} {
		cl := &countingLoader{TreeLoader: r, loads: map[blob.ID]int{}}
		find(t, cl, snaps, engine.FindOptions{Patterns: []string{pattern}})
		total := 0
		for id, n := range cl.loads {
			total += n
			if n > 1 {
				t.Errorf("%s: tree %s loaded %d times", pattern, id.Short(), n)
			}
		}
		// Per snapshot the tree has one tree per directory of the path down
		// to dir plus zoomserv, ldif, archive, 2025, q4.
		perSnapshot := strings.Count(dir, "/") + 1 + 4
		if total >= 3*perSnapshot || total < perSnapshot {
			t.Errorf("%s: %d tree loads for 3 snapshots of %d trees each", pattern, total, perSnapshot)
		}
	}

	q4 := subtree(t, r, snaps[0], filepath.Join(dir, "archive", "2025", "q4"))
	cl := &countingLoader{TreeLoader: r, loads: map[blob.ID]int{}, fail: q4}
	var problems []string
	err := engine.Find(ctx, cl, snaps, engine.FindOptions{Patterns: []string{"*.ldif"}}, func(res *engine.FindResult) error {
		for _, p := range res.Problems {
			problems = append(problems, p.Path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "archive", "2025", "q4")
	if len(problems) != 3 || problems[0] != want || problems[2] != want {
		t.Errorf("problems %v, want %s in each of 3 snapshots", problems, want)
	}
}
