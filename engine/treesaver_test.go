package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// A directory's tree is saved once all its children are known, with their
// nodes in order, and its future then carries the tree's id: a parent
// directory waits for its subdirectory's save.
func TestTreeSaverSavesBottomUp(t *testing.T) {
	r := enginetest.NewRepo(t)
	p := engine.NewParts(ctx, r, engine.BackupOptions{})
	file := engine.NewFuture(tree.Node{Name: "b", Kind: tree.File})
	sub := p.SaveTree(ctx, "/a/sub", tree.Node{Name: "sub", Kind: tree.Dir},
		[]*engine.Future{engine.ResolvedFuture(tree.Node{Name: "a", Kind: tree.Symlink, LinkTarget: "b"}), file})
	top := p.SaveTree(ctx, "/a", tree.Node{Name: "a", Kind: tree.Dir}, []*engine.Future{sub})
	time.Sleep(10 * time.Millisecond)
	if sub.Done() || top.Done() {
		t.Fatalf("a directory is done (sub %v, top %v) before its file is known", sub.Done(), top.Done())
	}
	file.Resolve(tree.Node{Name: "b", Kind: tree.File, Mode: 0o640})
	n, err := top.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if n.Name != "a" || n.Subtree.IsZero() {
		t.Fatalf("top node %+v: want a with its tree", n)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := r.LoadTree(ctx, n.Subtree)
	if err != nil || len(got.Nodes) != 1 || got.Nodes[0].Name != "sub" || got.Nodes[0].Subtree.IsZero() {
		t.Fatalf("tree of /a = %+v, %v; want sub with its tree", got, err)
	}
	got, err = r.LoadTree(ctx, got.Nodes[0].Subtree)
	if err != nil || len(got.Nodes) != 2 || got.Nodes[0].LinkTarget != "b" || got.Nodes[1].Mode != 0o640 {
		t.Fatalf("tree of /a/sub = %+v, %v; want the symlink a, then the file b of mode 0640 (as resolved)", got, err)
	}
	if p.Summary().StoredAdded <= 0 {
		t.Errorf("no stored bytes counted for two new trees")
	}
}

// When the backup ends before a child is known, the directory's future is
// done without a tree, and nothing is left running.
func TestTreeSaverStopsAtCancel(t *testing.T) {
	r := enginetest.NewRepo(t)
	cctx, cancel := context.WithCancel(ctx)
	p := engine.NewParts(cctx, r, engine.BackupOptions{})
	dir := p.SaveTree(p.Context(), "/d", tree.Node{Name: "d", Kind: tree.Dir},
		[]*engine.Future{engine.NewFuture(tree.Node{Name: "never", Kind: tree.File})})
	cancel()
	n, err := dir.Wait(ctx)
	if err != nil || !n.Subtree.IsZero() {
		t.Fatalf("cancelled directory = %+v, %v; want done without a tree", n, err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// treeSaverFailingRepo fails every SaveTree.
type treeSaverFailingRepo struct{ *repo.Repository }

func (r treeSaverFailingRepo) SaveTree(context.Context, *tree.Tree) (blob.ID, repo.SaveResult, error) {
	return blob.ID{}, repo.SaveResult{}, errors.New("injected tree failure")
}

// A tree that cannot be saved cancels the backup with an error naming the
// directory.
func TestTreeSaverCancelsOnFailure(t *testing.T) {
	p := engine.NewParts(ctx, treeSaverFailingRepo{enginetest.NewRepo(t)}, engine.BackupOptions{})
	n, err := p.SaveTree(p.Context(), "/srv/data", tree.Node{Name: "data", Kind: tree.Dir}, nil).Wait(ctx)
	if err != nil || !n.Subtree.IsZero() {
		t.Fatalf("failed directory = %+v, %v; want done without a tree", n, err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if cause := p.Cause(); cause == nil || !strings.Contains(cause.Error(), "save tree of /srv/data: injected tree failure") {
		t.Errorf("backup cancelled with %v; want the failed save of /srv/data", cause)
	}
}
