package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
	"github.com/zeebo/blake3"
)

// CheckOptions tune Check.
type CheckOptions struct {
	ReadData bool // read every pack, verify its hash, header and every blob
	// Log, when set, receives one record per phase.
	Log *slog.Logger
	// Progress, when set, counts the packs read with ReadData and their
	// bytes; its totals are the packs to read, set before the first.
	Progress *Counts
}

// CheckReport lists what is wrong. Errors are damage (something cannot be
// restored or the repository is inconsistent); Warnings are harmless leftovers.
type CheckReport struct {
	Snapshots, Trees, Packs int
	Errors                  []string
	Warnings                []string
}

// OK reports whether no damage was found.
func (r *CheckReport) OK() bool { return len(r.Errors) == 0 }

// Check verifies the repository: every indexed pack exists with its recorded
// size, every snapshot's trees decode and every blob they reference is
// indexed; with ReadData every pack is read and every blob decoded and
// re-hashed. Damage is named by pack, blob, snapshot and file path.
func Check(ctx context.Context, r *repo.Repository, o CheckOptions) (*CheckReport, error) {
	rep := &CheckReport{}
	log := orDiscard(o.Log)
	// Snapshots first: listing them brings this view up to the index files
	// they need (a backup stores those before its snapshot), so the packs
	// listed next include every pack of every snapshot checked below.
	snaps, bad, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	log.Info("checking index files")
	if err := checkIndexFiles(ctx, r, rep); err != nil {
		return nil, err
	}
	log.Info("checking packs")
	packs, err := checkPackFiles(ctx, r, rep)
	if err != nil {
		return nil, err
	}
	rep.Errors = append(rep.Errors, r.DictProblems()...)
	if !o.ReadData {
		if err := checkPackHeaders(ctx, r, packs.missing, rep); err != nil {
			return nil, err
		}
	}
	damaged := map[blob.ID]string{} // blob → why
	if len(packs.missing) > 0 {
		r.EachBlob(func(id blob.ID, loc repo.Location) error {
			if packs.missing[loc.Pack] {
				damaged[id] = fmt.Sprintf("in damaged pack %s", loc.Pack.Short())
			}
			return nil
		})
	}
	if o.ReadData {
		log.Info("reading all packs")
		if err := readPacks(ctx, r, packs, o.Progress, damaged, rep); err != nil {
			return nil, err
		}
	}
	log.Info("checking snapshots")
	for _, e := range bad {
		rep.Errors = append(rep.Errors, e.Error())
	}
	seen := map[blob.ID]bool{}
	for _, sn := range snaps {
		rep.Snapshots++
		if err := r.VerifySnapshotFile(ctx, sn.ID); err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("snapshot %s: %v", sn.ID.Short(), err))
		}
		rep.Errors = append(rep.Errors, r.SnapshotDictProblems(sn)...)
		checkTree(ctx, r, sn, "/", sn.Tree, seen, damaged, rep)
	}
	return rep, nil
}

// checkedPacks is what checkPackFiles found of the indexed packs.
type checkedPacks struct {
	missing             map[blob.ID]bool // packs whose blobs cannot be read (gone, or of the wrong size)
	toRead, toReadBytes int64            // the packs ReadData reads
}

// checkPackFiles compares the pack files on disk with the index: an
// indexed pack that is gone or has another size is an error (and missing),
// a pack file no index names or a file that is not named like a pack is a
// warning. It counts the indexed packs in rep.
func checkPackFiles(ctx context.Context, r *repo.Repository, rep *CheckReport) (*checkedPacks, error) {
	onDisk := map[blob.ID]int64{}
	err := r.EachPackFile(ctx, func(id blob.ID, size int64) error {
		onDisk[id] = size
		return nil
	}, func(name string) {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: not a pack file name", name))
	})
	if err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	c := &checkedPacks{missing: map[blob.ID]bool{}}
	err = r.EachPack(func(id blob.ID, info repo.PackInfo) error {
		rep.Packs++
		size, ok := onDisk[id]
		delete(onDisk, id)
		switch {
		case !ok:
			c.missing[id] = true
			rep.Errors = append(rep.Errors, fmt.Sprintf("pack %s is missing (its blobs are lost; restore the file from a copy or tape)", id))
		case uint64(size) != info.Size:
			c.missing[id] = true
			rep.Errors = append(rep.Errors, fmt.Sprintf("pack %s has %d bytes, the index says %d (truncated or overwritten)", id, size, info.Size))
		default:
			c.toRead++
			c.toReadBytes += int64(info.Size)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for id := range onDisk {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("pack %s is in no index file (left by an interrupted backup, or written by a backup still running; `stasis prune` removes it, `stasis repair index` adopts it)", id))
	}
	return c, nil
}

// checkPackHeaders compares the header of every pack that is not missing
// with the index; a pack whose header cannot be read is added to missing.
// Pack headers are cheap to read (the tail of each file); with ReadData,
// readPack does this.
func checkPackHeaders(ctx context.Context, r *repo.Repository, missing map[blob.ID]bool, rep *CheckReport) error {
	var present []blob.ID
	r.EachPack(func(id blob.ID, _ repo.PackInfo) error {
		if !missing[id] {
			present = append(present, id)
		}
		return nil
	})
	for _, id := range present {
		entries, _, err := r.ReadPackHeader(ctx, id)
		if err != nil {
			missing[id] = true
			rep.Errors = append(rep.Errors, fmt.Sprintf("pack %s: header: %v", id, err))
			continue
		}
		msgs, err := r.CheckIndexEntries(ctx, id, entries)
		if err != nil {
			return err
		}
		rep.Errors = append(rep.Errors, msgs...)
	}
	return nil
}

// readPacks reads every pack that is not missing (readPack) and adds the
// blobs found damaged to damaged, counting the packs in progress.
func readPacks(ctx context.Context, r *repo.Repository, packs *checkedPacks, progress *Counts, damaged map[blob.ID]string, rep *CheckReport) error {
	progress.SetTotals(packs.toRead, packs.toReadBytes)
	return r.EachPack(func(id blob.ID, info repo.PackInfo) error {
		if packs.missing[id] {
			return nil
		}
		for bid, why := range readPack(ctx, r, id, rep) {
			damaged[bid] = why
		}
		progress.Add(1, int64(info.Size))
		return ctx.Err()
	})
}

// readPack verifies one pack and returns its damaged blobs.
func readPack(ctx context.Context, r *repo.Repository, id blob.ID, rep *CheckReport) map[blob.ID]string {
	bad := map[blob.ID]string{}
	data, err := r.ReadPack(ctx, id)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return bad
	}
	if blob.ID(blake3.Sum256(data)) != id {
		rep.Errors = append(rep.Errors, fmt.Sprintf("pack %s: content does not match its name (bit rot or tampering)", id))
	}
	entries, err := r.DecodePackHeader(data)
	if err != nil {
		rep.Errors = append(rep.Errors, fmt.Sprintf("pack %s: header: %v", id, err))
		// Fall back to the index's view to test each blob.
		r.EachBlob(func(bid blob.ID, loc repo.Location) error {
			if loc.Pack == id {
				entries = append(entries, loc.Entry(bid))
			}
			return nil
		})
	}
	dec := r.NewBlobDecoder()
	for _, e := range entries {
		loc, ok, err := r.LookupBlob(ctx, e.ID)
		if err == nil && ok && loc.Pack == id && (loc.Offset != e.Offset || loc.Length != e.Length || loc.Inner != e.Inner) {
			rep.Errors = append(rep.Errors, fmt.Sprintf("pack %s: index entry of blob %s disagrees with the pack header (run `stasis repair index`)", id.Short(), e.ID))
		}
		if e.Offset+uint64(e.Length) > uint64(len(data)) {
			bad[e.ID] = fmt.Sprintf("cut off in pack %s", id.Short())
			continue
		}
		if _, err := dec.Decode(id, e, data[e.Offset:e.Offset+uint64(e.Length)], nil); err != nil {
			undecodable(ctx, r, id, e.ID, ok && loc.Pack == id && loc.Offset == e.Offset, err, bad, rep)
		}
	}
	return bad
}

func checkTree(ctx context.Context, r *repo.Repository, sn *repo.Snapshot, dir string, id blob.ID, seen map[blob.ID]bool, damaged map[blob.ID]string, rep *CheckReport) {
	if seen[id] && len(damaged) == 0 {
		return
	}
	seen[id] = true
	rep.Trees++
	t, err := r.LoadTree(ctx, id)
	if err != nil {
		rep.Errors = append(rep.Errors, fmt.Sprintf("snapshot %s: directory %s cannot be read: %v", sn.ID.Short(), dir, err))
		return
	}
	for _, n := range t.Nodes {
		p := filepath.Join(dir, n.Name)
		switch n.Kind {
		case tree.Dir:
			checkTree(ctx, r, sn, p, n.Subtree, seen, damaged, rep)
		case tree.File:
			var problems []string
			if n.ContentError != "" {
				problems = append(problems, n.ContentError)
			}
			for _, e := range n.Content {
				if e.Hole {
					continue
				}
				if why, ok := damaged[e.ID]; ok {
					problems = append(problems, fmt.Sprintf("chunk %s %s", e.ID.Short(), why))
				} else if ok, err := r.HasBlob(e.ID); err != nil || !ok {
					problems = append(problems, fmt.Sprintf("chunk %s is not in the index", e.ID.Short()))
				}
			}
			if len(problems) > 0 {
				sort.Strings(problems)
				rep.Errors = append(rep.Errors, fmt.Sprintf("snapshot %s: file %s cannot be restored: %s", sn.ID.Short(), p, strings.Join(problems, "; ")))
			}
		}
	}
}

// undecodable records blob bid of pack id that does not decode (err).
// indexed says whether the index locates the blob at this copy: a copy it
// does not use (left out by `repair index --read-data`, or a second copy)
// is harmless until prune removes it; a used copy for which a degraded
// repository holds another that decodes (a later backup stored it again)
// costs nothing restorable; otherwise the files that need the blob are
// damaged.
func undecodable(ctx context.Context, r *repo.Repository, id, bid blob.ID, indexed bool, err error, bad map[blob.ID]string, rep *CheckReport) {
	if !indexed {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("pack %s: %v (a copy the index does not use; `stasis prune` removes it)", id.Short(), err))
		return
	}
	if deg, derr := r.Degraded(ctx); derr == nil && deg {
		if ok, uerr := r.BlobUsable(ctx, bid); uerr == nil && ok {
			rep.Errors = append(rep.Errors, fmt.Sprintf("pack %s: %v; another stored copy decodes and restore reads it (`stasis repair index --read-data` drops this one)", id.Short(), err))
			return
		}
	}
	bad[bid] = fmt.Sprintf("corrupt in pack %s", id.Short())
	if errors.Is(err, repo.ErrDictionaryMissing) {
		bad[bid] = fmt.Sprintf("in pack %s needs a compression dictionary the repository does not have", id.Short())
	}
	rep.Errors = append(rep.Errors, fmt.Sprintf("pack %s: %v", id.Short(), err))
}

// checkIndexFiles reads every index file of the repository (the truth this
// client's cache was built from, and what any other client will read) and
// reports one that does not decode, and a pack the cache holds that no index
// file names.
func checkIndexFiles(ctx context.Context, r *repo.Repository, rep *CheckReport) error {
	names, err := r.IndexFiles(ctx)
	if err != nil {
		return err
	}
	named := map[blob.ID]bool{}
	for _, n := range names {
		packs, err := r.LoadIndexFile(ctx, n)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			rep.Errors = append(rep.Errors, fmt.Sprintf("%v (another client cannot build its index from it; run `stasis repair index`)", err))
			continue
		}
		for _, p := range packs {
			named[p.ID] = true
		}
	}
	return r.EachPack(func(id blob.ID, _ repo.PackInfo) error {
		if !named[id] {
			rep.Errors = append(rep.Errors, fmt.Sprintf("pack %s is in this client's index cache but in no index file of the repository (run `stasis repair index`)", id))
		}
		return nil
	})
}
