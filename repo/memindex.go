package repo

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/blob"
)

// IndexPacksInMemory indexes the header of every pack file in this
// Repository's memory only: no index file is stored and the cache file is
// not changed. It is for a repository that lives for one command and has
// no index files, as tape restore's spool: RebuildIndex would store index
// files and fill a cache file that are deleted at the end (in that restore
// the bbolt transactions and index files were 0.4 s of CPU, on the
// critical path). A pack whose header cannot be read is returned in bad
// and its blobs are not indexed, so what needs them fails by name.
//
// Memory grows by 60 to 130 bytes per blob (a Go map of 56-byte entries,
// measured at 2^20): past maxBlobs blobs it stops
// with ErrTooManyForMemory, having indexed nothing (use RebuildIndex).
func (r *Repository) IndexPacksInMemory(ctx context.Context, maxBlobs int) (packs, blobs int, bad []DamagedPack, err error) {
	err = r.EachPackFile(ctx, func(id blob.ID, size int64) error {
		entries, _, err := r.ReadPackHeader(ctx, id)
		if err != nil {
			if errors.Is(err, pack.ErrCorrupt) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				bad = append(bad, DamagedPack{ID: id, Problem: err.Error(), Lost: -1})
				return nil
			}
			return err
		}
		if err := r.idx.Hold(id, uint64(size), entries); err != nil {
			return fmt.Errorf("index pack %s in memory: %w", id, err)
		}
		packs++
		blobs += len(entries)
		if blobs > maxBlobs {
			return ErrTooManyForMemory
		}
		return nil
	}, nil)
	if err != nil {
		if rerr := r.idx.Reset(); rerr != nil {
			return 0, 0, nil, fmt.Errorf("%w (and emptying the index: %v)", err, rerr)
		}
		return 0, 0, nil, err
	}
	return packs, blobs, bad, nil
}

// ErrTooManyForMemory says that IndexPacksInMemory met more blobs than it
// was allowed to hold.
var ErrTooManyForMemory = errors.New("too many blobs to index in memory")
