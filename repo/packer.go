package repo

import (
	"bufio"
	"context"
	"fmt"
	"path"
	"sync"

	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/pack"
)

// packer appends blobs of one type to a pack in tmp/ and, when the pack is
// full or on flush, finishes it: header, fsync, rename into packs/, fsync of
// the directory, index update, and only then forgets the pending ids.
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
	f  backend.File
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
	if err := p.failed(); err != nil {
		return err
	}
	if err := p.lock(ctx); err != nil {
		return err
	}
	if p.cur == nil {
		f, err := p.repo.fs.CreateTemp("tmp", "pack-*")
		if err != nil {
			p.unlock()
			return fmt.Errorf("create pack in %s/tmp: %w", p.repo.dir, err)
		}
		bw := bufio.NewWriterSize(f, 1<<20)
		w, err := pack.NewWriter(bw)
		if err != nil {
			f.Close()
			p.repo.fs.Remove(f.Name())
			p.unlock()
			return fmt.Errorf("write pack %s: %w", f.Name(), err)
		}
		p.cur = &openPackFile{f: f, bw: bw, w: w}
	}
	cur := p.cur
	if err := cur.w.Add(id, p.typ, s, rawLen, data); err != nil {
		p.cur = nil
		p.unlock()
		p.discard(cur)
		return fmt.Errorf("pack %s: %w", cur.f.Name(), err)
	}
	var full *openPackFile
	if int64(cur.w.Size()) >= p.repo.cfg.PackSize {
		full, p.cur = cur, nil
	}
	p.unlock()
	if full == nil {
		return nil
	}
	select {
	case p.finishing <- struct{}{}:
	case <-ctx.Done():
		p.discard(full)
		return ctx.Err()
	}
	p.wg.Add(1)
	go func() {
		defer func() { <-p.finishing; p.wg.Done() }()
		if err := p.finish(full); err != nil {
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
		err = p.finish(cur)
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
	p.repo.fs.Remove(o.f.Name())
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

func (p *packer) finish(o *openPackFile) error {
	r := p.repo
	id, size, err := o.w.Finish(r.headerSeal())
	if err == nil {
		err = o.bw.Flush()
	}
	if err == nil {
		err = o.f.Sync()
		if err != nil {
			err = fmt.Errorf("fsync: %w", err)
		}
	}
	if err == nil {
		err = o.f.Close()
	}
	if err != nil {
		p.discard(o)
		return fmt.Errorf("finish pack %s in %s: %w", o.f.Name(), r.dir, err)
	}
	name := PackName(id)
	if err := r.fs.MkdirAll(path.Dir(name)); err != nil {
		p.discard(o)
		return fmt.Errorf("finish pack %s: %w", id, err)
	}
	if err := r.fs.Rename(o.f.Name(), name); err != nil {
		p.discard(o)
		return fmt.Errorf("rename pack %s into place: %w", id, err)
	}
	if err := r.fs.SyncDir(path.Dir(name)); err != nil {
		return fmt.Errorf("fsync directory of pack %s: %w", id, err)
	}
	entries := o.w.Entries()
	if err := r.idx.AddPack(id, size, entries); err != nil {
		return fmt.Errorf("index pack %s: %w (run `stasis repair index`)", id, err)
	}
	r.mu.Lock()
	for _, e := range entries {
		delete(r.pending, e.ID)
	}
	r.mu.Unlock()
	return nil
}
