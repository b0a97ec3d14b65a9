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
	"time"

	"github.com/klauspost/compress/zstd"
)

// runFloor measures two floors of repository size on the workload. First
// the initial backup's: the tree's content alone (no trees, index or pack
// headers), the database, the log and the small files each compressed with
// zstd in 512 KiB and 2 MiB frames at three levels, with the compression's
// speed on one core. Then the daily change's growth: the
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
	if err := initialFloor(stdout, w.Root); err != nil {
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
func framed(enc *zstd.Encoder, data []byte) int64 { return framedIn(enc, data, 512<<10) }

// framedIn is the size of data compressed by enc in frames of frame bytes.
func framedIn(enc *zstd.Encoder, data []byte, frame int) int64 {
	var n int64
	for i := 0; i < len(data); i += frame {
		n += int64(len(enc.EncodeAll(data[i:min(i+frame, len(data))], nil)))
	}
	return n
}

// initialFloor prints the size of the tree's content at root compressed in
// frames, by part, and how fast each level compressed it (one core).
func initialFloor(stdout io.Writer, root string) error {
	parts := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		k := "small files"
		switch d.Name() {
		case "X500.db":
			k = "database"
		case "tx.log":
			k = "log"
		}
		parts[k] = append(parts[k], b...)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Floor of the initial backup's size: the content alone (%s database, %s log, %s of small files), zstd in frames\n\n",
		mib(int64(len(parts["database"]))), mib(int64(len(parts["log"]))), mib(int64(len(parts["small files"]))))
	fmt.Fprintln(stdout, "| frame | level | database | log | small files | sum MiB | MB/s (one core) |")
	fmt.Fprintln(stdout, "|---|---|---:|---:|---:|---:|---:|")
	for _, frame := range []int{512 << 10, 2 << 20} {
		for _, l := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault, zstd.SpeedBetterCompression} {
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(l), zstd.WithEncoderCRC(false), zstd.WithEncoderConcurrency(1))
			if err != nil {
				return err
			}
			start := time.Now()
			var sizes [3]int64
			var raw int
			for i, k := range []string{"database", "log", "small files"} {
				sizes[i] = framedIn(enc, parts[k], frame)
				raw += len(parts[k])
			}
			secs := time.Since(start).Seconds()
			fmt.Fprintf(stdout, "| %d KiB | zstd %s | %s | %s | %s | %.1f |  %.0f |\n", frame>>10, l, mib(sizes[0]), mib(sizes[1]), mib(sizes[2]),
				float64(sizes[0]+sizes[1]+sizes[2])/(1<<20), float64(raw)/secs/1e6)
		}
	}
	fmt.Fprintln(stdout)
	return nil
}
