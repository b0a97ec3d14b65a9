package repo

import (
	"context"

	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/blob"
)

// The repository's index as engine sees it: the vocabulary of package index
// and package pack under repo's name, so that engine imports repo only.

// Location says where a blob is stored.
type Location = index.Location

// PackInfo describes an indexed pack.
type PackInfo = index.PackInfo

// PackEntry is one blob of a pack header.
type PackEntry = pack.Entry

// ErrCacheBusy is matched when another command on this host held the index
// cache for longer than the wait allowed.
var ErrCacheBusy = index.ErrBusy

// EachPack calls fn for every indexed pack.
func (r *Repository) EachPack(fn func(id blob.ID, info PackInfo) error) error {
	return r.idx.EachPack(fn)
}

// EachBlob calls fn for every indexed blob.
func (r *Repository) EachBlob(fn func(id blob.ID, loc Location) error) error {
	return r.idx.EachBlob(fn)
}

// LookupBlob returns where blob id is stored; when this view lacks it, it
// first takes in index files other clients wrote since (at most once a
// second).
func (r *Repository) LookupBlob(ctx context.Context, id blob.ID) (Location, bool, error) {
	loc, ok, err := r.idx.Lookup(id)
	if err != nil || ok {
		return loc, ok, err
	}
	return r.lookupAfterCatchUp(ctx, id)
}

// LookupBlobs is LookupBlob for many blobs, in one read of the index: the
// locations of a large file's chunks cost one transaction, not one each. A
// blob this view lacks is looked up again after taking in other clients'
// index files, as LookupBlob does.
func (r *Repository) LookupBlobs(ctx context.Context, ids []blob.ID) ([]Location, []bool, error) {
	locs, found, err := r.idx.LookupMany(ids)
	if err != nil {
		return nil, nil, err
	}
	for i, ok := range found {
		if !ok {
			if locs[i], found[i], err = r.lookupAfterCatchUp(ctx, ids[i]); err != nil {
				return nil, nil, err
			}
		}
	}
	return locs, found, nil
}

// IndexCounts returns the number of indexed blobs and packs.
func (r *Repository) IndexCounts() (blobs, packs int, err error) { return r.idx.Counts() }
