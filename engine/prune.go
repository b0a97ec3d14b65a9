package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// PruneOptions tune Prune.
type PruneOptions struct {
	// DryRun reports what would be done and changes nothing.
	DryRun bool
	// MaxUnused is the percentage of a pack's blob bytes that may be unused
	// before the pack is repacked (its live blobs written to a new pack).
	// Packs with no live blob are always deleted. Default 10; 100 never
	// repacks.
	MaxUnused float64
	// Log, when set, receives one record per phase.
	Log *slog.Logger
	// Progress, when set, counts each phase: "marking" (files are the
	// snapshots walked, of all), "repacking" (the packs repacked and their
	// sizes, of those to repack) and "deleting" (the packs deleted, counted
	// once they are gone). DryRun has only the first.
	Progress *Counts
}

// PruneReport says what Prune did (or, with DryRun, would do).
type PruneReport struct {
	Snapshots       int   // snapshots whose trees were walked
	LiveBlobs       int   // blobs referenced by a snapshot
	PacksDeleted    int   // packs with no live blob
	PacksRepacked   int   // mostly-unused packs whose live blobs were copied
	PacksUnindexed  int   // packs on disk the index does not know (left by a crash)
	PacksWritten    int   // new packs written by repacking
	BlobsRemoved    int   // index entries of unused blobs dropped
	BytesRepacked   int64 // live bytes copied
	BytesFreed      int64 // pack bytes given back (deleted minus written)
	TempFilesRemove int   // leftover files removed from tmp/
	PackBytesBefore int64
	PackBytesAfter  int64
}

// ErrPruneUnsafe is matched when prune refuses to run because a snapshot
// cannot be walked completely: deleting anything then could destroy data
// that a repair would have recovered.
var ErrPruneUnsafe = errors.New("prune refused: the repository is damaged")

type packUse struct {
	size             uint64
	count            uint32
	blobs, live      int
	bytes, liveBytes int64 // stored bytes of blobs with a frame of their own
	// Blobs that share frames (version 2) have no stored size of their own:
	// their plaintext bytes are counted, and the frames' stored bytes are
	// shared out in proportion (framedStored).
	raw, liveRaw int64
}

// framedStored estimates the stored bytes of the live blobs that share
// frames, and of all of them: the pack's bytes that are neither overhead
// nor single-blob frames, in proportion to plaintext.
func (u *packUse) framedStored() (live, all int64) {
	if u.raw == 0 {
		return 0, 0
	}
	all = max(0, int64(u.size)-repo.PackOverhead(int(u.count))-u.bytes)
	return int64(float64(all) * float64(u.liveRaw) / float64(u.raw)), all
}

// liveStored is the stored bytes of the pack's live blobs (estimated for
// blobs that share frames).
func (u *packUse) liveStored() int64 {
	live, _ := u.framedStored()
	return u.liveBytes + live
}

// Prune removes data no snapshot references. It marks the live blobs by
// walking every snapshot's trees into an on-disk BlobSet (memory does not
// grow with the repository), deletes packs without a live blob and packs
// that are on disk but not indexed, repacks packs whose unused share exceeds
// MaxUnused, and deletes leftover temp files. New packs are written and
// indexed before anything is deleted, so it is safe to kill at any moment.
// It refuses (ErrPruneUnsafe) when a snapshot does not decode or references
// a tree or chunk that is not indexed. The caller must hold an exclusive lock.
func Prune(ctx context.Context, r *repo.Repository, o PruneOptions) (*PruneReport, error) {
	if o.MaxUnused == 0 {
		o.MaxUnused = 10
	}
	if !o.DryRun {
		if err := r.WritableIndex(ctx); err != nil {
			return nil, fmt.Errorf("prune: %w", err)
		}
	}
	log := orDiscard(o.Log)
	rep := &PruneReport{}
	live, err := r.NewBlobSet()
	if err != nil {
		return nil, err
	}
	defer live.Close()

	log.Info("marking live blobs")
	if err := markLive(ctx, r, live, o.Progress, rep); err != nil {
		return nil, err
	}
	log.Info("finding unused data")
	plan, err := planPrune(ctx, r, live, o.MaxUnused, rep)
	if err != nil {
		return nil, err
	}
	if o.DryRun {
		rep.PackBytesAfter = plan.keptBytes() + rep.BytesRepacked
		rep.BytesFreed = rep.PackBytesBefore - rep.PackBytesAfter
		return rep, nil
	}
	tmp, err := r.RemoveTemp(ctx)
	if err != nil {
		return nil, err
	}
	rep.TempFilesRemove = len(tmp)
	if err := plan.repackPacks(ctx, r, live, log, o.Progress, rep); err != nil {
		return nil, err
	}
	if err := plan.deletePacks(ctx, r, log, o.Progress); err != nil {
		return nil, err
	}
	err = r.EachPackFile(ctx, func(id blob.ID, size int64) error { rep.PackBytesAfter += size; return nil }, nil)
	if err != nil {
		return nil, err
	}
	rep.BytesFreed = rep.PackBytesBefore - rep.PackBytesAfter
	return rep, nil
}

// markLive adds every blob a snapshot references to live, and counts the
// snapshots and live blobs in rep. A snapshot record that does not decode
// stops it (ErrPruneUnsafe), as does anything markTree cannot walk.
func markLive(ctx context.Context, r *repo.Repository, live *repo.BlobSet, progress *Counts, rep *PruneReport) error {
	snaps, bad, err := r.Snapshots(ctx)
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %v; run `stasis repair snapshots`", ErrPruneUnsafe, bad[0])
	}
	progress.StartPhase("marking", int64(len(snaps)), 0)
	for _, sn := range snaps {
		rep.Snapshots++
		if err := markTree(ctx, r, live, sn, "/", sn.Tree); err != nil {
			return err
		}
		progress.Add(1, 0)
	}
	rep.LiveBlobs = live.Len()
	return nil
}

// prunePlan is what Prune deletes and repacks, found by planPrune.
type prunePlan struct {
	use      map[blob.ID]*packUse // every indexed pack
	del      []blob.ID            // packs with no live blob, and packs no index names; sorted
	repack   []blob.ID            // packs more than MaxUnused unused; sorted
	diskSize map[blob.ID]int64    // packs on disk the index does not know
}

// planPrune sorts the packs into those to delete, those to repack and the
// rest, from the live blobs, and fills the counts of rep that do not depend
// on doing it (what is deleted, repacked, and the pack bytes before).
func planPrune(ctx context.Context, r *repo.Repository, live *repo.BlobSet, maxUnused float64, rep *PruneReport) (*prunePlan, error) {
	use, err := packUsage(r, live, rep)
	if err != nil {
		return nil, err
	}
	p := &prunePlan{use: use, diskSize: map[blob.ID]int64{}}
	for id, u := range use {
		rep.PackBytesBefore += int64(u.size)
		switch {
		case u.live == 0:
			p.del = append(p.del, id)
		case u.mostlyUnused(maxUnused):
			p.repack = append(p.repack, id)
		}
	}
	err = r.EachPackFile(ctx, func(id blob.ID, size int64) error {
		if use[id] == nil {
			p.del = append(p.del, id)
			p.diskSize[id] = size
			rep.PacksUnindexed++
			rep.PackBytesBefore += size
		}
		return nil
	}, nil)
	if err != nil {
		return nil, err
	}
	sortIDs(p.del)
	sortIDs(p.repack)
	rep.PacksDeleted = len(p.del) - rep.PacksUnindexed
	rep.PacksRepacked = len(p.repack)
	for _, id := range p.repack {
		rep.BytesRepacked += use[id].liveStored()
	}
	return p, nil
}

// packUsage counts, for every indexed pack, its blobs and bytes and how
// many of them are live; rep.BlobsRemoved counts the index entries of
// blobs that are not.
func packUsage(r *repo.Repository, live *repo.BlobSet, rep *PruneReport) (map[blob.ID]*packUse, error) {
	use := map[blob.ID]*packUse{}
	err := r.EachPack(func(id blob.ID, info repo.PackInfo) error {
		use[id] = &packUse{size: info.Size, count: info.Count}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = r.EachBlob(func(id blob.ID, loc repo.Location) error {
		u := use[loc.Pack]
		if u == nil {
			return nil
		}
		u.blobs++
		framed := loc.Storage.Framed()
		if framed {
			u.raw += int64(loc.RawLength)
		} else {
			u.bytes += int64(loc.Length)
		}
		ok, err := live.Has(id)
		if err != nil {
			return err
		}
		if ok {
			u.live++
			if framed {
				u.liveRaw += int64(loc.RawLength)
			} else {
				u.liveBytes += int64(loc.Length)
			}
		} else {
			rep.BlobsRemoved++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return use, nil
}

// mostlyUnused reports whether more than maxUnused percent of the pack is
// unused: indexed blobs no snapshot needs, plus copies of blobs that are
// indexed in another pack (estimated from the size; in a pack of shared
// frames, from the plaintext of its indexed blobs).
func (u *packUse) mostlyUnused(maxUnused float64) bool {
	unused := u.bytes - u.liveBytes
	if live, all := u.framedStored(); all > 0 {
		unused += all - live
	} else if u.blobs < int(u.count) {
		unused += max(0, int64(u.size)-repo.PackOverhead(int(u.count))-u.bytes)
	}
	return unused > 0 && float64(unused)*100 > maxUnused*float64(u.size)
}

// size returns the size of pack id, indexed or not.
func (p *prunePlan) size(id blob.ID) int64 {
	if u := p.use[id]; u != nil {
		return int64(u.size)
	}
	return p.diskSize[id]
}

// keptBytes is the size of the indexed packs the plan neither deletes nor
// repacks.
func (p *prunePlan) keptBytes() int64 {
	var keep int64
	for id, u := range p.use {
		if !contains(p.del, id) && !contains(p.repack, id) {
			keep += int64(u.size)
		}
	}
	return keep
}

// repackPacks copies the live blobs of the packs to repack into new packs
// (written and indexed before the old ones are deleted).
func (p *prunePlan) repackPacks(ctx context.Context, r *repo.Repository, live *repo.BlobSet, log *slog.Logger, progress *Counts, rep *PruneReport) error {
	if len(p.repack) == 0 {
		return nil
	}
	log.Info(fmt.Sprintf("repacking %d packs", len(p.repack)), "packs", len(p.repack))
	var total int64
	for _, id := range p.repack {
		total += p.size(id)
	}
	progress.StartPhase("repacking", int64(len(p.repack)), total)
	st, err := r.Repack(ctx, p.repack, live.Has, func(id blob.ID) { progress.Add(1, p.size(id)) })
	if err != nil {
		return err
	}
	rep.PacksWritten = len(st.NewPacks)
	rep.BytesRepacked = st.Bytes
	return nil
}

// deletePacks deletes the packs to delete and the repacked ones.
func (p *prunePlan) deletePacks(ctx context.Context, r *repo.Repository, log *slog.Logger, progress *Counts) error {
	gone := append(append([]blob.ID{}, p.del...), p.repack...)
	log.Info(fmt.Sprintf("deleting %d packs", len(gone)), "packs", len(gone))
	var goneBytes int64
	for _, id := range gone {
		goneBytes += p.size(id)
	}
	progress.StartPhase("deleting", int64(len(gone)), goneBytes)
	if _, err := r.DeletePacks(ctx, gone); err != nil {
		return err
	}
	progress.Add(int64(len(gone)), goneBytes)
	return nil
}

func liveName(s *repo.BlobSet) string { return s.Path() }

func contains(ids []blob.ID, id blob.ID) bool {
	i := sort.Search(len(ids), func(i int) bool { return ids[i].String() >= id.String() })
	return i < len(ids) && ids[i] == id
}

func sortIDs(ids []blob.ID) {
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
}

// markTree adds tree id and everything below it to live. A tree already in
// the set was walked before (trees are added after their contents).
func markTree(ctx context.Context, r *repo.Repository, live *repo.BlobSet, sn *repo.Snapshot, dir string, id blob.ID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if ok, err := live.Has(id); err != nil || ok {
		return err
	}
	t, err := r.LoadTree(ctx, id)
	if err != nil {
		return fmt.Errorf("%w: snapshot %s: directory %s: %v; run `stasis check`, then `stasis repair index` or `stasis repair snapshots`", ErrPruneUnsafe, sn.ID.Short(), dir, err)
	}
	var ids []blob.ID
	for _, n := range t.Nodes {
		switch n.Kind {
		case tree.Dir:
			if err := markTree(ctx, r, live, sn, filepath.Join(dir, n.Name), n.Subtree); err != nil {
				return err
			}
		case tree.File:
			if n.ContentError != "" {
				return fmt.Errorf("%w: snapshot %s: file %s: %s; run `stasis check`, then `stasis repair snapshots`", ErrPruneUnsafe, sn.ID.Short(), filepath.Join(dir, n.Name), n.ContentError)
			}
			ids = append(ids, n.Lists...) // extent-list blobs are live too
			for _, e := range n.Content {
				if e.Hole {
					continue
				}
				ok, err := r.HasBlob(e.ID)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("%w: snapshot %s: file %s: chunk %s is not in the index; run `stasis repair index`, then `stasis repair snapshots`", ErrPruneUnsafe, sn.ID.Short(), filepath.Join(dir, n.Name), e.ID.Short())
				}
				ids = append(ids, e.ID)
			}
		}
	}
	ids = append(ids, id)
	_, err = live.Add(ids...)
	return err
}
