package repo

// Frames: in a version 2 repository the small chunks of a file (and the
// small files of a backup) are compressed and sealed together, up to
// Config.FrameSize plaintext bytes per frame, instead of one zstd frame and
// one AEAD message per ≈16 KiB chunk. Each chunk keeps its own id and index
// entry (the frame's place in the pack and the chunk's place in the
// frame's plaintext), so deduplication is unchanged; see docs/format.md.

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/crypto"
)

// FrameBlob is one blob for SaveFrame.
type FrameBlob struct {
	ID   blob.ID // r.Hash(Data)
	Data []byte
}

// FrameResult tells what SaveFrame did.
type FrameResult struct {
	Added      int   // blobs stored (the others were stored already)
	AddedBytes int64 // their plaintext bytes
	Stored     int   // bytes written to the pack
}

// Framed reports whether the repository stores several blobs per frame;
// FrameSize is then the plaintext a frame should reach.
func (r *Repository) Framed() bool { return r.cfg.framed() }

// FrameSize returns the repository's frame size (0 in version 1).
func (r *Repository) FrameSize() int { return int(r.cfg.FrameSize) }

// SaveFrame stores those of blobs that are not stored yet (and that no
// other goroutine is storing) together in frames of about the frame size,
// in their order (a blob as large as a frame in a frame of its own); in a
// version 1 repository one by one. It compresses in the caller's
// goroutine.
func (r *Repository) SaveFrame(ctx context.Context, t blob.Type, blobs []FrameBlob) (FrameResult, error) {
	var res FrameResult
	if err := ctx.Err(); err != nil {
		return res, err
	}
	var todo []FrameBlob
	for _, b := range blobs {
		has, err := r.HasBlob(b.ID)
		if err != nil {
			r.unclaim(todo)
			return res, fmt.Errorf("look up blob %s: %w", b.ID.Short(), err)
		}
		if !has && r.claimPending(b.ID) {
			todo = append(todo, b)
		}
	}
	if len(todo) == 0 {
		return res, nil
	}
	if !r.cfg.framed() {
		for i, b := range todo {
			sr, err := r.storeBlob(ctx, t, b.ID, b.Data)
			if err != nil {
				r.unclaim(todo[i+1:])
				return res, err
			}
			res.add(b, sr.Stored)
		}
		return res, nil
	}
	// Frames stay below twice the frame size whatever the caller hands
	// over (readers refuse larger ones): a blob as large as a frame is
	// stored alone, the others in frames closed once they reach it.
	var frame []FrameBlob
	size := 0
	store := func(blobs []FrameBlob) error {
		stored, err := r.storeFrame(ctx, t, blobs)
		if err != nil {
			return err
		}
		for _, b := range blobs {
			res.add(b, 0)
		}
		res.Stored += stored
		return nil
	}
	for i, b := range todo {
		var err error
		if len(b.Data) >= r.FrameSize() {
			err = store(todo[i : i+1])
		} else if frame, size = append(frame, b), size+len(b.Data); size >= r.FrameSize() {
			err, frame, size = store(frame), nil, 0
		}
		if err != nil {
			r.unclaim(frame)
			r.unclaim(todo[i+1:])
			return res, err
		}
	}
	if len(frame) > 0 {
		if err := store(frame); err != nil {
			return res, err
		}
	}
	return res, nil
}

func (res *FrameResult) add(b FrameBlob, stored int) {
	res.Added++
	res.AddedBytes += int64(len(b.Data))
	res.Stored += stored
}

// unclaim drops blobs claimed by the caller from the pending set.
func (r *Repository) unclaim(blobs []FrameBlob) {
	r.mu.Lock()
	for _, b := range blobs {
		delete(r.pending, b.ID)
	}
	r.mu.Unlock()
}

// storeFrame compresses and seals blobs (claimed by the caller in
// r.pending) as one frame and appends it to a pack of type t. One blob is
// stored as by storeBlob (storage Raw or Zstd).
func (r *Repository) storeFrame(ctx context.Context, t blob.Type, blobs []FrameBlob) (stored int, err error) {
	if len(blobs) == 1 {
		res, err := r.storeBlob(ctx, t, blobs[0].ID, blobs[0].Data)
		return res.Stored, err
	}
	defer func() {
		if err != nil {
			r.unclaim(blobs)
		}
	}()
	ids := make([]blob.ID, len(blobs))
	lens := make([]uint32, len(blobs))
	pp, _ := r.frameBufs.Get().(*[]byte)
	if pp == nil {
		pp = new([]byte)
	}
	defer r.frameBufs.Put(pp)
	plain := (*pp)[:0]
	for i, b := range blobs {
		ids[i], lens[i] = b.ID, uint32(len(b.Data))
		plain = append(plain, b.Data...)
	}
	*pp = plain
	data, storage := plain, pack.FrameRaw
	if r.cfg.Compression == CompressionZstd {
		bp, _ := r.compBufs.Get().(*[]byte)
		if bp == nil {
			bp = new([]byte)
		}
		defer r.compBufs.Put(bp) // addFrame has copied the bytes when it returns
		enc := r.comp.Load().plain
		buf := enc.EncodeAll(plain, (*bp)[:0])
		*bp = buf
		if len(buf) < len(plain) {
			data, storage = buf, pack.FrameZstd
		}
	}
	data, release := r.sealStored(data, adFrame(t))
	defer release()
	if err := r.packers[t].addFrame(ctx, storage, ids, lens, data); err != nil {
		return 0, err
	}
	return len(data), nil
}

// adFrame is the additional data of a sealed multi-blob frame: it holds
// several blobs, each verified by its id after decoding, so it is bound to
// its type only.
func adFrame(t blob.Type) []byte {
	return []byte{'s', 't', 'a', 's', 'i', 's', '-', 'f', 'r', 'a', 'm', 'e', byte(t)}
}

// maxFramePlain bounds the plaintext of a multi-blob frame: a frame is
// closed once it reaches FrameSize, and a blob as large as FrameSize has a
// frame of its own, so no frame reaches twice FrameSize.
func (r *Repository) maxFramePlain() uint64 { return 2 * uint64(r.cfg.FrameSize) }

// decodeFrame opens (in an encrypted repository) and decompresses the
// stored bytes of a multi-blob frame of type t, appending to buf[:0]. With
// scratch, stored is the caller's to lose: it is opened in place.
// Errors match ErrCorruptBlob; first names the frame in them.
func (r *Repository) decodeFrame(first blob.ID, t blob.Type, storage pack.Storage, stored, buf []byte, scratch bool) ([]byte, error) {
	if r.mk != nil {
		var dst []byte
		if scratch && len(stored) >= crypto.NonceSize {
			dst = stored[crypto.NonceSize:crypto.NonceSize]
		}
		opened, err := r.mk.Open(dst, stored, adFrame(t))
		if err != nil {
			return nil, fmt.Errorf("frame of blob %s: %w: %v", first, ErrCorruptBlob, err)
		}
		stored = opened
	}
	switch storage {
	case pack.FrameRaw:
		return append(buf[:0], stored...), nil
	case pack.FrameZstd:
		var h zstd.Header
		if err := h.Decode(stored); err != nil {
			return nil, fmt.Errorf("frame of blob %s: %w: %v", first, ErrCorruptBlob, err)
		}
		if h.HasFCS && h.FrameContentSize > r.maxFramePlain() {
			return nil, fmt.Errorf("frame of blob %s: %w: %d bytes decoded claimed, more than a frame can have (%d)", first, ErrCorruptBlob, h.FrameContentSize, r.maxFramePlain())
		}
		plain, err := r.comp.Load().dec.DecodeAll(stored, buf[:0])
		if err != nil {
			return nil, fmt.Errorf("frame of blob %s: %w: zstd: %v", first, ErrCorruptBlob, err)
		}
		return plain, nil
	}
	return nil, fmt.Errorf("frame of blob %s: %w: storage %s is not a frame", first, ErrCorruptBlob, storage)
}

// blobInFrame verifies blob id at inner..inner+rawLength of a decoded
// frame and appends it to buf[:0].
func (r *Repository) blobInFrame(id blob.ID, inner, rawLength uint32, frame, buf []byte) ([]byte, error) {
	end := uint64(inner) + uint64(rawLength)
	if end > uint64(len(frame)) {
		return nil, fmt.Errorf("blob %s: %w: it ends at %d of a frame of %d bytes", id, ErrCorruptBlob, end, len(frame))
	}
	// The copy is what is verified: whatever happens to the frame's buffer
	// afterwards, what the caller gets hashes to id.
	return r.verifyBlob(id, int(rawLength), append(buf[:0], frame[inner:end]...))
}

// readFramed reads blob id from a multi-blob frame at loc, through the
// cache of decoded frames.
func (r *Repository) readFramed(ctx context.Context, id blob.ID, loc index.Location, buf []byte) ([]byte, error) {
	if uint64(loc.Length) > r.maxFramePlain()+crypto.Overhead || uint64(loc.Inner)+uint64(loc.RawLength) > r.maxFramePlain() {
		return nil, fmt.Errorf("blob %s in pack %s: %w: the index gives its frame %d bytes and the blob %d bytes at %d, more than a frame can have; the index is damaged or was tampered with (run `stasis repair index`)",
			id, loc.Pack, ErrCorruptBlob, loc.Length, loc.RawLength, loc.Inner)
	}
	load := func(dst []byte) ([]byte, error) {
		bp := storedFrames.Get().(*[]byte)
		defer storedFrames.Put(bp)
		if cap(*bp) < int(loc.Length) {
			*bp = make([]byte, loc.Length)
		}
		raw := (*bp)[:loc.Length]
		if err := r.packs.readAt(ctx, loc.Pack, raw, int64(loc.Offset)); err != nil {
			return nil, fmt.Errorf("read blob %s from pack %s: %w", id, loc.Pack, err)
		}
		// The decoded frame goes into dst (a buffer of the cache's);
		// raw goes back to the pool.
		if loc.Type == blob.Data {
			r.framesDecoded.Add(1)
		}
		return r.decodeFrame(id, loc.Type, loc.Storage, raw, dst, true)
	}
	key := frameKey{loc.Pack, loc.Offset, loc.Length}
	e, err := r.frames.get(key, load)
	if err != nil && ctx.Err() == nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		// Another reader of this frame (a mount's request) was cancelled
		// while it loaded the frame for both: load it again.
		e, err = r.frames.get(key, load)
	}
	if err != nil {
		return nil, err
	}
	defer r.frames.release(e)
	return r.blobInFrame(id, loc.Inner, loc.RawLength, e.plain, buf)
}

// DataFramesDecoded returns how many frames of data chunks blob reads have
// decoded since the repository was opened (each read through the frame cache
// that missed it): for measuring restores (BenchmarkRestoreDaysOfChanges).
func (r *Repository) DataFramesDecoded() int64 { return r.framesDecoded.Load() }

// storedFrames holds buffers for frames as stored, read from packs.
var storedFrames = sync.Pool{New: func() any { return new([]byte) }}

// frameKey names a frame: its pack, offset and stored length.
type frameKey struct {
	pack   blob.ID
	offset uint64
	length uint32
}

// frameCache holds the last few decoded frames, so that reading the
// consecutive chunks of a file decodes each frame once. Concurrent gets of
// one frame decode it once. Frames that fail to decode are not cached. A
// frame's buffer is reused for another frame once it has left the cache and
// its last reader released it (the large allocations were a tenth of a
// restore's CPU, with the collections and page faults they caused).
type frameCache struct {
	mu      sync.Mutex
	entries []*cachedFrame // most recently used last
	max     int
	free    [][]byte // buffers of frames gone, for the next loads
}

type cachedFrame struct {
	key   frameKey
	done  chan struct{} // closed once plain/err are set
	plain []byte
	err   error
	refs  int  // gets not yet released (under frameCache.mu)
	gone  bool // out of the cache: plain is reused once refs is 0
}

// framesCached is how many decoded frames a repository keeps: a few per
// restore worker, at most 8 × 2 × FrameSize bytes.
const framesCached = 8

// get returns frame k, loading it into a buffer of the cache when it is not
// held. The caller reads e.plain until it calls release(e); on error there
// is nothing to release.
func (c *frameCache) get(k frameKey, load func(dst []byte) ([]byte, error)) (*cachedFrame, error) {
	c.mu.Lock()
	for i, e := range c.entries {
		if e.key == k {
			c.entries = append(append(c.entries[:i:i], c.entries[i+1:]...), e)
			e.refs++
			c.mu.Unlock()
			<-e.done
			if e.err != nil {
				c.release(e)
				return nil, e.err
			}
			return e, nil
		}
	}
	e := &cachedFrame{key: k, done: make(chan struct{}), refs: 1}
	if len(c.entries) >= max(c.max, 1) {
		c.leave(c.entries[0])
	}
	c.entries = append(c.entries, e)
	var dst []byte
	if n := len(c.free); n > 0 {
		dst, c.free = c.free[n-1], c.free[:n-1]
	}
	c.mu.Unlock()
	e.plain, e.err = load(dst)
	if e.err != nil {
		c.drop(e) // before the waiters wake: one that loads again starts afresh
	}
	close(e.done)
	if e.err != nil {
		c.release(e)
		return nil, e.err
	}
	return e, nil
}

// release ends a get of e.
func (c *frameCache) release(e *cachedFrame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.refs--
	c.reuse(e)
}

// leave takes e out of the cache; c.mu is held.
func (c *frameCache) leave(e *cachedFrame) {
	for i, o := range c.entries {
		if o == e {
			c.entries = append(c.entries[:i:i], c.entries[i+1:]...)
			break
		}
	}
	e.gone = true
	c.reuse(e)
}

// reuse keeps e's buffer for the next load once e is out of the cache and
// nobody reads it; c.mu is held.
func (c *frameCache) reuse(e *cachedFrame) {
	if !e.gone || e.refs > 0 || e.plain == nil {
		return
	}
	if len(c.free) < max(c.max, 1) {
		c.free = append(c.free, e.plain[:0])
	}
	e.plain = nil
}

func (c *frameCache) drop(e *cachedFrame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.leave(e)
}

// BlobDecoder decodes the blobs of packs read whole (check, repair),
// decoding a multi-blob frame once for the consecutive entries that share
// it. It is not safe for concurrent use.
type BlobDecoder struct {
	r     *Repository
	key   frameKey
	frame []byte
	err   error
	valid bool
}

// NewBlobDecoder returns a decoder for blobs of this repository.
func (r *Repository) NewBlobDecoder() *BlobDecoder { return &BlobDecoder{r: r} }

// Decode decodes and verifies the blob of entry e of pack p, whose frame's
// stored bytes are stored, appending to buf[:0]. Errors match
// ErrCorruptBlob.
func (d *BlobDecoder) Decode(p blob.ID, e pack.Entry, stored, buf []byte) ([]byte, error) {
	if !e.Storage.Framed() {
		return d.r.DecodeBlob(e.ID, e.Type, e.Storage, int(e.RawLength), stored, buf)
	}
	k := frameKey{p, e.Offset, e.Length}
	if !d.valid || d.key != k {
		d.key, d.valid = k, true
		d.frame, d.err = d.r.decodeFrame(e.ID, e.Type, e.Storage, stored, d.frame, false)
	}
	if d.err != nil {
		return nil, d.err
	}
	return d.r.blobInFrame(e.ID, e.Inner, e.RawLength, d.frame, buf)
}
