package tape

import (
	"errors"
	"fmt"
	"io"
	"syscall"
)

// blockWriter turns a byte stream into writes of exactly len(buf) bytes.
// A block is sent as soon as it is full, so an error surfaces during the
// Write that completed the block; the stream position at that moment
// (pos) is exact. After an error the writer is stuck until resume.
type blockWriter struct {
	w        io.Writer
	buf      []byte
	fill     int
	pos      int64 // bytes accepted into the stream (device + buffer)
	onDevice int64 // bytes the device confirmed
	err      error // sticky
	partial  bool  // the device took part of a block: the stream cannot continue
}

func newBlockWriter(w io.Writer, blockSize int) *blockWriter {
	return &blockWriter{w: w, buf: make([]byte, blockSize)}
}

func (b *blockWriter) Write(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n := 0
	for len(p) > 0 {
		if b.fill == len(b.buf) {
			if err := b.send(); err != nil {
				return n, err
			}
		}
		c := copy(b.buf[b.fill:], p)
		b.fill += c
		b.pos += int64(c)
		n += c
		p = p[c:]
	}
	if b.fill == len(b.buf) {
		if err := b.send(); err != nil {
			return n, err
		}
	}
	return n, nil
}

// readFrom reads at most limit bytes from r straight into the pending
// block (no copy through another buffer), passes every piece read to seen
// before it is sent, and sends each block as it fills. It returns the
// number of bytes read, with the error of r (other than io.EOF, which ends
// the read) as rerr and the device's as werr.
func (b *blockWriter) readFrom(r io.Reader, limit int64, seen func([]byte)) (n int64, rerr, werr error) {
	if b.err != nil {
		return 0, nil, b.err
	}
	for n < limit {
		if b.fill == len(b.buf) {
			if err := b.send(); err != nil {
				return n, nil, err
			}
		}
		want := min(int64(len(b.buf)-b.fill), limit-n)
		c, err := r.Read(b.buf[b.fill : b.fill+int(want)])
		if c < 0 || int64(c) > want {
			return n, fmt.Errorf("source reported %d bytes read of %d", c, want), nil
		}
		seen(b.buf[b.fill : b.fill+c])
		b.fill += c
		b.pos += int64(c)
		n += int64(c)
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, err, nil
		}
	}
	if b.fill == len(b.buf) {
		if err := b.send(); err != nil {
			return n, nil, err
		}
	}
	return n, nil, nil
}

// send writes the full pending block in one Write call.
func (b *blockWriter) send() error {
	m, err := b.w.Write(b.buf)
	if m > len(b.buf) || m < 0 {
		m, err = 0, fmt.Errorf("device reported %d bytes written of %d", m, len(b.buf))
	}
	b.onDevice += int64(m)
	switch {
	case m == len(b.buf):
		b.fill = 0
	case m > 0:
		b.partial = true
	}
	if err == nil && m < len(b.buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		b.err = err
	}
	return err
}

// flush zero-pads the last block and sends it.
func (b *blockWriter) flush() error {
	if b.err != nil {
		return b.err
	}
	if b.fill == 0 {
		return nil
	}
	clear(b.buf[b.fill:])
	b.fill = len(b.buf)
	return b.send()
}

// resume clears an end-of-media error so that the pending block is sent
// again by the next Write or flush. It returns false when the stream cannot
// continue (another error, or the device took part of a block).
func (b *blockWriter) resume() bool {
	if b.partial || !isEndOfMedia(b.err) {
		return false
	}
	b.err = nil
	return true
}

// isEndOfMedia reports whether err is a device's end-of-media report.
func isEndOfMedia(err error) bool { return errors.Is(err, syscall.ENOSPC) }

// blockReader reads the underlying reader len(buf) bytes at a time, as a
// tape drive in fixed-block mode requires, and serves smaller reads from
// the buffer.
type blockReader struct {
	r    io.Reader
	buf  []byte
	i, n int
	err  error
	off  int64 // bytes served so far: the offset in the volume of the next byte
}

func newBlockReader(r io.Reader, blockSize int) *blockReader {
	return &blockReader{r: r, buf: make([]byte, blockSize)}
}

func (b *blockReader) Read(p []byte) (int, error) {
	for empty := 0; b.i == b.n; empty++ {
		if b.err != nil {
			return 0, b.err
		}
		if empty == 100 {
			return 0, io.ErrNoProgress
		}
		b.i = 0
		b.n, b.err = b.r.Read(b.buf)
		if b.n < 0 || b.n > len(b.buf) {
			b.n, b.err = 0, fmt.Errorf("device reported %d bytes read", b.n)
		}
	}
	c := copy(p, b.buf[b.i:b.n])
	b.i += c
	b.off += int64(c)
	return c, nil
}
