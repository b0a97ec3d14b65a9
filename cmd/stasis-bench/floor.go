package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// runFloor measures the floor of the daily change's repository growth: the
// bytes no backup tool can avoid storing however it chunks, the database
// pages that changed (compared page by page with the day before), the
// bytes appended to the log and the new files, each compressed with zstd in
// 512 KiB frames (stasis's frame size) at three levels. Metadata (trees,
// index) is not counted: the floor is of content alone. The workload is
// generated in WORK/floor (the run's own WORK/data is left as it is).
func runFloor(_ context.Context, o options, stdout io.Writer, log func(string, ...any)) error {
	w := o.workload()
	w.Root = filepath.Join(o.work, "floor", "srv", "zoomserv")
	log("generating workload in %s", w.Root)
	if _, err := w.Generate(); err != nil {
		return err
	}
	day0, err := os.ReadFile(w.DBPath())
	if err != nil {
		return err
	}
	logInfo, err := os.Stat(w.LogPath())
	if err != nil {
		return err
	}
	c, err := w.DailyChange(1)
	if err != nil {
		return err
	}
	day1, err := os.ReadFile(w.DBPath())
	if err != nil {
		return err
	}
	pages := changedPages(day0, day1)
	logTail, err := readFrom(w.LogPath(), logInfo.Size())
	if err != nil {
		return err
	}
	files, err := newFiles(w.Root, "day001-")
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Floor of the daily change's growth (workload seed %d: %d page writes in %d runs, %d pages appended, %s of log, %d files): content only, zstd in 512 KiB frames\n\n",
		w.Seed, c.PagesRewritten, c.Runs, c.PagesAppended, mib(c.LogAppended), c.FilesAdded)
	fmt.Fprintln(stdout, "| level | changed pages | log appended | new files | sum MiB |")
	fmt.Fprintln(stdout, "|---|---:|---:|---:|---:|")
	for _, l := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault, zstd.SpeedBestCompression} {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(l), zstd.WithEncoderCRC(false))
		if err != nil {
			return err
		}
		p, lg, f := framed(enc, pages), framed(enc, logTail), framed(enc, files)
		fmt.Fprintf(stdout, "| zstd %s | %s (%d pages, %s raw) | %s | %s | %.2f |\n", l, mib(p), len(pages)/4096, mib(int64(len(pages))), mib(lg), mib(f),
			float64(p+lg+f)/(1<<20))
	}
	return nil
}

// changedPages returns the 4 KiB pages of day1 that differ from day0's (or
// that day0 does not have), back to back.
func changedPages(day0, day1 []byte) []byte {
	const page = 4096
	var out []byte
	for off := 0; off < len(day1); off += page {
		end := min(off+page, len(day1))
		if end > len(day0) || !bytes.Equal(day0[off:end], day1[off:end]) {
			out = append(out, day1[off:end]...)
		}
	}
	return out
}

// readFrom returns the bytes of file p after offset off.
func readFrom(p string, off int64) ([]byte, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	return b[min(off, int64(len(b))):], nil
}

// newFiles returns the contents of the files under root whose names hold
// marker, back to back.
func newFiles(root, marker string) ([]byte, error) {
	var out []byte
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.Contains(d.Name(), marker) {
			return err
		}
		b, err := os.ReadFile(p)
		out = append(out, b...)
		return err
	})
	return out, err
}

// framed is the size of data compressed by enc in 512 KiB frames.
func framed(enc *zstd.Encoder, data []byte) int64 {
	var n int64
	for i := 0; i < len(data); i += 512 << 10 {
		n += int64(len(enc.EncodeAll(data[i:min(i+512<<10, len(data))], nil)))
	}
	return n
}
