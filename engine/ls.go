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

// Stats describes the repository's size.
type Stats struct {
	Snapshots    int     `json:"snapshots"`
	LogicalBytes int64   `json:"logical_bytes"` // sum of the file sizes of every snapshot
	UniqueBytes  int64   `json:"unique_bytes"`  // distinct chunk data before compression
	StoredBytes  int64   `json:"stored_bytes"`  // size of all packs
	Chunks       int64   `json:"chunks"`
	Trees        int64   `json:"trees"` // tree and extent-list blobs
	Packs        int64   `json:"packs"`
	DedupRatio   float64 `json:"dedup_ratio"`       // logical / unique
	Compression  float64 `json:"compression_ratio"` // unique / stored data
	SpaceSaving  float64 `json:"space_saving"`      // 1 - stored / logical
}

// RepoStats computes Stats from the snapshots' summaries and the index
// (streamed from bbolt: memory does not grow with the repository).
func RepoStats(ctx context.Context, r *repo.Repository) (*Stats, error) {
	st := &Stats{}
	snaps, _, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	st.Snapshots = len(snaps)
	for _, sn := range snaps {
		st.LogicalBytes += sn.Summary.TotalBytes
	}
	var storedData int64
	err = r.EachBlob(func(id blob.ID, loc repo.Location) error {
		if loc.Type == blob.Data {
			st.Chunks++
			st.UniqueBytes += int64(loc.RawLength)
			storedData += int64(loc.Length)
		} else {
			st.Trees++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = r.EachPack(func(id blob.ID, info repo.PackInfo) error {
		st.Packs++
		st.StoredBytes += int64(info.Size)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if st.UniqueBytes > 0 {
		st.DedupRatio = float64(st.LogicalBytes) / float64(st.UniqueBytes)
	}
	if storedData > 0 {
		st.Compression = float64(st.UniqueBytes) / float64(storedData)
	}
	if st.LogicalBytes > 0 {
		st.SpaceSaving = 1 - float64(st.StoredBytes)/float64(st.LogicalBytes)
	}
	return st, nil
}
