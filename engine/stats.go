package engine

import (
	"context"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

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
			if loc.Inner == 0 { // a frame's stored bytes, counted at its first blob
				storedData += int64(loc.Length)
			}
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
