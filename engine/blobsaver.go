package engine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

// blobRepo is what the blob saver needs from the repository.
type blobRepo interface {
	Hash(data []byte) blob.ID
	HasBlob(id blob.ID) (bool, error)
	HasAllBlobs(ids []blob.ID) (bool, error)
	SaveBlob(ctx context.Context, t blob.Type, id blob.ID, data []byte) (repo.SaveResult, error)
	SaveFrame(ctx context.Context, t blob.Type, blobs []repo.FrameBlob) (repo.FrameResult, error)
}

// blobSaver hashes the chunks of files, deduplicates them against the
// repository's index and stores the new ones. It owns the chunk buffers
// (a pool: a chunk's buffer goes back to it once the chunk is stored or
// found to be stored already) and a queue of chunks to store, emptied by
// the goroutines that call run; saving and compressing happen there, not
// on the goroutine that chunks the file.
//
// save may be called from any number of goroutines until close; run
// returns once the queue is closed and empty. Every error of the
// repository is returned as a repoError. The counts it adds to are
// blobsAdded, bytesAdded and stored.
type blobSaver struct {
	repo   blobRepo
	counts *backupCounts
	// usable reports whether indexed blobs may be reused (backup.usable: in
	// a degraded repository only those that decode); replace stores a
	// blob again whose indexed copy does not decode. replace is nil when
	// the repository is not degraded (dictdamage.go).
	usable  func(ctx context.Context, ids ...blob.ID) (bool, error)
	replace func(ctx context.Context, t blob.Type, id blob.ID, data []byte) (repo.SaveResult, error)

	queue chan saveJob
	bufs  sync.Pool

	// frameSize is the repository's frame size: new chunks smaller than it
	// are gathered into frames (frameBuilder); 0 in a version 1 repository.
	frameSize int
	// tail gathers the last, partial frames of chunk streams (the small
	// files of a backup, the ends of large ones) into whole frames.
	tailMu sync.Mutex
	tail   frameBuilder
	frames sync.Pool // *[]byte for pendingFrame
	// held counts the chunks gathered into frames and not yet queued (nor
	// dropped with a stream that failed): the snapshot is written only
	// when it is 0 (unstored).
	held atomic.Int64
}

// saveJob is a chunk, or a frame of chunks, waiting in the blob saver's queue.
type saveJob struct {
	id      blob.ID
	data    []byte
	buf     *[]byte // data's buffer, back to the pool once stored
	replace bool    // the indexed copy does not decode (dictdamage.go)

	frame *pendingFrame // a frame of several chunks instead (id, data unused)
}

// pendingFrame is new chunks gathered for one frame: their bytes back to
// back in one buffer of the saver's frame pool (the chunks' own buffers
// went back to their pool at once, so a frame holds no more memory than
// its bytes).
type pendingFrame struct {
	buf  *[]byte
	ids  []blob.ID
	ends []int // where each chunk ends in *buf
}

func (p *pendingFrame) size() int {
	if p == nil || len(p.ends) == 0 {
		return 0
	}
	return p.ends[len(p.ends)-1]
}

// newBlobSaver returns a blob saver whose queue holds up to queued chunks
// or frames (a bound on the bytes in flight), and which reuses every
// indexed blob. frameSize is the repository's (0: one chunk per frame).
func newBlobSaver(r blobRepo, counts *backupCounts, queued, frameSize int) *blobSaver {
	s := &blobSaver{repo: r, counts: counts, queue: make(chan saveJob, queued), frameSize: frameSize,
		usable: func(context.Context, ...blob.ID) (bool, error) { return true, nil }}
	s.tail.saver = s
	s.bufs.New = func() any { b := make([]byte, 0, 64<<10); return &b } // grows to the chunk size in use
	return s
}

// buffer returns an empty buffer for one chunk; give it to save, or back
// with release.
func (s *blobSaver) buffer() *[]byte { return s.bufs.Get().(*[]byte) }

// release puts back a buffer that holds no chunk to save (nil: none). A buffer grown
// for a large chunk (up to 8 MiB) is left to the collector instead: kept, it
// would hold its size for every small chunk after it, and a few of them
// made most of a backup's peak memory.
func (s *blobSaver) release(buf *[]byte) {
	if buf == nil || cap(*buf) > maxPooledChunk {
		return
	}
	s.bufs.Put(buf)
}

// maxPooledChunk is the largest chunk buffer the pool keeps: a few chunks
// of the default profile's average size (1 MiB).
const maxPooledChunk = 2 << 20

// save hashes data (held in buf, whose ownership passes to the saver) and
// queues it to be stored on its own unless the repository has it already
// (and may reuse it). It returns the chunk's id. It blocks while the queue
// is full; when ctx ends first it returns ctx.Err().
func (s *blobSaver) save(ctx context.Context, data []byte, buf *[]byte) (blob.ID, error) {
	id := s.repo.Hash(data)
	isNew, replace, err := s.lookup(ctx, id, buf)
	if err != nil || !isNew {
		return id, err
	}
	return id, s.enqueue(ctx, saveJob{id: id, data: data, buf: buf, replace: replace})
}

// lookup reports whether the chunk id must be stored (isNew), and whether
// in place of an indexed copy that does not decode (replace). A chunk that
// need not be stored has its buffer released.
func (s *blobSaver) lookup(ctx context.Context, id blob.ID, buf *[]byte) (isNew, replace bool, err error) {
	has, err := s.repo.HasBlob(id)
	if err == nil && has {
		has, err = s.usable(ctx, id)
		replace = !has
	}
	if err != nil {
		s.release(buf)
		return false, false, repoError{fmt.Errorf("look up chunk %s: %w", id.Short(), err)}
	}
	if has {
		s.release(buf)
		return false, false, nil
	}
	return true, replace, nil
}

func (s *blobSaver) enqueue(ctx context.Context, j saveJob) error {
	select {
	case s.queue <- j:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// newFrame returns a frame builder for one stream of chunks (a file's
// span): the goroutine that chunks it owns the builder.
func (s *blobSaver) newFrame() *frameBuilder { return &frameBuilder{saver: s} }

// frameBuilder gathers the new chunks of one stream into frames of the
// repository's frame size. A chunk as large as a frame, or one that
// replaces an undecodable copy, is queued on its own.
type frameBuilder struct {
	saver *blobSaver
	cur   *pendingFrame
}

// save is blobSaver.save for a chunk of the builder's stream.
func (f *frameBuilder) save(ctx context.Context, data []byte, buf *[]byte) (blob.ID, error) {
	id := f.saver.repo.Hash(data)
	return id, f.saveHashed(ctx, id, data, buf)
}

// saveHashed is save for a chunk whose id the caller has computed from
// data (Hash). With buf nil, data stays the caller's: it is copied only if
// it is to be stored.
func (f *frameBuilder) saveHashed(ctx context.Context, id blob.ID, data []byte, buf *[]byte) error {
	s := f.saver
	isNew, replace, err := s.lookup(ctx, id, buf)
	if err != nil || !isNew {
		return err
	}
	if replace || len(data) >= s.frameSize {
		if buf == nil {
			buf = s.buffer()
			*buf = append((*buf)[:0], data...)
			data = *buf
		}
		return s.enqueue(ctx, saveJob{id: id, data: data, buf: buf, replace: replace})
	}
	f.add(id, data)
	s.release(buf)
	if f.cur.size() >= s.frameSize {
		return f.flush(ctx)
	}
	return nil
}

// add copies chunk data into the frame being gathered.
func (f *frameBuilder) add(id blob.ID, data []byte) {
	if f.cur == nil {
		bp, _ := f.saver.frames.Get().(*[]byte)
		if bp == nil {
			b := make([]byte, 0, 2*f.saver.frameSize)
			bp = &b
		}
		f.cur = &pendingFrame{buf: bp}
	}
	*f.cur.buf = append(*f.cur.buf, data...)
	f.cur.ids = append(f.cur.ids, id)
	f.cur.ends = append(f.cur.ends, len(*f.cur.buf))
	f.saver.held.Add(1)
}

// flush queues the chunks gathered so far as one frame.
func (f *frameBuilder) flush(ctx context.Context) error {
	if f.cur == nil {
		return nil
	}
	j := saveJob{frame: f.cur}
	f.cur = nil
	f.saver.held.Add(-int64(len(j.frame.ids)))
	return f.saver.enqueue(ctx, j)
}

// drop forgets the chunks gathered by a stream that failed (its content
// is not used; a chunk another stream needs is gathered by that one).
func (f *frameBuilder) drop() {
	if f.cur != nil {
		f.saver.held.Add(-int64(len(f.cur.ids)))
		f.saver.putFrame(f.cur)
		f.cur = nil
	}
}

// finish ends the builder's stream: its last, partial frame joins the
// saver's shared tail frame, which is queued once it is full (or by close).
func (f *frameBuilder) finish(ctx context.Context) error {
	p := f.cur
	if p == nil {
		return nil
	}
	f.cur = nil
	s := f.saver
	s.held.Add(-int64(len(p.ids))) // added again to the tail
	defer s.putFrame(p)
	s.tailMu.Lock()
	defer s.tailMu.Unlock()
	start := 0
	for i, id := range p.ids {
		s.tail.add(id, (*p.buf)[start:p.ends[i]])
		start = p.ends[i]
		if s.tail.cur.size() >= s.frameSize {
			if err := s.tail.flush(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// putFrame returns a frame's buffer to the pool.
func (s *blobSaver) putFrame(p *pendingFrame) {
	*p.buf = (*p.buf)[:0]
	s.frames.Put(p.buf)
}

// haveAll reports whether the repository has all of ids and may reuse
// them (the content of an unchanged file of the parent snapshot).
func (s *blobSaver) haveAll(ctx context.Context, ids []blob.ID) (bool, error) {
	ok, err := s.repo.HasAllBlobs(ids)
	if err == nil && ok {
		ok, err = s.usable(ctx, ids...)
	}
	return ok, err
}

// run stores queued chunks and frames until the queue is closed; the
// first failure to store one ends it.
func (s *blobSaver) run(ctx context.Context) error {
	for job := range s.queue {
		if job.frame != nil {
			if err := s.storeFrame(ctx, job.frame); err != nil {
				return err
			}
			continue
		}
		var res repo.SaveResult
		var err error
		if job.replace {
			res, err = s.replace(ctx, blob.Data, job.id, job.data)
		} else {
			res, err = s.repo.SaveBlob(ctx, blob.Data, job.id, job.data)
		}
		s.release(job.buf)
		if err != nil {
			return repoError{fmt.Errorf("save chunk %s: %w", job.id.Short(), err)}
		}
		if res.Added {
			s.counts.blobsAdded.Add(1)
			s.counts.bytesAdded.Add(int64(len(job.data)))
			s.counts.stored.Add(int64(res.Stored))
		}
	}
	return nil
}

func (s *blobSaver) storeFrame(ctx context.Context, p *pendingFrame) error {
	defer s.putFrame(p)
	blobs := make([]repo.FrameBlob, len(p.ids))
	start := 0
	for i, id := range p.ids {
		blobs[i] = repo.FrameBlob{ID: id, Data: (*p.buf)[start:p.ends[i]]}
		start = p.ends[i]
	}
	res, err := s.repo.SaveFrame(ctx, blob.Data, blobs)
	if err != nil {
		return repoError{fmt.Errorf("save a frame of %d chunks from %s: %w", len(blobs), blobs[0].ID.Short(), err)}
	}
	s.counts.blobsAdded.Add(int64(res.Added))
	s.counts.bytesAdded.Add(res.AddedBytes)
	s.counts.stored.Add(int64(res.Stored))
	return nil
}

// close says that no more chunks will be saved: the shared tail frame is
// queued, and run returns once the queue is empty. A tail that cannot be
// queued (ctx ended) is dropped: the backup has failed then.
func (s *blobSaver) close(ctx context.Context) {
	s.tailMu.Lock()
	s.tail.flush(ctx)
	s.tailMu.Unlock()
	close(s.queue)
}

// unstored returns an error when chunks gathered into frames were never
// queued to be stored: a snapshot would name chunks the repository lacks.
func (s *blobSaver) unstored() error {
	if n := s.held.Load(); n != 0 {
		return fmt.Errorf("backup: %d chunks gathered into frames were not stored (a bug: no snapshot is written; please report it)", n)
	}
	return nil
}
