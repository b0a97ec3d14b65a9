package engine

import (
	"context"
	"errors"
	"io"
	"os"

	"github.com/restic/chunker"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/tree"
	"golang.org/x/sys/unix"
)

// chunkWindow is the span of a file that is chunked independently of the
// rest: chunk boundaries are forced at multiples of it (from the start of
// the file), so several goroutines can chunk one large file at once. A
// database updated in place keeps its boundaries from day to day, and a
// forced cut every 32 MiB costs at most one extra chunk per window.
const chunkWindow = 32 << 20

// span is a piece of a file: a hole, or data to chunk.
type span struct {
	start, end int64
	hole       bool
}

// fileSpans splits the first size bytes of f into holes (found with
// SEEK_DATA/SEEK_HOLE) and data spans of at most one chunkWindow, aligned
// to the windows.
func fileSpans(f *os.File, size int64) []span {
	var spans []span
	for off := int64(0); off < size; {
		start, end := dataRegion(f, off, size)
		if start > off {
			spans = append(spans, span{off, start, true})
		}
		if start >= size {
			break
		}
		for s := start; s < end; {
			e := min(end, (s/chunkWindow+1)*chunkWindow)
			spans = append(spans, span{s, e, false})
			s = e
		}
		off = end
	}
	return spans
}

// chunkFile splits the data regions of f (holes are skipped) into
// content-defined chunks, window by window (see chunkWindow), and hands the
// chunks to the blob saver. A file of several windows is chunked by several
// goroutines, ck serving the first. It returns the file's extents and how
// many bytes it read.
func (s *fileSaver) chunkFile(ctx context.Context, f *os.File, size int64, profile repo.ChunkProfile, ck *chunker.Chunker) ([]tree.Extent, int64, error) {
	spans := fileSpans(f, size)
	parts := make([][]tree.Extent, len(spans))
	reads := make([]int64, len(spans))
	var data []int
	for i, sp := range spans {
		if sp.hole {
			parts[i] = []tree.Extent{{Hole: true, Length: uint64(sp.end - sp.start)}}
		} else {
			data = append(data, i)
		}
	}
	var err error
	if len(data) <= 1 {
		for _, i := range data {
			if parts[i], reads[i], err = s.chunkSpan(ctx, f, spans[i], profile, ck); err != nil {
				return nil, reads[i], err
			}
		}
	} else {
		chunkers := make([]*chunker.Chunker, workers(len(data)))
		chunkers[0] = ck
		for w := 1; w < len(chunkers); w++ {
			chunkers[w] = chunker.NewWithBoundaries(nil, s.pol, profile.Min, profile.Max)
		}
		err = parallel(ctx, len(data), func(ctx context.Context, w, k int) error {
			i := data[k]
			var err error
			parts[i], reads[i], err = s.chunkSpan(ctx, f, spans[i], profile, chunkers[w])
			return err
		})
	}
	var content []tree.Extent
	var read int64
	for i := range spans {
		content = append(content, parts[i]...)
		read += reads[i]
	}
	return content, read, err
}

// chunkSpan chunks one data span. A span that reads short (the file shrank
// while it was read) ends early; the caller sees the change in the total.
func (s *fileSaver) chunkSpan(ctx context.Context, f *os.File, sp span, profile repo.ChunkProfile, ck *chunker.Chunker) ([]tree.Extent, int64, error) {
	return s.chunkReader(ctx, io.NewSectionReader(f, sp.start, sp.end-sp.start), profile, ck)
}

// chunkReader chunks rd to its end (a file's span, or a stream) and hands
// the chunks to the blob saver.
func (s *fileSaver) chunkReader(ctx context.Context, rd io.Reader, profile repo.ChunkProfile, ck *chunker.Chunker) ([]tree.Extent, int64, error) {
	var content []tree.Extent
	var read int64
	ck.ResetWithBoundaries(rd, s.pol, profile.Min, profile.Max)
	ck.SetAverageBits(profile.AvgBits)
	frame := s.blobs.newFrame()
	for {
		buf := s.blobs.buffer()
		c, err := ck.Next((*buf)[:0])
		if err == io.EOF {
			s.blobs.release(buf)
			return content, read, frame.finish(ctx)
		}
		if err != nil {
			s.blobs.release(buf)
			frame.drop()
			return nil, read, err
		}
		*buf = c.Data[:0]
		read += int64(c.Length)
		s.counts.doneBytes.Add(int64(c.Length))
		id, err := frame.save(ctx, c.Data, buf)
		if err != nil {
			frame.drop()
			return nil, read, err
		}
		content = append(content, tree.Extent{ID: id, Length: uint64(c.Length)})
	}
}

// dataRegion returns the next data region [start, end) at or after off,
// using SEEK_DATA/SEEK_HOLE; start == size means only a hole is left. On
// file systems without hole support the whole rest is one region.
func dataRegion(f *os.File, off, size int64) (int64, int64) {
	fd := int(f.Fd())
	start, err := unix.Seek(fd, off, unix.SEEK_DATA)
	if err != nil {
		if errors.Is(err, unix.ENXIO) {
			return size, size
		}
		return off, size
	}
	if start > size {
		return size, size
	}
	end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
	if err != nil || end > size {
		end = size
	}
	return start, end
}
