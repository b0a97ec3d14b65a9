package engine

import (
	"context"
	"fmt"
	"sync"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// future is a node of the snapshot's tree that becomes known later: a file
// once it is read, a directory once its tree is saved. node may be read
// only after done is closed.
type future struct {
	done chan struct{}
	node tree.Node
	// gone: the entry was removed after it was listed, before it could be
	// read; it is not part of the snapshot (set before done is closed).
	gone bool
}

// newFuture returns a future of n that is not done yet.
func newFuture(n tree.Node) *future { return &future{done: make(chan struct{}), node: n} }

// resolved returns a future that is done: n is known already.
func resolved(n tree.Node) *future {
	f := newFuture(n)
	close(f.done)
	return f
}

// treeRepo is what the tree saver needs from the repository.
type treeRepo interface {
	SaveTree(ctx context.Context, t *tree.Tree) (blob.ID, repo.SaveResult, error)
}

// treeSaver saves the trees of directories bottom-up: each on a goroutine
// of its own that waits for the futures of the directory's children, saves
// their nodes as the directory's tree and resolves the directory's future
// with the tree's id. A directory's tree is thus saved after those of its
// subdirectories, and the walk never waits for a save.
//
// A failure to save a tree cancels the backup with it (fail, as a
// repoError); when ctx ends first, the future is resolved with no Subtree.
// The counts it adds to are stored. wait returns once every save started
// has ended, so that nothing writes to the repository after the backup.
type treeSaver struct {
	repo   treeRepo
	counts *backupCounts
	fail   context.CancelCauseFunc
	// onPanic is deferred directly in each goroutine: it turns a panic into
	// the cause that cancels the backup (backup.recoverCancel).
	onPanic func(where string)
	running sync.WaitGroup
}

// save returns the future of directory dir (whose metadata is node) with
// the children kids, in order; its Subtree is set when its tree is saved.
func (s *treeSaver) save(ctx context.Context, dir string, node tree.Node, kids []*future) *future {
	f := newFuture(node)
	s.running.Add(1)
	go func() {
		defer s.running.Done()
		defer close(f.done)
		defer s.onPanic("saving the tree of " + dir)
		t := &tree.Tree{Nodes: make([]tree.Node, 0, len(kids))}
		for _, k := range kids {
			select {
			case <-k.done:
			case <-ctx.Done():
				return
			}
			if !k.gone {
				t.Nodes = append(t.Nodes, k.node)
			}
		}
		id, res, err := s.repo.SaveTree(ctx, t)
		if err != nil {
			s.fail(repoError{fmt.Errorf("save tree of %s: %w", dir, err)})
			return
		}
		if res.Added {
			s.counts.stored.Add(int64(res.Stored))
		}
		f.node.Subtree = id
	}()
	return f
}

// wait waits until every tree save started has ended.
func (s *treeSaver) wait() { s.running.Wait() }
