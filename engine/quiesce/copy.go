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
//
// The copy shares no extent with in: on one filesystem copy_file_range may
// clone (XFS and btrfs do), and a clone makes every later write of the
// service to in copy-on-write, fragmenting it as reflink mode does — what
// an operator who chose copy wanted to avoid. So within a filesystem the
// bytes are read and written; across filesystems copy_file_range copies.
func copyData(ctx context.Context, in, out *os.File, size int64) error {
	fd := int(in.Fd())
	kernelCopy := !sameFilesystem(in, out)
	buf := make([]byte, 1<<20) // for read and write
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
			n, err := copyRange(in, out, s, min(end-s, 64<<20), kernelCopy, buf)
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

// sameFilesystem reports whether a and b are on one filesystem (or cannot
// tell, which counts as one: the safe answer for copyData).
func sameFilesystem(a, b *os.File) bool {
	var sa, sb unix.Stat_t
	if unix.Fstat(int(a.Fd()), &sa) != nil || unix.Fstat(int(b.Fd()), &sb) != nil {
		return true
	}
	return sa.Dev == sb.Dev
}

// copyRange copies up to n bytes at off from in to out, at the same offset:
// with kernelCopy by copy_file_range where the kernel can, else by read and
// write through buf (at most len(buf) bytes then).
func copyRange(in, out *os.File, off, n int64, kernelCopy bool, buf []byte) (int64, error) {
	if kernelCopy {
		roff, woff := off, off
		c, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(n), 0)
		if err == nil {
			return int64(c), nil
		}
		if !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) &&
			!errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EPERM) {
			return 0, err
		}
	}
	buf = buf[:min(n, int64(len(buf)))]
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
