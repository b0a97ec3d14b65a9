package tape

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// tapeDrive is a test double for a tape drive in fixed-block mode. Each
// volume is a real file in dir. A write of anything but exactly blockSize
// bytes fails with EINVAL. Once a volume holds capacity(seq) bytes (0: no
// limit), the next write meets end of media: it stores partial bytes of the
// block and fails with ENOSPC; after that, grace more whole blocks are
// accepted (a drive's early-warning zone) and every further write fails
// with ENOSPC.
type tapeDrive struct {
	dir       string
	blockSize int
	capacity  func(seq int) int64
	partial   int
	grace     int
	writes    int // successful block writes, all volumes
}

var _ Device = (*tapeDrive)(nil)

func (d *tapeDrive) path(seq int) string {
	return filepath.Join(d.dir, fmt.Sprintf("vol-%03d.tar", seq))
}

func (d *tapeDrive) OpenWrite(ctx context.Context, seq int) (io.WriteCloser, error) {
	f, err := os.Create(d.path(seq))
	if err != nil {
		return nil, err
	}
	var c int64
	if d.capacity != nil {
		c = d.capacity(seq)
	}
	return &driveVolume{d: d, f: f, capacity: c, grace: d.grace}, nil
}

func (d *tapeDrive) OpenRead(ctx context.Context, seq int) (io.ReadCloser, error) {
	return os.Open(d.path(seq))
}

type driveVolume struct {
	d        *tapeDrive
	f        *os.File
	capacity int64
	written  int64
	eom      bool
	grace    int
}

func (v *driveVolume) Write(p []byte) (int, error) {
	if len(p) != v.d.blockSize {
		return 0, syscall.EINVAL
	}
	if v.eom {
		if v.grace == 0 {
			return 0, syscall.ENOSPC
		}
		v.grace--
	} else if v.capacity > 0 && v.written+int64(len(p)) > v.capacity {
		v.eom = true
		n, err := v.f.Write(p[:v.d.partial])
		v.written += int64(n)
		if err != nil {
			return n, err
		}
		return n, syscall.ENOSPC
	}
	n, err := v.f.Write(p)
	v.written += int64(n)
	v.d.writes++
	return n, err
}

func (v *driveVolume) Close() error { return v.f.Close() }

func mustRead(tb interface{ Fatal(...any) }, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
