package tapeio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/stasisbackup/stasis/engine/tape"
	"github.com/stasisbackup/stasis/repo"
)

// ImportOptions tune Import.
type ImportOptions struct {
	Read ReadOptions
	// Open opens the imported repository to rebuild its index (it needs
	// the password of an encrypted repository).
	Open repo.OpenOptions
	// Log, when set, receives one record per volume and phase, and those
	// of rebuilding the index; nil logs nothing.
	Log *slog.Logger
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
// the set's catalogs under CatalogDir, and rebuilds the index. Missing
// volumes and damaged members are listed in the result, and the error then
// matches ErrImportIncomplete; whatever was intact is imported.
func Import(ctx context.Context, st repo.Storage, paths []string, o ImportOptions) (*ImportResult, error) {
	dir := st.Location()
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
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
		setTotals(o.Read.Progress, knownCatalogs(vols, known))
	}
	res := &ImportResult{SetID: vols[0].Head.Label.SetID}
	var full []*tape.Volume
	for _, v := range vols {
		vol, err := importVolume(ctx, st, v, known, o.Read, log, res)
		if err != nil {
			return res, err
		}
		full = append(full, vol)
	}
	if err := recordSet(ctx, st, full, res); err != nil {
		return res, err
	}
	if ok, err := repo.ObjectExists(ctx, st, "config"); err != nil || !ok {
		return res, fmt.Errorf("tape import: no repository config on the volumes given (%w); give the last volume of the set", ErrImportIncomplete)
	}
	log.Info("rebuilding the index")
	if res.Rebuild, err = rebuildIndex(ctx, st, o, log, len(res.Unverified) > 0); err != nil {
		return res, err
	}
	if !res.Complete() {
		return res, fmt.Errorf("tape import into %s: %w", dir, ErrImportIncomplete)
	}
	return res, nil
}

// knownCatalogs returns the catalog of each of vols from known, nil where
// it is unknown.
func knownCatalogs(vols []*VolumeFile, known map[int]tape.Catalog) []*tape.Catalog {
	cats := make([]*tape.Catalog, len(vols))
	for i, v := range vols {
		if c, ok := known[v.Head.Label.Volume]; ok {
			cats[i] = &c
		}
	}
	return cats
}

// importVolume reads volume v whole, checking it against its known catalog,
// and stores every repository file on it in st. It records in res what it
// read and found bad, and returns what is on the volume, with the known
// catalog where the volume lacks its own; the error is for a volume that
// cannot be read or a file that cannot be stored.
func importVolume(ctx context.Context, st repo.Storage, v *VolumeFile, known map[int]tape.Catalog, o ReadOptions, log *slog.Logger, res *ImportResult) (*tape.Volume, error) {
	seq := v.Head.Label.Volume
	var ref *tape.Catalog
	if c, ok := known[seq]; ok {
		ref = &c
	} else {
		res.Unverified = append(res.Unverified, seq)
	}
	log.Info(fmt.Sprintf("reading volume %d (%s)", seq, v.Path), "volume", seq, "path", v.Path)
	rep, err := readVolume(ctx, v, o, ref, func(e tape.Entry, r io.Reader) error {
		if !repoFile(e.Name) {
			return nil // reported as not in the catalog, or skipped
		}
		n, err := importMember(ctx, st, e.Name, r)
		if err == nil {
			res.Files++
			res.Bytes += n
		}
		return err // ErrChecksum and ErrUnexpectedEOF: the report names the member
	})
	if rep == nil {
		return nil, fmt.Errorf("tape import: volume %s: %w", v.Path, err)
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
	return vol, nil
}

// recordSet merges the catalogs of the volumes read, records every catalog
// of the set in st under CatalogDir, and sets res.MissingVolumes and
// res.MissingMembers.
func recordSet(ctx context.Context, st repo.Storage, vols []*tape.Volume, res *ImportResult) error {
	set, err := tape.MergeCatalogs(vols...)
	if err != nil {
		return fmt.Errorf("tape import: %w", err)
	}
	res.MissingVolumes, res.MissingMembers = set.Missing, set.MissingMembers()
	for seq, c := range set.Catalogs {
		data, err := encodeCatalog(c)
		if err != nil {
			return err
		}
		name := fmt.Sprintf("%s/%s/%06d.json", CatalogDir, c.SetID, seq)
		if err := importFile(ctx, st, name, func(w io.Writer) error { _, err := w.Write(data); return err }); err != nil {
			return fmt.Errorf("tape import: %w", err)
		}
	}
	return nil
}

// rebuildIndex opens the imported repository in st and rebuilds its index,
// reading every pack whole when readData is set.
func rebuildIndex(ctx context.Context, st repo.Storage, o ImportOptions, log *slog.Logger, readData bool) (*repo.RebuildReport, error) {
	oo := o.Open
	oo.Exclusive = true
	r, err := repo.Open(ctx, st, oo)
	if err != nil {
		return nil, fmt.Errorf("tape import: open the imported repository: %w", err)
	}
	defer r.Close()
	rep, err := r.RebuildIndex(ctx, repo.RebuildOptions{ReadData: readData, Log: log})
	if err != nil {
		return nil, fmt.Errorf("tape import: rebuild the index: %w", err)
	}
	return rep, nil
}
