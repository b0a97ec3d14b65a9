package engine

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// TreeLoader loads tree blobs.
type TreeLoader interface {
	LoadTree(ctx context.Context, id blob.ID) (*tree.Tree, error)
}

// Walk calls fn for every node of the snapshot below prefix (an absolute
// snapshot path; "" or "/" for everything), depth first in name order, with
// the node's absolute snapshot path.
func Walk(ctx context.Context, r TreeLoader, sn *repo.Snapshot, prefix string, fn func(path string, n *tree.Node) error) error {
	prefix = filepath.Clean("/" + prefix)
	var walk func(dir string, id blob.ID) error
	walk = func(dir string, id blob.ID) error {
		t, err := r.LoadTree(ctx, id)
		if err != nil {
			return fmt.Errorf("directory %s: %w", dir, err)
		}
		for i := range t.Nodes {
			n := &t.Nodes[i]
			p := filepath.Join(dir, n.Name)
			inside := prefix == "/" || p == prefix || strings.HasPrefix(p, prefix+"/")
			leads := strings.HasPrefix(prefix, p+"/")
			if inside {
				if err := fn(p, n); err != nil {
					return err
				}
			}
			if n.Kind == tree.Dir && (inside || leads) {
				if err := walk(p, n.Subtree); err != nil {
					return err
				}
			}
		}
		return ctx.Err()
	}
	return walk("/", sn.Tree)
}

// SnapshotAt returns the newest snapshot taken at or before t.
func SnapshotAt(list []*repo.Snapshot, t time.Time) (*repo.Snapshot, error) {
	var found *repo.Snapshot
	for _, sn := range list {
		if !sn.Time.After(t) && (found == nil || sn.Time.After(found.Time)) {
			found = sn
		}
	}
	if found == nil {
		return nil, fmt.Errorf("no snapshot at or before %s: %w", t.Format(time.RFC3339), repo.ErrSnapshotNotFound)
	}
	return found, nil
}
