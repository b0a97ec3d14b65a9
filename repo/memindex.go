package repo

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/blob"
)

// IndexPacksForCommand indexes the header of every pack file for this
// command only, and stores no index file. It is for a repository that
// lives for one command and has no index files, as tape restore's spool:
// RebuildIndex would store index files and fill a cache file that are
// deleted at the end (in that restore the bbolt transactions and index
// files were 0.4 s of CPU, on the critical path).
//
// The first maxInMemory blobs are held in memory (60 to 130 bytes each: a
// Go map of 56-byte entries, measured at 2^20); the packs after them go
// into the cache file one transaction each, marked as held by no index
// file (index.DirtyMark), so that a later command rebuilds that cache
// rather than trust it. A pack whose header cannot be read is returned in
// bad, left where it is, and its blobs are not indexed, so what needs them
// fails by name. Other copies of a blob (in two packs) are kept for the
// reader that meets a copy that does not decode (alternates).
func (r *Repository) IndexPacksForCommand(ctx context.Context, maxInMemory int) (packs, blobs int, bad []DamagedPack, err error) {
	err = r.EachPackFile(ctx, func(id blob.ID, size int64) error {
		entries, d, err := r.readHeaderOrDamaged(ctx, id)
		if err != nil {
			return err
		} else if d != nil {
			bad = append(bad, *d)
			return nil
		}
		if blobs+len(entries) > maxInMemory {
			if err := r.addPackKeepingCopies(id, uint64(size), entries); err != nil {
				return fmt.Errorf("index pack %s in the cache %s: %w", id, r.cacheDir, err)
			}
		} else {
			dups, err := r.idx.Hold(id, uint64(size), entries)
			if err != nil {
				return fmt.Errorf("index pack %s in memory: %w", id, err)
			}
			r.keepAlternates(id, dups)
		}
		packs++
		blobs += len(entries)
		return nil
	}, nil)
	return packs, blobs, bad, err
}

// addPackKeepingCopies records pack id in the cache file; the entries whose
// blob is indexed already, at another location, are kept as other copies.
func (r *Repository) addPackKeepingCopies(id blob.ID, size uint64, entries []pack.Entry) error {
	ids := make([]blob.ID, len(entries))
	for i, e := range entries {
		ids[i] = e.ID
	}
	locs, found, err := r.idx.LookupMany(ids)
	if err != nil {
		return err
	}
	var dups []pack.Entry
	for i, e := range entries {
		if found[i] && (locs[i].Pack != id || locs[i].Offset != e.Offset) {
			dups = append(dups, e)
		}
	}
	r.keepAlternates(id, dups)
	return r.idx.AddPack(id, size, entries)
}

// readHeaderOrDamaged reads the header of pack id. A header that cannot be
// read for its bytes (malformed, truncated) gives d, naming the problem;
// err is any other failure (the storage, a cancel).
func (r *Repository) readHeaderOrDamaged(ctx context.Context, id blob.ID) (entries []pack.Entry, d *DamagedPack, err error) {
	entries, _, err = r.ReadPackHeader(ctx, id)
	if err != nil {
		if errors.Is(err, pack.ErrCorrupt) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, &DamagedPack{ID: id, Problem: err.Error(), Lost: -1}, nil
		}
		return nil, nil, err
	}
	return entries, nil, nil
}

// keepAlternates records entries of pack id as other copies of blobs that
// are indexed elsewhere, for alternates (which otherwise finds them in index
// files, and this repository has none).
func (r *Repository) keepAlternates(id blob.ID, entries []pack.Entry) {
	if len(entries) == 0 {
		return
	}
	r.deg.vmu.Lock()
	defer r.deg.vmu.Unlock()
	if r.deg.alt == nil {
		r.deg.alt = map[blob.ID][]index.Location{}
	}
	for _, e := range entries {
		r.deg.alt[e.ID] = append(r.deg.alt[e.ID], index.LocationOf(id, e))
	}
}
