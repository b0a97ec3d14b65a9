package engine_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo/tree"
)

// The walker records the directories above a path with only the way to it,
// the path's entries (skipping the excluded) with their kinds, and counts
// the directories it lists and the entries that are neither files nor
// directories.
func TestTreeWalkerBuildsTheTree(t *testing.T) {
	r := enginetest.NewRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", "file"), []byte("content"), 0o644)
	os.WriteFile(filepath.Join(src, "skip.tmp"), []byte("scratch"), 0o644)
	os.Symlink("sub/file", filepath.Join(src, "link"))

	p := engine.NewParts(ctx, r, engine.BackupOptions{Excludes: []string{"*.tmp"}})
	p.RunFileWorkers(1)
	p.RunBlobSavers(1)
	root, err := p.Walk(p.Context(), []string{src})
	if err != nil {
		t.Fatal(err)
	}
	n, err := root.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n.Name != "/" || n.Subtree.IsZero() {
		t.Fatalf("root %+v: want / with its tree", n)
	}
	// Down the way to src: one entry per directory.
	rel, _ := filepath.Rel("/", src)
	tr, err := r.LoadTree(ctx, n.Subtree)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range walkTestSplit(rel) {
		if len(tr.Nodes) != 1 || tr.Nodes[0].Name != c || tr.Nodes[0].Kind != tree.Dir {
			t.Fatalf("on the way to %s: %+v; want only the directory %s", src, tr.Nodes, c)
		}
		if tr, err = r.LoadTree(ctx, tr.Nodes[0].Subtree); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	for _, e := range tr.Nodes {
		names = append(names, e.Name)
	}
	if len(tr.Nodes) != 2 || tr.Nodes[0].Name != "link" || tr.Nodes[0].Kind != tree.Symlink || tr.Nodes[0].LinkTarget != "sub/file" ||
		tr.Nodes[1].Name != "sub" || tr.Nodes[1].Kind != tree.Dir {
		t.Fatalf("entries of %s: %v (%+v); want link -> sub/file and sub, not skip.tmp", src, names, tr.Nodes)
	}
	if tr, err = r.LoadTree(ctx, tr.Nodes[1].Subtree); err != nil || len(tr.Nodes) != 1 || tr.Nodes[0].Size != 7 {
		t.Fatalf("entries of sub: %+v, %v; want file of 7 bytes", tr, err)
	}
	if s := p.Summary(); s.Dirs != 2 || s.Others != 1 || s.FilesNew != 1 {
		t.Errorf("summary %+v; want 2 directories listed, 1 symlink, 1 new file", s)
	}
}

// walkTestSplit splits a relative path into its names.
func walkTestSplit(rel string) []string {
	var out []string
	for rel != "." && rel != "" {
		out = append([]string{filepath.Base(rel)}, out...)
		rel = filepath.Dir(rel)
	}
	return out
}

// Below a SourceRoots key a path is read from the same place below its
// value (the longest key wins); a Substitutes file is read from its copy.
func TestSourcesOfAPath(t *testing.T) {
	opts := engine.BackupOptions{
		SourceRoots: map[string]string{"/srv": "/snap/srv", "/srv/db": "/snap/db"},
		Substitutes: map[string]string{"/srv/db/main.db": "/staging/main.db"},
	}
	for _, c := range []struct {
		path, read string
		staged     bool
	}{
		{"/etc/hosts", "/etc/hosts", false},
		{"/srv", "/snap/srv", false},
		{"/srv/www/index.html", "/snap/srv/www/index.html", false},
		{"/srv/db/other.db", "/snap/db/other.db", false},
		{"/srv/dbx", "/snap/srv/dbx", false},
		{"/srv/db/main.db", "/staging/main.db", true},
	} {
		if read, staged := engine.SourceFor(opts, c.path); read != c.read || staged != c.staged {
			t.Errorf("%s is read from %s (staged %v), want %s (%v)", c.path, read, staged, c.read, c.staged)
		}
	}
}
