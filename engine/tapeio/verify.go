package tapeio

import (
	"context"
	"os"

	"github.com/stasisbackup/stasis/engine/tape"
)

// VolumeReport is the outcome of verifying one volume.
type VolumeReport struct {
	Path   string         `json:"path"`
	SetID  string         `json:"set_id"`
	Volume int            `json:"volume"`
	OK     bool           `json:"ok"`
	Good   int            `json:"good"` // members that match the catalogs
	Bad    []tape.Problem `json:"bad,omitempty"`
	Error  string         `json:"error,omitempty"`
	Note   string         `json:"note,omitempty"`
}

// Verify reads each volume file whole and checks every member against its
// own catalog and a reference catalog: the one recorded (recorded, by set
// id, from RecordedSets; may be nil) or else a copy carried by another of
// the volumes given. A volume that cannot be read at all is a report with
// Error set; the error returned is only for a cancelled context.
func Verify(ctx context.Context, paths []string, o ReadOptions, recorded map[string][]tape.Catalog) ([]VolumeReport, error) {
	heads := make([]*tape.Volume, len(paths)) // nil: unreadable
	refs := referenceCatalogs{cats: map[volumeKey]tape.Catalog{}, fromRepo: map[volumeKey]bool{}}
	for i, p := range paths {
		if f, err := os.Open(p); err == nil {
			if h, err := tape.ReadHead(ctx, f, o.tape()); err == nil {
				heads[i] = h
				for _, c := range h.Earlier {
					refs.cats[volumeKey{c.SetID, c.Volume}] = c
				}
			}
			f.Close()
		}
	}
	for set, cats := range recorded {
		for _, c := range cats {
			refs.cats[volumeKey{set, c.Volume}] = c
			refs.fromRepo[volumeKey{set, c.Volume}] = true
		}
	}
	if o.Progress != nil {
		setTotals(o.Progress, refs.ofHeads(ctx, paths, heads))
	}
	var out []VolumeReport
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		out = append(out, verifyVolume(ctx, p, o, refs))
	}
	return out, nil
}

// volumeKey names a volume of a set.
type volumeKey struct {
	set string
	vol int
}

// referenceCatalogs are the catalogs Verify checks volumes against: copies
// carried by the volumes given, replaced by those recorded in the
// repository (fromRepo).
type referenceCatalogs struct {
	cats     map[volumeKey]tape.Catalog
	fromRepo map[volumeKey]bool
}

// ofHeads returns the catalog of each volume file (heads[i] is the head of
// paths[i], nil for one that cannot be read): its reference catalog, or
// else its own; nil where neither is known.
func (refs referenceCatalogs) ofHeads(ctx context.Context, paths []string, heads []*tape.Volume) []*tape.Catalog {
	cats := make([]*tape.Catalog, len(paths))
	for i, h := range heads {
		if h == nil {
			continue
		}
		if c, ok := refs.cats[volumeKey{h.Label.SetID, h.Label.Volume}]; ok {
			cats[i] = &c
		} else if c := ownCatalog(ctx, paths[i], h); c != nil {
			cats[i] = c
		}
	}
	return cats
}

// verifyVolume reads volume file p whole and checks it against its own
// catalog and its reference catalog.
func verifyVolume(ctx context.Context, p string, o ReadOptions, refs referenceCatalogs) VolumeReport {
	vr := VolumeReport{Path: p}
	f, err := os.Open(p)
	if err != nil {
		vr.Error = err.Error()
		return vr
	}
	defer f.Close()
	l, err := tape.ReadLabel(ctx, f, o.tape())
	if err == nil {
		_, err = f.Seek(0, 0)
	}
	if err != nil {
		vr.Error = err.Error()
		return vr
	}
	vr.SetID, vr.Volume = l.SetID, l.Volume
	ro := o.tape()
	if c, ok := refs.cats[volumeKey{l.SetID, l.Volume}]; ok {
		ro.Catalog = &c
		if refs.fromRepo[volumeKey{l.SetID, l.Volume}] {
			vr.Note = ", as recorded in the repository"
		}
	}
	rep, err := tape.ReadVolume(ctx, f, ro, o.counting(nil)) // as tape.VerifyVolume, counting members
	if rep == nil {
		vr.Error = err.Error()
		return vr
	}
	vr.OK, vr.Good, vr.Bad = rep.OK(), len(rep.Good), rep.Bad
	if err != nil {
		vr.Error = err.Error()
	}
	if rep.EndOfMedia {
		vr.Note += ", ends at end of media as its catalog copy records"
	}
	return vr
}

// ownCatalog returns the catalog volume file path carries itself (h is its
// head), or nil when it is not a regular file or does not end with one.
func ownCatalog(ctx context.Context, path string, h *tape.Volume) *tape.Catalog {
	if h.Catalog != nil {
		return h.Catalog
	}
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	c, err := tape.ReadTailCatalog(ctx, f, fi.Size(), h.Label)
	if err != nil {
		return nil
	}
	return &c
}
