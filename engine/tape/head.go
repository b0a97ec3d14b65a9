package tape

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
)

// ReadHead reads only the start of a volume: the label and the copies of
// the earlier volumes' catalogs, stopping at the first payload member (or
// at the volume's own catalog). It is the cheap way to learn what a set
// holds: on a tape it reads a few blocks after the rewind. The returned
// Volume has Label and Earlier set; Catalog is set only for a volume
// without payload members.
func ReadHead(ctx context.Context, r io.Reader, opts ReadOptions) (*Volume, error) {
	tr, l, err := openVolume(ctx, r, opts)
	if err != nil {
		return nil, err
	}
	v := &Volume{Label: l}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return v, nil
		}
		if err != nil {
			v.Truncated, v.TruncatedBy = true, err.Error()
			return v, nil
		}
		seq, ok := catalogSeq(hdr.Name)
		if !ok {
			return v, nil
		}
		data, err := readAll(tr, maxCatalogSize)
		if err != nil {
			v.Truncated, v.TruncatedIn, v.TruncatedBy = true, hdr.Name, err.Error()
			return v, nil
		}
		c, err := DecodeCatalog(data)
		if err != nil || c.SetID != l.SetID || c.Volume != seq || seq > l.Volume {
			continue // ReadVolume reports it; a head is best effort
		}
		if seq == l.Volume {
			v.Catalog = &c
			return v, nil
		}
		v.Earlier = append(v.Earlier, c)
	}
}

// tailWindow is how much ReadTailCatalog reads per step, backwards.
const tailWindow = 1 << 20

// ReadTailCatalog reads the volume's own catalog, its last member, from
// the end of a volume held in a file (or anything with ReadAt) of the given
// size, without reading the payload: it searches backwards, 512-byte tar
// block by block, for the catalog's tar header. label is the volume's label
// (from ReadLabel or ReadHead). It fails with an error matching
// ErrTruncated when the volume does not end with its catalog (a volume
// truncated by end of media: use the copy on the next volume).
func ReadTailCatalog(ctx context.Context, r io.ReaderAt, size int64, label Label) (Catalog, error) {
	want := CatalogName(label.Volume)
	end := size / TarBlock * TarBlock
	limit := max(0, end-maxCatalogSize-tailWindow)
	buf := make([]byte, tailWindow)
	for hi, lo := end, int64(0); hi > limit; hi = lo {
		if err := ctx.Err(); err != nil {
			return Catalog{}, err
		}
		lo = max(0, hi-tailWindow)
		n, err := r.ReadAt(buf[:hi-lo], lo)
		if err != nil && !(errors.Is(err, io.EOF) && int64(n) == hi-lo) {
			return Catalog{}, fmt.Errorf("read the end of volume %d: %w", label.Volume, err)
		}
		for off := hi - lo - TarBlock; off >= 0; off -= TarBlock {
			if !bytes.HasPrefix(buf[off:], []byte(want+"\x00")) {
				continue
			}
			tr := tar.NewReader(io.NewSectionReader(r, lo+off, size-lo-off))
			hdr, err := tr.Next()
			if err != nil || hdr.Name != want {
				continue
			}
			data, err := readAll(tr, maxCatalogSize)
			if err != nil {
				return Catalog{}, fmt.Errorf("volume %d: read %s: %v: %w", label.Volume, want, err, ErrTruncated)
			}
			c, err := DecodeCatalog(data)
			if err != nil {
				return Catalog{}, fmt.Errorf("volume %d: %w", label.Volume, err)
			}
			if c.SetID != label.SetID || c.Volume != label.Volume {
				return Catalog{}, fmt.Errorf("volume %d: %s belongs to volume %d of set %s: %w", label.Volume, want, c.Volume, c.SetID, ErrCorrupt)
			}
			return c, nil
		}
	}
	return Catalog{}, fmt.Errorf("volume %d: no %s at its end: %w", label.Volume, want, ErrTruncated)
}
