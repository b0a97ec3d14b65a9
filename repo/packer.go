package repo

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
)

// packer appends blobs of one type to a pack in a local temp file and, when
// the pack is full or on flush, finishes it: header, then the storage makes
// it the object packs/xx/<id> (a local repository adopts the temp file,
// which lies in its tmp/: fsync, rename, fsync of the directory; an object
// store uploads it), then the index and the list of packs for the next
// index file are updated, and only then are the pending ids forgotten.
//
// A full pack is finished in the background (at most maxFinishing at once)
// so that the goroutines compressing blobs do not wait for fsync and the
// index commit; the first error of a background finish is returned by the
// next add or by flush, which also waits for every finish in flight.
type packer struct {
	repo *Repository
	typ  blob.Type

	mu  chan struct{} // a 1-slot semaphore so waiting respects ctx
	cur *openPackFile

	finishing chan struct{} // slots for background finishes
	wg        sync.WaitGroup
	errMu     sync.Mutex
	err       error
}

const maxFinishing = 2

type openPackFile struct {
	f  *os.File
	bw *bufio.Writer
	w  *pack.Writer
}

func newPacker(r *Repository, t blob.Type) *packer {
	return &packer{repo: r, typ: t, mu: make(chan struct{}, 1), finishing: make(chan struct{}, maxFinishing)}
}

func (p *packer) failed() error {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.err
}

func (p *packer) fail(err error) {
	p.errMu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.errMu.Unlock()
}

func (p *packer) lock(ctx context.Context) error {
	select {
	case p.mu <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *packer) unlock() { <-p.mu }

func (p *packer) add(ctx context.Context, id blob.ID, s pack.Storage, rawLen int, data []byte) error {
	return p.addFrame(ctx, s, []blob.ID{id}, []uint32{uint32(rawLen)}, data)
}

// addFrame appends one stored frame of the blobs ids (see pack.Writer.AddFrame).
func (p *packer) addFrame(ctx context.Context, s pack.Storage, ids []blob.ID, rawLens []uint32, data []byte) error {
	if err := p.failed(); err != nil {
		return err
	}
	if err := p.lock(ctx); err != nil {
		return err
	}
	if p.cur == nil {
		f, err := p.repo.createTemp()
		if err != nil {
			p.unlock()
			return fmt.Errorf("create a pack file: %w", err)
		}
		bw := bufio.NewWriterSize(f, 1<<20)
		w, err := pack.NewWriter(bw, p.repo.packVersion())
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			p.unlock()
			return fmt.Errorf("write pack %s: %w", f.Name(), err)
		}
		p.cur = &openPackFile{f: f, bw: bw, w: w}
	}
	cur := p.cur
	if err := cur.w.AddFrame(p.typ, s, ids, rawLens, data); err != nil {
		p.cur = nil
		p.unlock()
		p.discard(cur)
		return fmt.Errorf("pack %s: %w", cur.f.Name(), err)
	}
	var full *openPackFile
	if int64(cur.w.Size()) >= p.repo.cfg.PackSize {
		full, p.cur = cur, nil
		p.wg.Add(1) // under the lock, so that flush's Wait cannot miss it
	}
	p.unlock()
	if full == nil {
		return nil
	}
	select {
	case p.finishing <- struct{}{}:
	case <-ctx.Done():
		p.discard(full)
		p.wg.Done()
		return ctx.Err()
	}
	go func() {
		defer func() { <-p.finishing; p.wg.Done() }()
		if err := p.finish(context.WithoutCancel(ctx), full); err != nil {
			p.fail(err)
		}
	}()
	return nil
}

func (p *packer) flush(ctx context.Context) error {
	if err := p.lock(ctx); err != nil {
		return err
	}
	cur := p.cur
	p.cur = nil
	p.unlock()
	var err error
	if cur != nil {
		err = p.finish(ctx, cur)
	}
	p.wg.Wait()
	p.errMu.Lock()
	if p.err != nil {
		err, p.err = p.err, nil // reported once; the packer is usable again
	}
	p.errMu.Unlock()
	return err
}

// discard removes a pack that cannot be finished; its blobs are forgotten
// so that a later save writes them again.
func (p *packer) discard(o *openPackFile) {
	o.f.Close()
	os.Remove(o.f.Name())
	p.repo.mu.Lock()
	for _, e := range o.w.Entries() {
		delete(p.repo.pending, e.ID)
	}
	p.repo.mu.Unlock()
}

func (p *packer) abort() {
	p.wg.Wait()
	p.mu <- struct{}{}
	cur := p.cur
	p.cur = nil
	<-p.mu
	if cur != nil {
		p.discard(cur)
	}
}

func (p *packer) finish(ctx context.Context, o *openPackFile) error {
	r := p.repo
	id, size, err := o.w.Finish(r.headerSeal())
	if err == nil {
		err = o.bw.Flush()
	}
	if err != nil {
		p.discard(o)
		return fmt.Errorf("finish pack %s: %w", o.f.Name(), err)
	}
	name := PackName(id)
	if err := r.storeFile(ctx, o.f, name, int64(size)); err != nil {
		p.discard(o)
		return fmt.Errorf("store pack %s in %s: %w", id, r.loc, err)
	}
	entries := o.w.Entries()
	// Into the cache and the list of the next index file together (see
	// cleanIfSaved).
	r.unsavedMu.Lock()
	if err := r.idx.AddPack(id, size, entries); err != nil {
		r.unsavedMu.Unlock()
		p.forget(entries)
		return fmt.Errorf("index pack %s: %w", id, err)
	}
	r.unsaved.packs = append(r.unsaved.packs, index.IndexedPack{ID: id, Size: size, Entries: entries})
	r.unsaved.blobs += len(entries)
	r.unsavedMu.Unlock()
	p.forget(entries)
	return r.writeIndex(ctx, false)
}

// forget drops entries from the pending set: they are indexed now, or (on
// a failed index update) will be written again by a later save.
func (p *packer) forget(entries []pack.Entry) {
	p.repo.mu.Lock()
	for _, e := range entries {
		delete(p.repo.pending, e.ID)
	}
	p.repo.mu.Unlock()
}

// packVersion is the pack format version the repository writes: 2 (frames
// of several blobs) in a version 2 repository, 1 otherwise.
func (r *Repository) packVersion() int {
	if r.cfg.Version >= 2 {
		return 2
	}
	return 1
}

// createTemp creates a local file to write a pack into: in the repository's
// tmp/ when the storage can adopt it, in the cache directory otherwise.
func (r *Repository) createTemp() (*os.File, error) {
	if fa, ok := r.st.(backend.FileAdopter); ok {
		return fa.CreateTemp()
	}
	dir := filepath.Join(r.cacheDir, "tmp")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return os.CreateTemp(dir, "pack-*")
}

// storeFile makes the complete local file f (from createTemp) the object
// name and closes f; the temp file is gone afterwards either way.
func (r *Repository) storeFile(ctx context.Context, f *os.File, name string, size int64) error {
	if fa, ok := r.st.(backend.FileAdopter); ok {
		return fa.Adopt(ctx, f, name)
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	return r.st.Put(ctx, name, f, size)
}
