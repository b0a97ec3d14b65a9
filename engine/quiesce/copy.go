package quiesce

import (
	"context"
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// copyData copies the data regions of in to out at the same offsets, found
// with SEEK_DATA/SEEK_HOLE, and sets out's size to size: holes stay holes,
// so a 4 GiB preallocated database holding 44 MiB is copied as 44 MiB. On a
// filesystem without hole support the whole file is one region.
func copyData(ctx context.Context, in, out *os.File, size int64) error {
	fd := int(in.Fd())
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		end := size
		if err != nil {
			start = off
		} else if e, err := unix.Seek(fd, start, unix.SEEK_HOLE); err == nil && e < size {
			end = e
		}
		if start >= size {
			break
		}
		for s := start; s < end; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n, err := copyRange(in, out, s, min(end-s, 64<<20))
			if err != nil {
				return err
			}
			if n == 0 {
				end = s // the file shrank
				break
			}
			s += n
		}
		off = end
	}
	return out.Truncate(size)
}

// copyRange copies up to n bytes at off from in to out, at the same offset,
// with copy_file_range where the kernel can, else read and write.
func copyRange(in, out *os.File, off, n int64) (int64, error) {
	roff, woff := off, off
	c, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(n), 0)
	if err == nil {
		return int64(c), nil
	}
	if !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) &&
		!errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EPERM) {
		return 0, err
	}
	buf := make([]byte, min(n, 1<<20))
	r, err := in.ReadAt(buf, off)
	if r > 0 {
		if _, werr := out.WriteAt(buf[:r], off); werr != nil {
			return 0, werr
		}
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return int64(r), err
	}
	return int64(r), nil
}
