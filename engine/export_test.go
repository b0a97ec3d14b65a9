package engine

// Steps of the maintenance commands, exported for tests of each alone.

import (
	"context"
	"sync/atomic"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// PlanPrune marks the live blobs of r's snapshots and returns the packs
// Prune would delete and repack (its steps markLive and planPrune).
func PlanPrune(ctx context.Context, r *repo.Repository, maxUnused float64) (del, repack []blob.ID, err error) {
	live, err := r.NewBlobSet()
	if err != nil {
		return nil, nil, err
	}
	defer live.Close()
	rep := &PruneReport{}
	if err := markLive(ctx, r, live, nil, rep); err != nil {
		return nil, nil, err
	}
	p, err := planPrune(ctx, r, live, maxUnused, rep)
	if err != nil {
		return nil, nil, err
	}
	return p.del, p.repack, nil
}

// MostlyUnused is packUse.mostlyUnused of a pack of size bytes holding
// count blobs, blobs of them indexed in it (bytes long), live of those
// (liveBytes long).
func MostlyUnused(size uint64, count uint32, blobs, live int, bytes, liveBytes int64, maxUnused float64) bool {
	u := &packUse{size: size, count: count, blobs: blobs, live: live, bytes: bytes, liveBytes: liveBytes}
	return u.mostlyUnused(maxUnused)
}

// CheckPackFiles is Check's step checkPackFiles: it returns the packs it
// found missing and what it reported.
func CheckPackFiles(ctx context.Context, r *repo.Repository) (map[blob.ID]bool, *CheckReport, error) {
	rep := &CheckReport{}
	c, err := checkPackFiles(ctx, r, rep)
	if err != nil {
		return nil, rep, err
	}
	return c.missing, rep, nil
}

// SubHint is copy's subHint: the source and destination trees of
// subdirectory name in the hint trees hs and hd, ok false when none.
func SubHint(hs, hd *tree.Tree, name string) (src, dst blob.ID, ok bool) {
	h := subHint(hs, hd, name)
	if h == nil {
		return blob.ID{}, blob.ID{}, false
	}
	return h.src, h.dst, true
}

// CountSharedFrames counts the frames that restores write first (shared by
// segments of a large file) until the test ends.
func CountSharedFrames(t interface{ Cleanup(func()) }) *atomic.Int64 {
	var n atomic.Int64
	testHookSharedFrames = func(k int) { n.Add(int64(k)) }
	t.Cleanup(func() { testHookSharedFrames = nil })
	return &n
}
