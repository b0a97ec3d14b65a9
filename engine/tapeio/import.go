package tapeio

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/tape"
	"github.com/stasisbackup/stasis/repo"
)

// ImportOptions tune Import.
type ImportOptions struct {
	Read ReadOptions
	// Open opens the imported repository to rebuild its index (it needs
	// the password of an encrypted repository).
	Open repo.OpenOptions
	// Log, when set, receives one line per volume and phase.
	Log io.Writer
}

// ImportResult says what Import did.
type ImportResult struct {
	SetID string
	// VolumesRead lists the volumes read, MissingVolumes the volumes of the
	// set that were not given.
	VolumesRead, MissingVolumes []int
	// Files and Bytes count the repository files written.
	Files int
	Bytes int64
	// Bad lists the members that were damaged or missing on the volumes
	// given; MissingMembers the members on volumes not given.
	Bad            []tape.Problem
	MissingMembers []tape.Entry
	// Unverified lists volumes whose catalog is known nowhere (truncated,
	// and the next volume was not given): their packs were checked by
	// reading them whole while rebuilding the index.
	Unverified []int
	Rebuild    *repo.RebuildReport
}

// Complete reports whether every member of the set was imported intact.
func (r *ImportResult) Complete() bool {
	return len(r.MissingVolumes) == 0 && len(r.Bad) == 0 && len(r.MissingMembers) == 0 &&
		(r.Rebuild == nil || len(r.Rebuild.Damaged) == 0)
}

// ErrImportIncomplete means Import built a repository, but members were
// missing or damaged; ImportResult says which.
var ErrImportIncomplete = errors.New("tape import is incomplete")

// Import builds a repository in storage st (which must not hold one) from the
// volume files paths, given in any order: it writes every intact member in
// volume order (a later copy of a name replaces an earlier one), records
// the set's catalogs under repo.TapeDir, and rebuilds the index. Missing
// volumes and damaged members are listed in the result, and the error then
// matches ErrImportIncomplete; whatever was intact is imported.
func Import(ctx context.Context, st repo.Storage, paths []string, o ImportOptions) (*ImportResult, error) {
	dir := st.Location()
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}
	if ok, err := repo.ObjectExists(ctx, st, "config"); err != nil {
		return nil, fmt.Errorf("tape import into %s: %w", dir, err)
	} else if ok {
		return nil, fmt.Errorf("tape import into %s: %w; import into a new, empty directory", dir, repo.ErrExists)
	}
	vols, err := openHeads(ctx, paths, o.Read)
	if err != nil {
		return nil, fmt.Errorf("tape import: %w", err)
	}
	known := catalogs(ctx, vols)
	if o.Read.Progress != nil {
		cats := make([]*tape.Catalog, len(vols))
		for i, v := range vols {
			if c, ok := known[v.Head.Label.Volume]; ok {
				cats[i] = &c
			}
		}
		setTotals(o.Read.Progress, cats)
	}
	res := &ImportResult{SetID: vols[0].Head.Label.SetID}
	var full []*tape.Volume
	for _, v := range vols {
		seq := v.Head.Label.Volume
		var ref *tape.Catalog
		if c, ok := known[seq]; ok {
			ref = &c
		} else {
			res.Unverified = append(res.Unverified, seq)
		}
		logf("reading volume %d (%s)", seq, v.Path)
		rep, err := readVolume(ctx, v, o.Read, ref, func(e tape.Entry, r io.Reader) error {
			if !repo.ValidFileName(e.Name) {
				return nil // reported as not in the catalog, or skipped
			}
			var n int64
			err := repo.ImportFile(ctx, st, e.Name, func(w io.Writer) error {
				var err error
				n, err = io.Copy(w, r)
				return err
			})
			if err == nil {
				res.Files++
				res.Bytes += n
			}
			return err // ErrChecksum and ErrUnexpectedEOF: the report names the member
		})
		if rep == nil {
			return res, fmt.Errorf("tape import: volume %s: %w", v.Path, err)
		}
		res.VolumesRead = append(res.VolumesRead, seq)
		for _, p := range rep.Bad {
			if p.Name != "" || !rep.EndOfMedia {
				res.Bad = append(res.Bad, tape.Problem{Name: p.Name, Problem: fmt.Sprintf("volume %d: %s", seq, p.Problem)})
			}
		}
		if rep.Volume.Truncated && !rep.EndOfMedia && len(rep.Bad) == 0 {
			res.Bad = append(res.Bad, tape.Problem{Problem: fmt.Sprintf("volume %d (%s) is truncated in %q: %s", seq, v.Path, rep.Volume.TruncatedIn, rep.Volume.TruncatedBy)})
		}
		vol := rep.Volume
		if vol.Catalog == nil && ref != nil {
			vol.Catalog = ref
		}
		full = append(full, vol)
	}
	set, err := tape.MergeCatalogs(full...)
	if err != nil {
		return res, fmt.Errorf("tape import: %w", err)
	}
	res.MissingVolumes, res.MissingMembers = set.Missing, set.MissingMembers()
	for seq, c := range set.Catalogs {
		data, err := json.Marshal(c)
		if err != nil {
			return res, err
		}
		name := fmt.Sprintf("%s/%s/%06d.json", repo.TapeDir, c.SetID, seq)
		if err := repo.ImportFile(ctx, st, name, func(w io.Writer) error { _, err := w.Write(append(data, '\n')); return err }); err != nil {
			return res, fmt.Errorf("tape import: %w", err)
		}
	}
	if ok, err := repo.ObjectExists(ctx, st, "config"); err != nil || !ok {
		return res, fmt.Errorf("tape import: no repository config on the volumes given (%w); give the last volume of the set", ErrImportIncomplete)
	}
	logf("rebuilding the index")
	oo := o.Open
	oo.Exclusive = true
	r, err := repo.Open(ctx, st, oo)
	if err != nil {
		return res, fmt.Errorf("tape import: open the imported repository: %w", err)
	}
	defer r.Close()
	res.Rebuild, err = r.RebuildIndex(ctx, repo.RebuildOptions{ReadData: len(res.Unverified) > 0, Log: engine.LineLogger(o.Log)})
	if err != nil {
		return res, fmt.Errorf("tape import: rebuild the index: %w", err)
	}
	if !res.Complete() {
		return res, fmt.Errorf("tape import into %s: %w", dir, ErrImportIncomplete)
	}
	return res, nil
}
