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
	if _, err := r.verifyBlob(id, int(rawLength), frame[inner:end]); err != nil {
		return nil, err
	}
	return append(buf[:0], frame[inner:end]...), nil
}

// readFramed reads blob id from a multi-blob frame at loc, through the
// cache of decoded frames.
func (r *Repository) readFramed(ctx context.Context, id blob.ID, loc index.Location, buf []byte) ([]byte, error) {
	if uint64(loc.Length) > r.maxFramePlain()+crypto.Overhead || uint64(loc.Inner)+uint64(loc.RawLength) > r.maxFramePlain() {
		return nil, fmt.Errorf("blob %s in pack %s: %w: the index gives its frame %d bytes and the blob %d bytes at %d, more than a frame can have; the index is damaged or was tampered with (run `stasis repair index`)",
			id, loc.Pack, ErrCorruptBlob, loc.Length, loc.RawLength, loc.Inner)
	}
	load := func() ([]byte, error) {
		bp := storedFrames.Get().(*[]byte)
		defer storedFrames.Put(bp)
		if cap(*bp) < int(loc.Length) {
			*bp = make([]byte, loc.Length)
		}
		raw := (*bp)[:loc.Length]
		if err := r.packs.readAt(ctx, loc.Pack, raw, int64(loc.Offset)); err != nil {
			return nil, fmt.Errorf("read blob %s from pack %s: %w", id, loc.Pack, err)
		}
		// The decoded frame is a new slice (it is cached); raw goes back
		// to the pool.
		return r.decodeFrame(id, loc.Type, loc.Storage, raw, nil, true)
	}
	key := frameKey{loc.Pack, loc.Offset, loc.Length}
	frame, err := r.frames.get(key, load)
	if err != nil && ctx.Err() == nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		// Another reader of this frame (a mount's request) was cancelled
		// while it loaded the frame for both: load it again.
		frame, err = r.frames.get(key, load)
	}
	if err != nil {
		return nil, err
	}
	return r.blobInFrame(id, loc.Inner, loc.RawLength, frame, buf)
}

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
// one frame decode it once. Frames that fail to decode are not cached.
type frameCache struct {
	mu      sync.Mutex
	entries []*cachedFrame // most recently used last
	max     int
}

type cachedFrame struct {
	key   frameKey
	done  chan struct{} // closed once plain/err are set
	plain []byte
	err   error
}

// framesCached is how many decoded frames a repository keeps: a few per
// restore worker, at most 8 × 2 × FrameSize bytes.
const framesCached = 8

func (c *frameCache) get(k frameKey, load func() ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	for i, e := range c.entries {
		if e.key == k {
			c.entries = append(append(c.entries[:i:i], c.entries[i+1:]...), e)
			c.mu.Unlock()
			<-e.done
			return e.plain, e.err
		}
	}
	e := &cachedFrame{key: k, done: make(chan struct{})}
	if len(c.entries) >= max(c.max, 1) {
		c.entries = append(c.entries[:0:0], c.entries[1:]...)
	}
	c.entries = append(c.entries, e)
	c.mu.Unlock()
	e.plain, e.err = load()
	if e.err != nil {
		c.drop(e) // before the waiters wake: one that loads again starts afresh
	}
	close(e.done)
	return e.plain, e.err
}

func (c *frameCache) drop(e *cachedFrame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, o := range c.entries {
		if o == e {
			c.entries = append(c.entries[:i:i], c.entries[i+1:]...)
			return
		}
	}
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
