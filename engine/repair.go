package engine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// RepairSnapshotsOptions tune RepairSnapshots.
type RepairSnapshotsOptions struct {
	// Forget removes each original snapshot once its repaired copy is saved.
	Forget bool
	// DryRun reports the damage and changes nothing.
	DryRun bool
	// Log, when set, receives one record per repaired snapshot.
	Log *slog.Logger
}

// RepairedSnapshot is a snapshot that referenced missing data.
type RepairedSnapshot struct {
	Old     blob.ID
	New     blob.ID  // zero with DryRun
	Damaged []string // paths marked damaged in the new snapshot
	Forgot  bool     // the original was removed
	// LostDicts are the missing or damaged compression dictionaries the
	// original needed ("<id>, which is missing (…)"); the new snapshot does
	// not (every blob it names decodes) and records the ones it needs now.
	LostDicts []string `json:",omitempty"`
}

// RepairSnapshotsReport says what RepairSnapshots did.
type RepairSnapshotsReport struct {
	Checked  int
	Repaired []RepairedSnapshot
	// Files lists snapshot files that were fixed: rewritten from the index's
	// copy, or moved to damaged/ when no good copy exists.
	Files []string
}

// RepairSnapshots makes every snapshot restorable again, as far as the data
// allows. A snapshot file that does not decode is rewritten from the
// index's copy when that one is intact, else moved to damaged/. A snapshot
// that references a tree or chunk that is not indexed or whose pack file is
// gone is copied to a new snapshot in which each affected file is marked
// unreadable (tree.Unreadable, its content dropped, Error saying why) and
// each lost directory is empty and marked unreadable; everything else is
// unchanged and deduplicates. The new snapshot is tagged "repaired" and lists
// the damaged paths in its summary. The original is kept unless Forget.
// Run `repair index` first when packs were lost or corrupted. The caller
// must hold an exclusive lock.
func RepairSnapshots(ctx context.Context, r *repo.Repository, o RepairSnapshotsOptions) (*RepairSnapshotsReport, error) {
	log := orDiscard(o.Log)
	rep := &RepairSnapshotsReport{}
	if err := repairSnapshotFiles(ctx, r, o.DryRun, rep); err != nil {
		return rep, err
	}
	snaps, bad, err := r.Snapshots(ctx)
	if err != nil {
		return rep, err
	}
	if len(bad) > 0 && !o.DryRun {
		return rep, fmt.Errorf("repair snapshots: %d records still do not decode (first: %v)", len(bad), bad[0])
	}
	degraded, err := r.Degraded(ctx)
	if err != nil {
		return rep, err
	}
	rw := &rewriter{r: r, dry: o.DryRun, packOK: map[blob.ID]bool{}, degraded: degraded}
	for _, sn := range snaps {
		rep.Checked++
		rw.damaged = nil
		root, err := rw.tree(ctx, "/", sn.Tree)
		if err != nil {
			return rep, err
		}
		// A snapshot that needs a lost dictionary is rewritten even when
		// every blob it names decodes (a backup stored them again): the
		// copy records the dictionaries it needs now, so check passes.
		var lostDicts []string
		if degraded {
			lostDicts = r.SnapshotLostDicts(sn)
		}
		if len(rw.damaged) == 0 && len(lostDicts) == 0 {
			continue
		}
		sort.Strings(rw.damaged)
		rs := RepairedSnapshot{Old: sn.ID, Damaged: rw.damaged, LostDicts: lostDicts}
		if !o.DryRun {
			if err := r.Flush(ctx); err != nil {
				return rep, err
			}
			nsn := *sn
			nsn.Tree = root
			nsn.Tags = append(append([]string{}, sn.Tags...), "repaired")
			nsn.Summary.Problems = append([]repo.Problem{}, sn.Summary.Problems...)
			for _, p := range rw.damaged {
				nsn.Summary.Problems = append(nsn.Summary.Problems, repo.Problem{Path: p, Kind: repo.ProblemDamaged,
					Error: fmt.Sprintf("data lost from the repository; marked by `stasis repair snapshots` of snapshot %s", sn.ID.Short())})
			}
			id, err := r.SaveSnapshot(ctx, &nsn)
			if err != nil {
				return rep, err
			}
			rs.New = id
			if o.Forget {
				if err := r.RemoveSnapshot(ctx, sn.ID); err != nil {
					return rep, err
				}
				rs.Forgot = true
			}
			log.Info(fmt.Sprintf("snapshot %s: %d damaged paths; repaired copy %s", sn.ID.Short(), len(rw.damaged), id.Short()),
				"snapshot", sn.ID.String(), "damaged", len(rw.damaged), "repaired", id.String())
		}
		rep.Repaired = append(rep.Repaired, rs)
	}
	return rep, nil
}

// repairSnapshotFiles fixes snapshot files that do not decode: from the
// client's cached copy when it has an intact one (replaced atomically, by
// one Put of the same name), or else by moving them to damaged/.
func repairSnapshotFiles(ctx context.Context, r *repo.Repository, dry bool, rep *RepairSnapshotsReport) error {
	ids, _, err := r.SnapshotIDs(ctx)
	if err != nil {
		return err
	}
	for _, id := range ids {
		name := repo.SnapshotName(id)
		stored, cached, err := r.SnapshotCopies(ctx, id)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since it was listed
		}
		if err != nil && !errors.Is(err, repo.ErrTooLarge) {
			return fmt.Errorf("read %s: %w", name, err)
		}
		if err == nil {
			if _, err := r.DecodeSnapshotFile(id, stored); err == nil {
				continue
			}
		}
		good := cached
		if good != nil {
			if _, err := r.DecodeSnapshotFile(id, good); err != nil {
				good = nil
			}
		}
		switch {
		case good != nil:
			rep.Files = append(rep.Files, name+": rewritten from this client's cached copy")
			if !dry {
				if err := r.PutSnapshotFile(ctx, id, good); err != nil {
					return err
				}
			}
		default:
			rep.Files = append(rep.Files, name+": no intact copy, moved to "+repo.DamagedDir+"/")
			if !dry {
				if _, err := r.MoveToDamaged(ctx, name); err != nil {
					return err
				}
			}
		}
	}
	return ctx.Err()
}

// rewriter copies trees, marking what cannot be restored.
type rewriter struct {
	r        *repo.Repository
	dry      bool
	packOK   map[blob.ID]bool
	damaged  []string
	degraded bool // a compression dictionary is lost: blobs must decode to count (repo.Degraded)
}

// usable reports whether blob id is indexed in a pack that exists (and,
// in a degraded repository, decodes).
func (rw *rewriter) usable(id blob.ID) (bool, error) {
	loc, ok, err := rw.r.LookupBlob(context.Background(), id)
	if err != nil || !ok {
		return false, err
	}
	if rw.degraded {
		// Indexed is not enough: a blob compressed with a lost dictionary
		// does not decode (BlobUsable decodes it, or another stored copy).
		return rw.r.BlobUsable(context.Background(), id)
	}
	exists, seen := rw.packOK[loc.Pack]
	if !seen {
		exists, err = rw.r.PackExists(context.Background(), loc.Pack)
		if err != nil {
			return false, err
		}
		rw.packOK[loc.Pack] = exists
	}
	return exists, nil
}

// tree returns the id of the repaired copy of tree id (id itself when
// nothing below it is damaged).
func (rw *rewriter) tree(ctx context.Context, dir string, id blob.ID) (blob.ID, error) {
	if err := ctx.Err(); err != nil {
		return id, err
	}
	var t *tree.Tree
	ok, err := rw.usable(id)
	if err != nil {
		return id, err
	}
	if ok {
		t, err = rw.r.LoadTree(ctx, id)
		if err != nil && !errors.Is(err, repo.ErrCorruptBlob) && !errors.Is(err, tree.ErrCorrupt) {
			return id, err
		}
	}
	if t == nil {
		rw.damaged = append(rw.damaged, dir)
		return rw.save(ctx, &tree.Tree{})
	}
	changed := false
	for i := range t.Nodes {
		n := &t.Nodes[i]
		p := filepath.Join(dir, n.Name)
		switch n.Kind {
		case tree.Dir:
			before := len(rw.damaged)
			sub, err := rw.tree(ctx, p, n.Subtree)
			if err != nil {
				return id, err
			}
			if sub != n.Subtree {
				changed = true
				n.Subtree = sub
				if len(rw.damaged) > before && rw.damaged[before] == p {
					n.Flags |= tree.Unreadable
					n.Error = "directory contents lost from the repository (stasis repair snapshots)"
				}
			}
		case tree.File:
			var lost []string
			if n.ContentError != "" {
				lost = append(lost, "its extent list ("+n.ContentError+")")
			}
			for _, e := range n.Content {
				if e.Hole {
					continue
				}
				ok, err := rw.usable(e.ID)
				if err != nil {
					return id, err
				}
				if !ok {
					lost = append(lost, e.ID.Short())
				}
			}
			if len(lost) > 0 {
				changed = true
				rw.damaged = append(rw.damaged, p)
				n.Flags |= tree.Unreadable
				n.Content = nil
				n.Error = fmt.Sprintf("content lost from the repository (chunks %s); marked by stasis repair snapshots", strings.Join(lost, ", "))
			}
		}
	}
	if !changed {
		return id, nil
	}
	return rw.save(ctx, t)
}

func (rw *rewriter) save(ctx context.Context, t *tree.Tree) (blob.ID, error) {
	if rw.dry {
		data, err := t.Encode()
		if err != nil {
			return blob.ID{}, err
		}
		return rw.r.Hash(data), nil
	}
	id, _, err := rw.r.SaveTree(ctx, t)
	return id, err
}
