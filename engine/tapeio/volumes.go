package tapeio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/tape"
)

// VolumeFile is one volume given by path: a regular file, or a tape device
// with the volume loaded.
type VolumeFile struct {
	Path string
	Head *tape.Volume // label and earlier catalogs (ReadHead)
}

// ReadOptions say how volumes are read.
type ReadOptions struct {
	// BlockSize is the size of every read; zero means tape.DefaultBlockSize.
	BlockSize int
	// Progress, when set, counts the payload members Import and Verify
	// read (files) and their sizes, each once it has been read. Its totals
	// are the members of the volumes' catalogs when every volume given has
	// a known catalog, unknown otherwise.
	Progress *engine.Counts
}

func (o ReadOptions) tape() tape.ReadOptions { return tape.ReadOptions{BlockSize: o.BlockSize} }

// openHeads reads the label and catalog copies of every path and orders
// the volumes by number. All must belong to one set; a volume given twice
// is an error.
func openHeads(ctx context.Context, paths []string, o ReadOptions) ([]*VolumeFile, error) {
	if len(paths) == 0 {
		return nil, errors.New("no volumes given: use --device PATH (repeatable)")
	}
	var vols []*VolumeFile
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("open volume %s: %w", p, err)
		}
		h, err := tape.ReadHead(ctx, f, o.tape())
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", p, err)
		}
		vols = append(vols, &VolumeFile{Path: p, Head: h})
	}
	sort.SliceStable(vols, func(i, j int) bool { return vols[i].Head.Label.Volume < vols[j].Head.Label.Volume })
	for i, v := range vols {
		l := v.Head.Label
		if l.SetID != vols[0].Head.Label.SetID {
			return nil, fmt.Errorf("volume %s is volume %d of set %s, but %s belongs to set %s: give the volumes of one set",
				v.Path, l.Volume, l.SetID, vols[0].Path, vols[0].Head.Label.SetID)
		}
		if i > 0 && vols[i-1].Head.Label.Volume == l.Volume {
			return nil, fmt.Errorf("%s and %s are both volume %d of set %s: give each volume once", vols[i-1].Path, v.Path, l.Volume, l.SetID)
		}
	}
	return vols, nil
}

// catalogs returns the best known catalog of every volume: the volume's
// own (read from the end of a regular file) where the volumes given carry
// no copy of it. For a volume that is not a regular file, or whose end is
// not its catalog (truncated at end of media), the catalog stays unknown
// unless a later volume carries a copy.
func catalogs(ctx context.Context, vols []*VolumeFile) map[int]tape.Catalog {
	known := map[int]tape.Catalog{}
	for _, v := range vols {
		for _, c := range v.Head.Earlier {
			known[c.Volume] = c
		}
		if c := v.Head.Catalog; c != nil {
			known[c.Volume] = *c
		}
	}
	for _, v := range vols {
		l := v.Head.Label
		if _, ok := known[l.Volume]; ok {
			continue
		}
		f, err := os.Open(v.Path)
		if err != nil {
			continue
		}
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			if c, err := tape.ReadTailCatalog(ctx, f, fi.Size(), l); err == nil {
				known[l.Volume] = c
				v.Head.Catalog = &c
			}
		}
		f.Close()
	}
	return known
}

// readVolume reads volume v in one pass, checking members against ref (may
// be nil), passing payload members to fn.
func readVolume(ctx context.Context, v *VolumeFile, o ReadOptions, ref *tape.Catalog, fn tape.MemberFunc) (*tape.Report, error) {
	f, err := os.Open(v.Path)
	if err != nil {
		return nil, fmt.Errorf("open volume %s: %w", v.Path, err)
	}
	defer f.Close()
	ro := o.tape()
	ro.Catalog = ref
	return tape.ReadVolume(ctx, f, ro, o.counting(fn))
}

// counting returns fn (which may be nil) counting each member in
// o.Progress once fn has returned; fn itself when there is no Progress.
func (o ReadOptions) counting(fn tape.MemberFunc) tape.MemberFunc {
	if o.Progress == nil {
		return fn
	}
	return func(e tape.Entry, r io.Reader) error {
		var err error
		if fn != nil {
			err = fn(e, r)
		}
		o.Progress.Add(1, e.Size)
		return err
	}
}

// setTotals sets p's totals to the members of cats, the catalogs of the
// volumes to read, when none is missing (nil).
func setTotals(p *engine.Counts, cats []*tape.Catalog) {
	var files, bytes int64
	for _, c := range cats {
		if c == nil {
			return
		}
		files += int64(len(c.Members))
		for _, e := range c.Members {
			bytes += e.Size
		}
	}
	p.SetTotals(files, bytes)
}
