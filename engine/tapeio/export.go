// Package tapeio connects tape volumes (package engine/tape, which knows
// nothing of repositories) with stasis repositories: Export writes a
// repository's files to a tape set and records the catalogs in the
// repository, Import rebuilds a repository from volumes, and Restore
// restores a snapshot straight from volumes, spooling only the packs it
// needs.
//
// Volumes carry the repository's files byte for byte (config, keys/<id>,
// packs/xx/<id>, snapshots/<id>), so an encrypted repository stays
// encrypted on tape. Members are written packs first, then snapshot files
// (each with its time and the packs it needs as a catalog note), then
// config and key files: a snapshot is never on an earlier volume than a
// pack it needs (engine/tape checks it).
package tapeio

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/tape"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

// ExportOptions tune Export.
type ExportOptions struct {
	// Write passes block size, volume size, label, clock and progress to
	// tape.WriteSet; RepositoryID and SetID are set by Export.
	Write tape.WriteOptions
	// Incremental writes only the packs and snapshot files that are not on
	// a volume of the current set (the set written to last), appending
	// volumes to it. Without a recorded set it writes a new full set.
	Incremental bool
	// NewSet starts a new set even with Incremental.
	NewSet bool
	// Progress, when set, counts the members written (files) and their
	// sizes, of all the export writes (its totals); a member written again
	// on the next volume after end of media counts twice.
	Progress *engine.Counts
}

// ExportResult says what Export wrote.
type ExportResult struct {
	SetID    string
	Appended bool // volumes were appended to an existing set
	// Catalogs of the volumes written (also recorded in the repository).
	Catalogs []tape.Catalog
	// Members and Bytes count the payload written; Skipped counts packs
	// and snapshot files already on the set.
	Members, Skipped int
	Bytes            int64
	// Problems name what the catalog could not plan from: extent lists
	// that cannot be read, whose files' chunks are left out of their
	// snapshots' needs. The volumes still hold every pack (the damage
	// too): the export is a faithful copy, of a repository to check.
	Problems []string
}

// Export writes the repository r to new volumes on dev and records their
// catalogs in the repository (CatalogDir), also when it fails part way:
// the volumes completed so far are then recorded. The caller holds a shared
// repository lock.
func Export(ctx context.Context, r *repo.Repository, dev tape.Device, o ExportOptions) (*ExportResult, error) {
	sets, err := RecordedSets(ctx, r)
	if err != nil {
		return nil, err
	}
	res := &ExportResult{}
	var earlier []tape.Catalog
	onSet := map[string]bool{}
	if cur := CurrentSet(sets); o.Incremental && !o.NewSet && cur != "" {
		earlier = sets[cur]
		res.SetID, res.Appended = cur, true
		for _, c := range earlier {
			for _, e := range c.Members {
				onSet[e.Name] = true
			}
		}
	}
	members, skipped, problems, err := exportMembers(ctx, r, onSet)
	if err != nil {
		return nil, err
	}
	res.Skipped, res.Problems = skipped, problems
	wo := o.Write
	wo.RepositoryID = r.Config().ID
	wo.SetID = res.SetID
	if p := o.Progress; p != nil {
		var total int64
		for _, m := range members {
			total += m.Size
		}
		p.SetTotals(int64(len(members)), total)
		if next := wo.Progress; next != nil {
			wo.Progress = func(volume int, member string, size int64) {
				p.Add(1, size)
				next(volume, member, size)
			}
		} else {
			wo.Progress = func(_ int, _ string, size int64) { p.Add(1, size) }
		}
	}
	cats, werr := tape.WriteSet(ctx, dev, wo, members, earlier)
	for _, c := range cats {
		res.SetID = c.SetID
		if err := recordCatalog(ctx, r, c); err != nil {
			return res, fmt.Errorf("%w (the volumes were written; record the catalogs again by exporting anew with --new-set)", err)
		}
		res.Catalogs = append(res.Catalogs, c)
		for _, e := range c.Members {
			res.Members++
			res.Bytes += e.Size
		}
	}
	if werr != nil {
		return res, fmt.Errorf("tape export: %w", werr)
	}
	return res, nil
}

// exportMembers lists the repository files to write: packs, snapshot files,
// then config, key files and compression dictionaries; names in skip are
// left out (config and keys are always written: they are small and keys
// change). problems are the pack finder's (ExportResult.Problems).
func exportMembers(ctx context.Context, r *repo.Repository, skip map[string]bool) ([]tape.Member, int, []string, error) {
	l := &memberList{r: r, skip: skip, havePack: map[string]bool{}, needs: newPackFinder(r)}
	// Snapshots first, then packs: every pack a listed snapshot needs was
	// stored before the snapshot, so a backup committing meanwhile cannot
	// make a listed snapshot's pack look missing.
	snaps, bad, err := r.Snapshots(ctx)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("tape export: %w", err)
	}
	if err := l.addPacks(ctx); err != nil {
		return nil, 0, nil, err
	}
	if len(bad) > 0 {
		return nil, 0, nil, fmt.Errorf("tape export: %d snapshot records cannot be read (first: %v); run `stasis check` and `stasis repair index`", len(bad), bad[0])
	}
	for _, sn := range snaps {
		if err := l.addSnapshot(ctx, sn); err != nil {
			return nil, 0, nil, err
		}
	}
	if err := l.addFiles(ctx, []string{"config"}, false); err != nil {
		return nil, 0, nil, err
	}
	keys, err := r.KeyNames(ctx)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("tape export: %w", err)
	}
	if err := l.addFiles(ctx, slices.DeleteFunc(keys, func(name string) bool { return !repo.ValidFileName(name) }), false); err != nil {
		return nil, 0, nil, err
	}
	// Compression dictionaries are needed to decode blobs; they are
	// immutable and content-addressed like packs, so an incremental export
	// skips those already on the set.
	dicts, err := r.DictNames(ctx)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("tape export: list compression dictionaries: %w", err)
	}
	if err := l.addFiles(ctx, dicts, true); err != nil {
		return nil, 0, nil, err
	}
	return l.out, l.skipped, l.needs.problems, nil
}

// memberList collects the members of an export, in order.
type memberList struct {
	r        *repo.Repository
	skip     map[string]bool // names already on the set
	out      []tape.Member
	skipped  int             // names left out because they are in skip
	havePack map[string]bool // pack file names known to be stored
	needs    *packFinder     // the packs each snapshot needs
}

// member returns the member of repository file name, of size bytes.
func (l *memberList) member(name string, size int64) tape.Member {
	return tape.Member{Name: name, Size: size, Open: func(ctx context.Context) (io.ReadCloser, error) {
		return l.r.OpenObject(ctx, name)
	}}
}

// sized returns the member of repository file name, asking for its size.
func (l *memberList) sized(ctx context.Context, name string) (tape.Member, error) {
	size, err := l.r.ObjectSize(ctx, name)
	if err != nil {
		return tape.Member{}, fmt.Errorf("tape export: %w", err)
	}
	return l.member(name, size), nil
}

// addPacks adds every pack file that is not in skip, sorted by name.
func (l *memberList) addPacks(ctx context.Context) error {
	var packs []tape.Member
	err := l.r.EachPackFile(ctx, func(id blob.ID, size int64) error {
		name := repo.PackName(id)
		l.havePack[name] = true
		if l.skip[name] {
			l.skipped++
			return nil
		}
		packs = append(packs, l.member(name, size))
		return nil
	}, nil)
	if err != nil {
		return fmt.Errorf("tape export: list packs: %w", err)
	}
	sort.Slice(packs, func(i, j int) bool { return packs[i].Name < packs[j].Name })
	l.out = append(l.out, packs...)
	return nil
}

// addSnapshot adds the snapshot file of sn, unless it is in skip, with its
// time and the packs it needs as its note; a needed pack the pack listing
// did not show is added before it.
func (l *memberList) addSnapshot(ctx context.Context, sn *repo.Snapshot) error {
	name := repo.SnapshotName(sn.ID)
	if l.skip[name] {
		l.skipped++
		return nil
	}
	m, err := l.sized(ctx, name)
	if err != nil {
		return err
	}
	m.Time = sn.Time
	if m.Needs, err = l.needs.snapshot(ctx, sn); err != nil {
		return err
	}
	for _, p := range m.Needs {
		if l.havePack[p] {
			continue
		}
		// Not listed: an object store's listing may lag behind a
		// backup that just committed. Ask for the object itself.
		size, err := l.r.ObjectSize(ctx, p)
		if err != nil {
			return fmt.Errorf("tape export: snapshot %s needs %s, which is not in the repository (%v); run `stasis check`", sn.ID.Short(), p, err)
		}
		l.havePack[p] = true
		if !l.skip[p] {
			l.out = append(l.out, l.member(p, size))
		}
	}
	l.out = append(l.out, m)
	return nil
}

// addFiles adds the repository files names, leaving out those in skip when
// skippable.
func (l *memberList) addFiles(ctx context.Context, names []string, skippable bool) error {
	for _, name := range names {
		if skippable && l.skip[name] {
			l.skipped++
			continue
		}
		m, err := l.sized(ctx, name)
		if err != nil {
			return err
		}
		l.out = append(l.out, m)
	}
	return nil
}
