package tape

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/stasisbackup/stasis/engine/quiesce"
)

// Device opens the volumes of a set by sequence number (from 1).
//
// OpenWrite is called once per volume, in increasing order, and the writer
// is closed before the next volume is opened; writes to it are exactly
// WriteOptions.BlockSize bytes each. End of media must be reported as an
// error matching syscall.ENOSPC. OpenRead may be called in any order.
type Device interface {
	OpenWrite(ctx context.Context, seq int) (io.WriteCloser, error)
	OpenRead(ctx context.Context, seq int) (io.ReadCloser, error)
}

// PathDevice is a file or a tape device given by path.
//
// If Path contains a fmt verb for an integer (such as "%d" or "%03d"), each
// volume is its own file: "vol-%03d.tar" gives vol-001.tar, vol-002.tar, ...
// Otherwise Path names one device (such as /dev/nst0) that holds one volume
// at a time, and ChangeVolume, a /bin/sh command line, is run before every
// volume but the first one opened, like GNU tar's -F: its environment has
// STASIS_TAPE_VOLUME=<seq of the volume wanted> and STASIS_TAPE_DEVICE=<Path>,
// and the volume is opened once it exits with status 0. Without ChangeVolume
// such a path holds one volume only.
//
// Regular files are created or truncated for writing and synced on Close.
// A PathDevice is not safe for concurrent use.
type PathDevice struct {
	Path         string
	ChangeVolume string
	// Stdout and Stderr receive the ChangeVolume command's output (for
	// example the terminal); nil discards it, but stderr is kept for errors.
	Stdout, Stderr io.Writer

	opened bool
}

var _ Device = (*PathDevice)(nil)

// String returns the device path, for messages.
func (d *PathDevice) String() string { return d.Path }

func (d *PathDevice) perVolume() bool { return strings.Contains(d.Path, "%") }

// VolumePath returns the path that holds volume seq.
func (d *PathDevice) VolumePath(seq int) string {
	if d.perVolume() {
		return fmt.Sprintf(d.Path, seq)
	}
	return d.Path
}

// prepare runs the change-volume command when a single device is reused.
func (d *PathDevice) prepare(ctx context.Context, seq int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	first := !d.opened
	d.opened = true
	if d.perVolume() || first {
		return nil
	}
	if d.ChangeVolume == "" {
		return fmt.Errorf("volume %d needs another medium in %s, but no change-volume command was given (use a path with %%d for files, or a change-volume command): %w",
			seq, d.Path, ErrChangeVolume)
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", d.ChangeVolume)
	cmd.Env = append(quiesce.Environ(), "STASIS_TAPE_VOLUME="+strconv.Itoa(seq), "STASIS_TAPE_DEVICE="+d.Path)
	var errBuf bytes.Buffer
	cmd.Stdout = d.Stdout
	cmd.Stderr = &errBuf
	if d.Stderr != nil {
		cmd.Stderr = io.MultiWriter(d.Stderr, &errBuf)
	}
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errBuf.String())
		if len(msg) > 500 {
			msg = msg[len(msg)-500:]
		}
		return fmt.Errorf("change to volume %d on %s: command %q: %v (stderr: %q); load volume %d and retry: %w",
			seq, d.Path, d.ChangeVolume, err, msg, seq, ErrChangeVolume)
	}
	return nil
}

// OpenWrite implements Device.
func (d *PathDevice) OpenWrite(ctx context.Context, seq int) (io.WriteCloser, error) {
	if err := d.prepare(ctx, seq); err != nil {
		return nil, err
	}
	p := d.VolumePath(seq)
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	regular := true
	if fi, err := os.Stat(p); err == nil && !fi.Mode().IsRegular() {
		flags, regular = os.O_WRONLY, false
	}
	f, err := os.OpenFile(p, flags, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open volume %d for writing: %w", seq, err)
	}
	return &fileVolume{File: f, sync: regular}, nil
}

// OpenRead implements Device.
func (d *PathDevice) OpenRead(ctx context.Context, seq int) (io.ReadCloser, error) {
	if err := d.prepare(ctx, seq); err != nil {
		return nil, err
	}
	f, err := os.Open(d.VolumePath(seq))
	if err != nil {
		return nil, fmt.Errorf("open volume %d for reading: %w", seq, err)
	}
	return f, nil
}

type fileVolume struct {
	*os.File
	sync bool
}

func (f *fileVolume) Close() error {
	if f.sync {
		if err := f.File.Sync(); err != nil {
			f.File.Close()
			return fmt.Errorf("sync %s: %w", f.Name(), err)
		}
	}
	return f.File.Close()
}
