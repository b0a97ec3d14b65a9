package engine

import (
	"context"
	"path/filepath"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// Change is one difference between two snapshots.
type Change struct {
	Path string `json:"path"`
	// What: "+" added, "-" removed, "M" content changed, "T" type changed,
	// "U" metadata only (mode, owner, times, link target).
	What string `json:"change"`
}

// Diff lists what changed from snapshot a to snapshot b, in path order.
// Subtrees with the same id are skipped without being read, so comparing
// two daily snapshots reads only the directories that changed.
func Diff(ctx context.Context, r TreeLoader, a, b *repo.Snapshot, fn func(Change) error) error {
	var walk func(dir string, ida, idb blob.ID) error
	load := func(id blob.ID) (*tree.Tree, error) {
		if id.IsZero() {
			return &tree.Tree{}, nil
		}
		return r.LoadTree(ctx, id)
	}
	// all reports every entry below a subtree as added or removed.
	var all func(dir string, id blob.ID, what string) error
	all = func(dir string, id blob.ID, what string) error {
		t, err := load(id)
		if err != nil {
			return err
		}
		for _, n := range t.Nodes {
			p := filepath.Join(dir, n.Name)
			if err := fn(Change{p, what}); err != nil {
				return err
			}
			if n.Kind == tree.Dir {
				if err := all(p, n.Subtree, what); err != nil {
					return err
				}
			}
		}
		return nil
	}
	walk = func(dir string, ida, idb blob.ID) error {
		if ida == idb {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		ta, err := load(ida)
		if err != nil {
			return err
		}
		tb, err := load(idb)
		if err != nil {
			return err
		}
		i, j := 0, 0
		for i < len(ta.Nodes) || j < len(tb.Nodes) {
			var na, nb *tree.Node
			switch {
			case j >= len(tb.Nodes) || (i < len(ta.Nodes) && ta.Nodes[i].Name < tb.Nodes[j].Name):
				na = &ta.Nodes[i]
				i++
			case i >= len(ta.Nodes) || tb.Nodes[j].Name < ta.Nodes[i].Name:
				nb = &tb.Nodes[j]
				j++
			default:
				na, nb = &ta.Nodes[i], &tb.Nodes[j]
				i++
				j++
			}
			if err := diffNode(dir, na, nb, fn, all, walk); err != nil {
				return err
			}
		}
		return nil
	}
	return walk("/", a.Tree, b.Tree)
}

func diffNode(dir string, na, nb *tree.Node, fn func(Change) error,
	all func(string, blob.ID, string) error, walk func(string, blob.ID, blob.ID) error) error {
	switch {
	case nb == nil:
		p := filepath.Join(dir, na.Name)
		if err := fn(Change{p, "-"}); err != nil {
			return err
		}
		if na.Kind == tree.Dir {
			return all(p, na.Subtree, "-")
		}
		return nil
	case na == nil:
		p := filepath.Join(dir, nb.Name)
		if err := fn(Change{p, "+"}); err != nil {
			return err
		}
		if nb.Kind == tree.Dir {
			return all(p, nb.Subtree, "+")
		}
		return nil
	}
	p := filepath.Join(dir, na.Name)
	if na.Kind != nb.Kind {
		if err := fn(Change{p, "T"}); err != nil {
			return err
		}
		if na.Kind == tree.Dir {
			if err := all(p, na.Subtree, "-"); err != nil {
				return err
			}
		}
		if nb.Kind == tree.Dir {
			return all(p, nb.Subtree, "+")
		}
		return nil
	}
	if na.Kind == tree.Dir {
		if sameMeta(na, nb) {
			return walk(p, na.Subtree, nb.Subtree)
		}
		if err := fn(Change{p, "U"}); err != nil {
			return err
		}
		return walk(p, na.Subtree, nb.Subtree)
	}
	if na.Kind == tree.File && !sameContent(na, nb) {
		return fn(Change{p, "M"})
	}
	if !sameMeta(na, nb) || na.LinkTarget != nb.LinkTarget || na.Rdev != nb.Rdev {
		return fn(Change{p, "U"})
	}
	return nil
}

func sameContent(a, b *tree.Node) bool {
	if a.Size != b.Size || len(a.Content) != len(b.Content) {
		return false
	}
	for i := range a.Content {
		if a.Content[i] != b.Content[i] {
			return false
		}
	}
	return true
}

func sameMeta(a, b *tree.Node) bool {
	return a.Mode == b.Mode && a.UID == b.UID && a.GID == b.GID && a.MTime == b.MTime
}
