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
	type key struct {
		set string
		vol int
	}
	refs := map[key]tape.Catalog{}
	fromRepo := map[key]bool{}
	heads := make([]*tape.Volume, len(paths)) // nil: unreadable
	for i, p := range paths {
		if f, err := os.Open(p); err == nil {
			if h, err := tape.ReadHead(ctx, f, o.tape()); err == nil {
				heads[i] = h
				for _, c := range h.Earlier {
					refs[key{c.SetID, c.Volume}] = c
				}
			}
			f.Close()
		}
	}
	for set, cats := range recorded {
		for _, c := range cats {
			refs[key{set, c.Volume}] = c
			fromRepo[key{set, c.Volume}] = true
		}
	}
	if o.Progress != nil {
		cats := make([]*tape.Catalog, len(paths))
		for i, h := range heads {
			if h == nil {
				continue
			}
			if c, ok := refs[key{h.Label.SetID, h.Label.Volume}]; ok {
				cats[i] = &c
			} else if c := ownCatalog(ctx, paths[i], h); c != nil {
				cats[i] = c
			}
		}
		setTotals(o.Progress, cats)
	}
	var out []VolumeReport
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		vr := VolumeReport{Path: p}
		f, err := os.Open(p)
		if err != nil {
			vr.Error = err.Error()
			out = append(out, vr)
			continue
		}
		l, err := tape.ReadLabel(ctx, f, o.tape())
		if err == nil {
			_, err = f.Seek(0, 0)
		}
		if err != nil {
			f.Close()
			vr.Error = err.Error()
			out = append(out, vr)
			continue
		}
		vr.SetID, vr.Volume = l.SetID, l.Volume
		ro := o.tape()
		if c, ok := refs[key{l.SetID, l.Volume}]; ok {
			ro.Catalog = &c
			if fromRepo[key{l.SetID, l.Volume}] {
				vr.Note = ", as recorded in the repository"
			}
		}
		rep, err := tape.ReadVolume(ctx, f, ro, o.counting(nil)) // as tape.VerifyVolume, counting members
		f.Close()
		if rep == nil {
			vr.Error = err.Error()
			out = append(out, vr)
			continue
		}
		vr.OK, vr.Good, vr.Bad = rep.OK(), len(rep.Good), rep.Bad
		if err != nil {
			vr.Error = err.Error()
		}
		if rep.EndOfMedia {
			vr.Note += ", ends at end of media as its catalog copy records"
		}
		out = append(out, vr)
	}
	return out, nil
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
