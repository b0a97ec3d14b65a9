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
	"sort"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/tape"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
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
	members, skipped, err := exportMembers(ctx, r, onSet)
	if err != nil {
		return nil, err
	}
	res.Skipped = skipped
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
// change).
func exportMembers(ctx context.Context, r *repo.Repository, skip map[string]bool) ([]tape.Member, int, error) {
	member := func(name string, size int64) tape.Member {
		return tape.Member{Name: name, Size: size, Open: func(ctx context.Context) (io.ReadCloser, error) {
			return r.OpenObject(ctx, name)
		}}
	}
	sized := func(name string) (tape.Member, error) {
		size, err := r.ObjectSize(ctx, name)
		if err != nil {
			return tape.Member{}, fmt.Errorf("tape export: %w", err)
		}
		return member(name, size), nil
	}
	var packs, out []tape.Member
	skipped := 0
	// Snapshots first, then packs: every pack a listed snapshot needs was
	// stored before the snapshot, so a backup committing meanwhile cannot
	// make a listed snapshot's pack look missing.
	snaps, bad, err := r.Snapshots(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("tape export: %w", err)
	}
	havePack := map[string]bool{}
	err = r.EachPackFile(ctx, func(id blob.ID, size int64) error {
		name := repo.PackName(id)
		havePack[name] = true
		if skip[name] {
			skipped++
			return nil
		}
		packs = append(packs, member(name, size))
		return nil
	}, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("tape export: list packs: %w", err)
	}
	sort.Slice(packs, func(i, j int) bool { return packs[i].Name < packs[j].Name })
	out = append(out, packs...)

	if len(bad) > 0 {
		return nil, 0, fmt.Errorf("tape export: %d snapshot records cannot be read (first: %v); run `stasis check` and `stasis repair index`", len(bad), bad[0])
	}
	for _, sn := range snaps {
		name := repo.SnapshotName(sn.ID)
		if skip[name] {
			skipped++
			continue
		}
		m, err := sized(name)
		if err != nil {
			return nil, 0, err
		}
		m.Time = sn.Time
		if m.Needs, err = neededPacks(ctx, r, sn); err != nil {
			return nil, 0, err
		}
		for _, p := range m.Needs {
			if havePack[p] {
				continue
			}
			// Not listed: an object store's listing may lag behind a
			// backup that just committed. Ask for the object itself.
			size, err := r.ObjectSize(ctx, p)
			if err != nil {
				return nil, 0, fmt.Errorf("tape export: snapshot %s needs %s, which is not in the repository (%v); run `stasis check`", sn.ID.Short(), p, err)
			}
			havePack[p] = true
			if !skip[p] {
				out = append(out, member(p, size))
			}
		}
		out = append(out, m)
	}
	m, err := sized("config")
	if err != nil {
		return nil, 0, err
	}
	out = append(out, m)
	keys, err := r.KeyNames(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("tape export: %w", err)
	}
	for _, name := range keys {
		if !repo.ValidFileName(name) {
			continue
		}
		m, err := sized(name)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, m)
	}
	// Compression dictionaries are needed to decode blobs; they are
	// immutable and content-addressed like packs, so an incremental export
	// skips those already on the set.
	dicts, err := r.DictNames(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("tape export: list compression dictionaries: %w", err)
	}
	for _, name := range dicts {
		if skip[name] {
			skipped++
			continue
		}
		m, err := sized(name)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, m)
	}
	return out, skipped, nil
}

// neededPacks returns the sorted pack file names holding the trees and
// chunks of snapshot sn.
func neededPacks(ctx context.Context, r *repo.Repository, sn *repo.Snapshot) ([]string, error) {
	packs := map[string]bool{}
	add := func(id blob.ID) error {
		loc, ok, err := r.LookupBlob(ctx, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("blob %s of snapshot %s is not in the index; run `stasis check`", id.Short(), sn.ID.Short())
		}
		packs[repo.PackName(loc.Pack)] = true
		return nil
	}
	if err := add(sn.Tree); err != nil {
		return nil, fmt.Errorf("tape export: %w", err)
	}
	err := engine.Walk(ctx, r, sn, "", func(_ string, n *tree.Node) error {
		if n.Kind == tree.Dir {
			return add(n.Subtree)
		}
		for _, id := range n.Lists {
			if err := add(id); err != nil {
				return err
			}
		}
		for _, e := range n.Content {
			if !e.Hole {
				if err := add(e.ID); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tape export: walk snapshot %s: %w", sn.ID.Short(), err)
	}
	out := make([]string, 0, len(packs))
	for p := range packs {
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}
