package engine

import (
	"context"
	"fmt"
	"sync"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

// blobRepo is what the blob saver needs from the repository.
type blobRepo interface {
	Hash(data []byte) blob.ID
	HasBlob(id blob.ID) (bool, error)
	HasAllBlobs(ids []blob.ID) (bool, error)
	SaveBlob(ctx context.Context, t blob.Type, id blob.ID, data []byte) (repo.SaveResult, error)
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
}

// saveJob is a chunk waiting in the blob saver's queue.
type saveJob struct {
	id      blob.ID
	data    []byte
	buf     *[]byte // data's buffer, back to the pool once stored
	replace bool    // the indexed copy does not decode (dictdamage.go)
}

// newBlobSaver returns a blob saver whose queue holds up to queued chunks
// (a bound on the bytes in flight), and which reuses every indexed blob.
func newBlobSaver(r blobRepo, counts *backupCounts, queued int) *blobSaver {
	s := &blobSaver{repo: r, counts: counts, queue: make(chan saveJob, queued),
		usable: func(context.Context, ...blob.ID) (bool, error) { return true, nil }}
	s.bufs.New = func() any { b := make([]byte, 0, 64<<10); return &b } // grows to the chunk size in use
	return s
}

// buffer returns an empty buffer for one chunk; give it to save, or back
// with release.
func (s *blobSaver) buffer() *[]byte { return s.bufs.Get().(*[]byte) }

// release puts back a buffer that holds no chunk to save.
func (s *blobSaver) release(buf *[]byte) { s.bufs.Put(buf) }

// save hashes data (held in buf, whose ownership passes to the saver) and
// queues it to be stored unless the repository has it already (and may
// reuse it). It returns the chunk's id. It blocks while the queue is full;
// when ctx ends first it returns ctx.Err().
func (s *blobSaver) save(ctx context.Context, data []byte, buf *[]byte) (blob.ID, error) {
	id := s.repo.Hash(data)
	has, err := s.repo.HasBlob(id)
	replace := false
	if err == nil && has {
		has, err = s.usable(ctx, id)
		replace = !has
	}
	if err != nil {
		s.release(buf)
		return id, repoError{fmt.Errorf("look up chunk %s: %w", id.Short(), err)}
	}
	if has {
		s.release(buf)
		return id, nil
	}
	select {
	case s.queue <- saveJob{id: id, data: data, buf: buf, replace: replace}:
		return id, nil
	case <-ctx.Done():
		return id, ctx.Err()
	}
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

// run stores queued chunks until the queue is closed; the first failure
// to store one ends it.
func (s *blobSaver) run(ctx context.Context) error {
	for job := range s.queue {
		var res repo.SaveResult
		var err error
		if job.replace {
			res, err = s.replace(ctx, blob.Data, job.id, job.data)
		} else {
			res, err = s.repo.SaveBlob(ctx, blob.Data, job.id, job.data)
		}
		s.bufs.Put(job.buf)
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

// close says that no more chunks will be saved: run returns once the
// queue is empty.
func (s *blobSaver) close() { close(s.queue) }
