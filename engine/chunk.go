package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/restic/chunker"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
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
// many bytes it read. guide, when not nil, holds the chunks of the file in
// the parent snapshot (guidedSpan).
func (s *fileSaver) chunkFile(ctx context.Context, f *os.File, size int64, profile repo.ChunkProfile, ck *chunker.Chunker, guide *parentChunks) ([]tree.Extent, int64, error) {
	if guide != nil {
		// The parent's chunks are looked up together, in one read
		// transaction (a cursor stepping through the index): when all are
		// stored (the rule, unless the repository is damaged), a chunk that
		// is still the same needs no lookup of its own.
		stored, err := s.blobs.haveAll(ctx, guide.dataIDs())
		if err != nil {
			return nil, 0, repoError{fmt.Errorf("look up the parent's chunks: %w", err)}
		}
		guide.stored = stored
	}
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
			if parts[i], reads[i], err = s.chunkSpan(ctx, f, spans[i], profile, ck, guide); err != nil {
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
			parts[i], reads[i], err = s.chunkSpan(ctx, f, spans[i], profile, chunkers[w], guide)
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
func (s *fileSaver) chunkSpan(ctx context.Context, f *os.File, sp span, profile repo.ChunkProfile, ck *chunker.Chunker, guide *parentChunks) ([]tree.Extent, int64, error) {
	if guide != nil {
		return s.guidedSpan(ctx, f, sp, profile, ck, guide)
	}
	return s.chunkReader(ctx, io.NewSectionReader(f, sp.start, sp.end-sp.start), profile, ck)
}

// chunkReader chunks rd to its end (a file's span, or a stream) and hands
// the chunks to the blob saver.
func (s *fileSaver) chunkReader(ctx context.Context, rd io.Reader, profile repo.ChunkProfile, ck *chunker.Chunker) ([]tree.Extent, int64, error) {
	frame := s.blobs.newFrame()
	content, read, _, err := s.chunkStream(ctx, rd, 0, profile, ck, frame, nil)
	if err != nil {
		frame.drop()
		return nil, read, err
	}
	return content, read, frame.finish(ctx)
}

// chunkStream chunks rd, which starts at offset start of its file, into
// frame until rd ends (eof) or, with stop, until a chunk ends at an offset
// stop accepts. It returns the chunks and how many bytes they hold.
func (s *fileSaver) chunkStream(ctx context.Context, rd io.Reader, start int64, profile repo.ChunkProfile, ck *chunker.Chunker, frame *frameBuilder, stop func(off int64) bool) (content []tree.Extent, read int64, eof bool, err error) {
	ck.ResetWithBoundaries(rd, s.pol, profile.Min, profile.Max)
	ck.SetAverageBits(profile.AvgBits)
	for {
		buf := s.blobs.buffer()
		c, err := ck.Next((*buf)[:0])
		if err == io.EOF {
			s.blobs.release(buf)
			return content, read, true, nil
		}
		if err != nil {
			s.blobs.release(buf)
			return nil, read, false, err
		}
		*buf = c.Data[:0]
		read += int64(c.Length)
		s.counts.doneBytes.Add(int64(c.Length))
		id, err := frame.save(ctx, c.Data, buf)
		if err != nil {
			return nil, read, false, err
		}
		content = append(content, tree.Extent{ID: id, Length: uint64(c.Length)})
		if stop != nil && stop(start+read) {
			return content, read, false, nil
		}
	}
}

// guidedSpan chunks a data span of a file that has chunks in the parent
// snapshot without running the chunker over what did not change: a parent
// chunk that starts where the span's chunking stands and whose bytes hash
// to its id now is taken as it is. Content-defined chunking from a chunk's
// start depends only on the bytes after it, so the chunker would have cut
// there too (and the parent's chunks were cut by it, so the chunks are the
// same as without a guide). From a chunk that differs the chunker runs until
// it cuts where a parent chunk starts, and the guide takes over again. Every
// chunk's id is of the bytes read now: the guide only saves the chunker's
// work (half of a daily backup's CPU), never decides content.
func (s *fileSaver) guidedSpan(ctx context.Context, f *os.File, sp span, profile repo.ChunkProfile, ck *chunker.Chunker, guide *parentChunks) ([]tree.Extent, int64, error) {
	frame := s.blobs.newFrame()
	var content []tree.Extent
	pos := sp.start
	rd := &blockReader{f: f, end: sp.end}
	fail := func(err error) ([]tree.Extent, int64, error) {
		frame.drop()
		return nil, pos - sp.start, err
	}
	for pos < sp.end {
		if e, ok := guide.at(pos); ok && pos+int64(e.Length) <= sp.end {
			match, err := s.sameChunk(ctx, rd, pos, e, frame, guide.stored)
			if err != nil {
				return fail(err)
			}
			if match {
				content = append(content, tree.Extent{ID: e.ID, Length: e.Length})
				pos += int64(e.Length)
				continue
			}
		}
		part, n, eof, err := s.chunkStream(ctx, io.NewSectionReader(f, pos, sp.end-pos), pos, profile, ck, frame, guide.starts)
		if err != nil {
			return fail(err)
		}
		content = append(content, part...)
		pos += n
		if eof {
			break // the span's end, or the file shrank while read
		}
	}
	return content, pos - sp.start, frame.finish(ctx)
}

// sameChunk reports whether the bytes at off are parent chunk e (their hash
// is its id) and then saves them as that chunk; stored: the repository is
// known to hold it (blobSaver.haveAll), so saving is nothing to do. A
// short read (the file shrank) reports false: the chunker reads what is
// there.
func (s *fileSaver) sameChunk(ctx context.Context, rd *blockReader, off int64, e tree.Extent, frame *frameBuilder, stored bool) (bool, error) {
	data, err := rd.bytes(off, int(e.Length))
	if err != nil || len(data) < int(e.Length) || s.blobs.repo.Hash(data) != e.ID {
		return false, err
	}
	s.counts.doneBytes.Add(int64(len(data)))
	if stored {
		return true, nil
	}
	return true, frame.saveHashed(ctx, e.ID, data, nil)
}

// blockReader reads a span of a file in blocks of readBlock bytes (one
// pread for many small chunks); bytes returns a slice of its block, valid
// until the next call.
type blockReader struct {
	f     *os.File
	end   int64 // the span's end
	block []byte
	off   int64 // file offset of block[0]
}

const readBlock = 1 << 20

// bytes returns the n bytes at off (fewer where the file ends early).
func (r *blockReader) bytes(off int64, n int) ([]byte, error) {
	if off >= r.off && off+int64(n) <= r.off+int64(len(r.block)) {
		return r.block[off-r.off : off-r.off+int64(n)], nil
	}
	size := max(n, int(min(readBlock, r.end-off)))
	if cap(r.block) < size {
		r.block = make([]byte, size)
	}
	r.block = r.block[:size]
	got, err := r.f.ReadAt(r.block, off)
	r.block, r.off = r.block[:got], off
	if err != nil && err != io.EOF {
		return nil, err
	}
	return r.block[:min(n, got)], nil
}

// parentChunks are the chunks of a file's node in the parent snapshot, by
// the offset they start at (8 bytes per extent beside the node's own).
type parentChunks struct {
	offsets []int64 // of every extent, ascending
	content []tree.Extent
	stored  bool // every data chunk is known to be stored (set by chunkFile)
}

// newParentChunks returns the guide of a file whose parent node has
// content, nil when it has no data chunks or a chunk longer than max (the
// file was chunked with another profile then: its chunks would not be the
// chunker's now).
func newParentChunks(content []tree.Extent, max int) *parentChunks {
	g := parentChunks{offsets: make([]int64, len(content)), content: content}
	var off int64
	data := false
	for i, e := range content {
		if !e.Hole && e.Length > uint64(max) {
			return nil
		}
		data = data || !e.Hole
		g.offsets[i] = off
		off += int64(e.Length)
	}
	if !data {
		return nil
	}
	return &g
}

// at returns the parent's data chunk that starts at off, if one does.
func (g *parentChunks) at(off int64) (tree.Extent, bool) {
	i, ok := slices.BinarySearch(g.offsets, off)
	// A zero-length extent shares its offset with the next one: take the
	// last extent at off.
	for ok && i+1 < len(g.offsets) && g.offsets[i+1] == off {
		i++
	}
	if !ok || g.content[i].Hole {
		return tree.Extent{}, false
	}
	return g.content[i], true
}

// dataIDs returns the ids of the parent's data chunks.
func (g *parentChunks) dataIDs() []blob.ID {
	ids := make([]blob.ID, 0, len(g.content))
	for _, e := range g.content {
		if !e.Hole {
			ids = append(ids, e.ID)
		}
	}
	return ids
}

// starts reports whether a parent data chunk starts at off.
func (g *parentChunks) starts(off int64) bool {
	_, ok := g.at(off)
	return ok
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
