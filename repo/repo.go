// Package repo is the stasis repository: a directory of immutable,
// content-addressed files plus a derived bbolt index.
//
//	config              JSON, written once by init (format version, id, chunker
//	                    polynomial, BLAKE3 id key, chunk profiles, compression;
//	                    in an encrypted repository the secrets are sealed)
//	keys/<id>           key files: the master key sealed under a password
//	                    (encrypted repositories only; see keys.go)
//	packs/xx/<id>       pack files (package pack), named by the BLAKE3 of their bytes
//	snapshots/<id>      snapshot files (JSON), named by the BLAKE3 of their bytes
//	index.db            bbolt index (package index), rebuildable from the above
//	tmp/                files being written; leftovers after a crash are garbage
//	locks/              lock files
//
// Write ordering: a pack is written to tmp/, fsynced, renamed into packs/,
// its directory fsynced, and only then indexed. Trees are blobs in packs too.
// A snapshot file is written (same atomic way) only after every pack it needs
// is in place, and indexed last. A crash at any point therefore leaves every
// earlier snapshot restorable.
//
// Repositories are encrypted unless created with InitOptions.InsecureNoPassword:
// blobs, pack headers and snapshot files are sealed with XChaCha20-Poly1305
// under the master key (package crypto), which only key files hold.
//
// A Repository is safe for concurrent use by multiple goroutines.
package repo

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/crypto"
	"github.com/stasisbackup/stasis/repo/index"
	"github.com/stasisbackup/stasis/repo/pack"
	"github.com/zeebo/blake3"
)

// Repository is an open repository.
type Repository struct {
	fs    backend.FS
	dir   string
	cfg   Config
	idKey []byte
	idx   *index.Index

	mk    *crypto.MasterKey // nil: unencrypted
	keyID string            // key file that opened the repository

	comp         atomic.Pointer[compressor] // zstd encoder/decoder with the current dictionaries
	dictMu       sync.Mutex
	sampler      dictSampler
	dictProblems []string

	hashers  sync.Pool
	sealBufs sync.Pool // *[]byte for sealed blobs on their way into a pack
	compBufs sync.Pool // *[]byte for compressed blobs on their way into a pack

	mu      sync.Mutex
	pending map[blob.ID]struct{} // blobs in packs not yet indexed
	packers map[blob.Type]*packer

	packs *packCache
}

// OpenOptions tune Open.
type OpenOptions struct {
	// IndexTimeout is how long to wait for another process that has index.db open.
	IndexTimeout time.Duration
	// FS replaces the local file system (fault injection in tests).
	FS backend.FS
	// Password is called, once, when the repository is encrypted; nil
	// means no password is available (Open then fails with an error
	// matching crypto.ErrNoPassword).
	Password func(ctx context.Context) ([]byte, error)
}

// Init creates a repository in dir, which must not exist or be empty. It is
// encrypted with a first key file for o.Password, unless o.InsecureNoPassword.
func Init(ctx context.Context, dir string, o InitOptions) (*Repository, error) {
	if !o.InsecureNoPassword && len(o.Password) == 0 {
		return nil, fmt.Errorf("init %s: %w (or create an unencrypted repository on purpose with --insecure-no-password)", dir, crypto.ErrNoPassword)
	}
	cfg, err := newConfig(o)
	if err != nil {
		return nil, err
	}
	fileCfg := cfg
	var mk *crypto.MasterKey
	if cfg.Encrypted {
		if mk, err = newMasterKey(cfg); err != nil {
			return nil, fmt.Errorf("init %s: %w", dir, err)
		}
		if fileCfg, err = sealConfig(cfg, mk); err != nil {
			return nil, fmt.Errorf("init %s: %w", dir, err)
		}
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		if _, err := os.Stat(filepath.Join(dir, "config")); err == nil {
			return nil, fmt.Errorf("init %s: %w", dir, ErrExists)
		}
		return nil, fmt.Errorf("init %s: directory is not empty; choose an empty or new directory", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("init %s: %w", dir, err)
	}
	b := backend.OS{Dir: dir}
	for _, d := range []string{"snapshots", "tmp", "locks"} {
		if err := b.MkdirAll(d); err != nil {
			return nil, fmt.Errorf("init %s: %w", dir, err)
		}
	}
	for i := 0; i < 256; i++ {
		if err := b.MkdirAll(fmt.Sprintf("packs/%02x", i)); err != nil {
			return nil, fmt.Errorf("init %s: %w", dir, err)
		}
	}
	var keyID string
	if mk != nil {
		// The key file goes first: a config without a key would be a
		// repository nobody can open.
		if keyID, err = writeKeyFile(b, mk, o.Password, kdfOrDefault(o.KDF)); err != nil {
			return nil, fmt.Errorf("init %s: %w", dir, err)
		}
	}
	data, err := json.MarshalIndent(fileCfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := backend.WriteFile(b, "config", func(w io.Writer) error { _, err := w.Write(append(data, '\n')); return err }); err != nil {
		return nil, fmt.Errorf("init %s: %w", dir, err)
	}
	return open(ctx, dir, b, cfg, mk, keyID, OpenOptions{})
}

// Open opens the repository in dir. It fails with ErrNoRepository when there
// is none and with index.ErrBusy when another process holds the index.
func Open(ctx context.Context, dir string, o OpenOptions) (*Repository, error) {
	b := o.FS
	if b == nil {
		b = backend.OS{Dir: dir}
	}
	data, err := backend.ReadFile(b, "config")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w (create one with `stasis init --repo %s`)", dir, ErrNoRepository, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read config of %s: %w", dir, err)
	}
	cfg, err := DecodeConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	var mk *crypto.MasterKey
	var keyID string
	if cfg.Encrypted {
		if o.Password == nil {
			return nil, fmt.Errorf("repository %s is encrypted: %w", dir, crypto.ErrNoPassword)
		}
		pw, err := o.Password(ctx)
		if err != nil {
			return nil, fmt.Errorf("password for repository %s: %w", dir, err)
		}
		mk, keyID, err = unlock(ctx, b, dir, pw)
		clear(pw)
		if err != nil {
			return nil, err
		}
		if cfg, err = openConfig(cfg, mk); err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
	}
	return open(ctx, dir, b, cfg, mk, keyID, o)
}

// decodeIDKey decodes the hex id key of a config.
func decodeIDKey(s string) ([]byte, error) {
	k, err := hex.DecodeString(s)
	if err != nil || len(k) != 32 {
		return nil, fmt.Errorf("config: id_key is not 64 hex digits")
	}
	return k, nil
}

// open finishes Init and Open: cfg is complete (secrets opened), mk is nil
// for an unencrypted repository.
func open(ctx context.Context, dir string, b backend.FS, cfg Config, mk *crypto.MasterKey, keyID string, o OpenOptions) (*Repository, error) {
	var key []byte
	if mk != nil {
		k := mk.IDKey()
		key = k[:]
		cfg.IDKey = "" // the secret stays in the master key (see Config)
	} else {
		var err error
		if key, err = decodeIDKey(cfg.IDKey); err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	idxOpts := index.Options{Timeout: o.IndexTimeout}
	if idxOpts.Timeout == 0 {
		idxOpts.Timeout = time.Second
	}
	idx, err := index.Open(filepath.Join(dir, "index.db"), []byte(cfg.ID), idxOpts)
	if err != nil {
		return nil, err
	}
	r := &Repository{fs: b, dir: dir, cfg: cfg, idKey: key, idx: idx, mk: mk, keyID: keyID,
		pending: map[blob.ID]struct{}{}, packers: map[blob.Type]*packer{}}
	r.hashers.New = func() any { h, _ := blake3.NewKeyed(key); return h }
	c, problems, err := r.loadCompressor()
	if err != nil {
		idx.Close()
		return nil, err
	}
	r.comp.Store(c)
	r.dictProblems = problems
	r.sampler.done = c.dictID != 0 || cfg.Compression != "zstd"
	r.packs = newPackCache(b, 64)
	for _, t := range []blob.Type{blob.Data, blob.Tree} {
		r.packers[t] = newPacker(r, t)
	}
	if err := r.syncSnapshots(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// Close flushes nothing: call Flush first to keep blobs saved since the last
// flush. It releases the index and open files.
func (r *Repository) Close() error {
	for _, p := range r.packers {
		p.abort()
	}
	r.packs.close()
	r.comp.Load().dec.Close()
	return r.idx.Close()
}

// Dir returns the repository directory.
func (r *Repository) Dir() string { return r.dir }

// Config returns the repository configuration.
func (r *Repository) Config() Config { return r.cfg }

// Index gives access to the bbolt index (for check, stats and repair).
func (r *Repository) Index() *index.Index { return r.idx }

// FS returns the file access of the repository.
func (r *Repository) FS() backend.FS { return r.fs }

// Hash returns the blob id of data: keyed BLAKE3-256 with the repository key.
func (r *Repository) Hash(data []byte) blob.ID {
	h := r.hashers.Get().(*blake3.Hasher)
	h.Reset()
	h.Write(data)
	var id blob.ID
	h.Sum(id[:0])
	r.hashers.Put(h)
	return id
}

// HasBlob reports whether a blob is stored (indexed, or in a pack being written).
func (r *Repository) HasBlob(id blob.ID) (bool, error) {
	r.mu.Lock()
	_, ok := r.pending[id]
	r.mu.Unlock()
	if ok {
		return true, nil
	}
	return r.idx.Has(id)
}

// HasAllBlobs reports whether every id is indexed.
func (r *Repository) HasAllBlobs(ids []blob.ID) (bool, error) { return r.idx.HasAll(ids) }

// SaveResult tells what SaveBlob did.
type SaveResult struct {
	Added  bool // false when the blob was already stored
	Stored int  // bytes written to the pack (after compression)
}

// SaveBlob stores data under id (which must be r.Hash(data)) unless a blob
// with that id is already stored. It compresses in the caller's goroutine, so
// calling it from several goroutines uses several cores.
func (r *Repository) SaveBlob(ctx context.Context, t blob.Type, id blob.ID, data []byte) (SaveResult, error) {
	if err := ctx.Err(); err != nil {
		return SaveResult{}, err
	}
	r.mu.Lock()
	_, dup := r.pending[id]
	r.mu.Unlock()
	if dup {
		return SaveResult{}, nil
	}
	has, err := r.idx.Has(id)
	if err != nil {
		return SaveResult{}, fmt.Errorf("look up blob %s: %w", id.Short(), err)
	}
	if has {
		return SaveResult{}, nil
	}
	r.mu.Lock()
	if _, dup := r.pending[id]; dup {
		r.mu.Unlock()
		return SaveResult{}, nil
	}
	r.pending[id] = struct{}{}
	r.mu.Unlock()
	return r.storeBlob(ctx, t, id, data)
}

// storeBlob compresses data and appends it to a pack of type t without
// looking at the index; the caller has put id in r.pending. SaveBlob uses it
// for new blobs, and prune to rewrite live blobs of packs it repacks.
func (r *Repository) storeBlob(ctx context.Context, t blob.Type, id blob.ID, data []byte) (SaveResult, error) {
	stored, storage := data, pack.Raw
	var buf []byte
	if r.cfg.Compression == "zstd" {
		c := r.comp.Load()
		if c.dictID == 0 && t == blob.Data {
			if err := r.sampleForDict(data); err != nil {
				return SaveResult{}, err
			}
			c = r.comp.Load()
		}
		enc := c.enc
		if t == blob.Tree {
			enc = c.plain
		}
		bp, _ := r.compBufs.Get().(*[]byte)
		if bp == nil {
			bp = new([]byte)
		}
		defer r.compBufs.Put(bp) // add has copied the bytes when it returns
		buf = enc.EncodeAll(data, (*bp)[:0])
		*bp = buf
		if len(buf) < len(data) {
			stored, storage = buf, pack.Zstd
		}
	}
	stored, release := r.sealBlob(t, id, stored)
	defer release() // add has written the bytes when it returns
	if err := r.packers[t].add(ctx, id, storage, len(data), stored); err != nil {
		return SaveResult{}, err
	}
	return SaveResult{Added: true, Stored: len(stored)}, nil
}

// Flush finishes the packs being written, so that every blob saved so far
// is durable and indexed.
func (r *Repository) Flush(ctx context.Context) error {
	for _, t := range []blob.Type{blob.Data, blob.Tree} {
		if err := r.packers[t].flush(ctx); err != nil {
			return err
		}
	}
	return nil
}

// LoadBlob reads, decodes and verifies blob id, appending to buf[:0].
// A blob whose bytes do not hash to id gives an error matching ErrCorruptBlob.
func (r *Repository) LoadBlob(ctx context.Context, id blob.ID, buf []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	loc, ok, err := r.idx.Lookup(id)
	if err != nil {
		return nil, fmt.Errorf("look up blob %s: %w", id, err)
	}
	if !ok {
		return nil, fmt.Errorf("blob %s: %w in the index (run `stasis check`)", id, ErrBlobNotFound)
	}
	return r.ReadBlobAt(ctx, id, loc, buf)
}

// ReadBlobAt reads blob id from the given location and verifies it.
func (r *Repository) ReadBlobAt(ctx context.Context, id blob.ID, loc index.Location, buf []byte) ([]byte, error) {
	raw := make([]byte, loc.Length)
	if err := r.packs.readAt(loc.Pack, raw, int64(loc.Offset)); err != nil {
		return nil, fmt.Errorf("read blob %s from pack %s: %w", id, loc.Pack, err)
	}
	return r.DecodeBlob(id, loc.Type, loc.Storage, int(loc.RawLength), raw, buf)
}

// DecodeBlob decodes the pack bytes of blob id of type t (opening them in an
// encrypted repository, then decompressing) and verifies that they hash to
// id, appending to buf[:0]. Bytes that fail authentication, decoding or the
// hash give an error matching ErrCorruptBlob, and no data. stored and buf
// must not overlap.
func (r *Repository) DecodeBlob(id blob.ID, t blob.Type, storage pack.Storage, rawLength int, stored, buf []byte) ([]byte, error) {
	if r.mk != nil {
		ad := adBlob(t, id)
		var dst []byte
		if storage == pack.Raw && cap(buf) >= len(stored) {
			dst = buf[:0] // raw: the opened bytes are the plaintext, no copy below
		}
		opened, err := r.mk.Open(dst, stored, ad[:])
		if err != nil {
			return nil, fmt.Errorf("blob %s: %w: %v", id, ErrCorruptBlob, err)
		}
		stored = opened
		if storage == pack.Raw && dst != nil {
			return r.verifyBlob(id, rawLength, opened)
		}
	}
	var plain []byte
	switch storage {
	case pack.Raw:
		plain = append(buf[:0], stored...)
	case pack.Zstd:
		var err error
		if cap(buf) < rawLength {
			buf = make([]byte, 0, rawLength)
		}
		plain, err = r.comp.Load().dec.DecodeAll(stored, buf[:0])
		if err != nil {
			return nil, fmt.Errorf("blob %s: %w: decompress: %v", id, ErrCorruptBlob, err)
		}
	default:
		return nil, fmt.Errorf("blob %s: %w: unknown storage %d", id, ErrCorruptBlob, storage)
	}
	return r.verifyBlob(id, rawLength, plain)
}

// verifyBlob checks the length and hash of a decoded blob.
func (r *Repository) verifyBlob(id blob.ID, rawLength int, plain []byte) ([]byte, error) {
	if len(plain) != rawLength {
		return nil, fmt.Errorf("blob %s: %w: %d bytes, expected %d", id, ErrCorruptBlob, len(plain), rawLength)
	}
	if got := r.Hash(plain); got != id {
		return nil, fmt.Errorf("blob %s: %w: content hashes to %s", id, ErrCorruptBlob, got.Short())
	}
	return plain, nil
}

// PackName returns the repository-relative file name of a pack.
func PackName(id blob.ID) string {
	s := id.String()
	return path.Join("packs", s[:2], s)
}

// packCache keeps a bounded number of pack files open for reading. Reads
// run concurrently (ReadAt); a file is closed only when no read uses it.
type packCache struct {
	fs    backend.FS
	max   int
	mu    sync.Mutex
	files map[blob.ID]*openPack
}

type openPack struct {
	f       backend.File
	refs    int
	evicted bool
}

func newPackCache(fs backend.FS, max int) *packCache {
	return &packCache{fs: fs, max: max, files: map[blob.ID]*openPack{}}
}

func (c *packCache) readAt(id blob.ID, p []byte, off int64) error {
	c.mu.Lock()
	e, ok := c.files[id]
	if !ok {
		f, err := c.fs.Open(PackName(id))
		if err != nil {
			c.mu.Unlock()
			return err
		}
		if len(c.files) >= c.max {
			for k, o := range c.files {
				delete(c.files, k)
				o.evicted = true
				if o.refs == 0 {
					o.f.Close()
				}
				break
			}
		}
		e = &openPack{f: f}
		c.files[id] = e
	}
	e.refs++
	c.mu.Unlock()

	n, err := e.f.ReadAt(p, off)

	c.mu.Lock()
	e.refs--
	if e.evicted && e.refs == 0 {
		e.f.Close()
	}
	c.mu.Unlock()
	if n == len(p) {
		return nil
	}
	if err == io.EOF || err == nil {
		return fmt.Errorf("pack is truncated: %w", io.ErrUnexpectedEOF)
	}
	return err
}

func (c *packCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, o := range c.files {
		o.evicted = true
		if o.refs == 0 {
			o.f.Close()
		}
		delete(c.files, k)
	}
}
