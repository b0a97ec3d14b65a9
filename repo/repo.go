// Package repo is the stasis repository: immutable, content-addressed
// objects in a storage backend (package backend: a local directory or an
// S3-compatible object store), plus a client-side cache.
//
//	config              JSON, written once by init (format version, id, chunker
//	                    polynomial, BLAKE3 id key, chunk profiles, compression;
//	                    in an encrypted repository the secrets are sealed)
//	keys/<id>           key files: the master key sealed under a password
//	                    (encrypted repositories only; see keys.go)
//	packs/xx/<id>       pack files (package pack), named by the BLAKE3 of their bytes
//	index/<id>          index files: which blobs each pack holds (indexfile.go)
//	snapshots/<id>      snapshot files (JSON), named by the BLAKE3 of their bytes
//	dicts/<id>          compression dictionaries
//	tape/<set>/<vol>    tape catalogs
//	locks/<id>.<seq>    lock objects (package lock)
//
// The bbolt index (package index) and copies of snapshot files live in a
// cache directory of the client (cache.go), rebuilt from the index files
// whenever it is missing or out of date.
//
// Write ordering: a pack is stored (local: temp file, fsync, rename, fsync
// of the directory; S3: one PUT of its final name), then an index file
// naming it, and only then a snapshot that needs it. A crash at any point
// therefore leaves every earlier snapshot restorable; what it leaves behind
// is packs no index file names, which prune removes.
//
// Repositories are encrypted unless created with InitOptions.InsecureNoPassword:
// blobs, pack headers, index files and snapshot files are sealed with
// XChaCha20-Poly1305 under the master key (package crypto), which only key
// files hold.
//
// A Repository is safe for concurrent use by multiple goroutines; any
// number of processes on any number of hosts may use one repository at once
// under the rules of package lock.
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
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/crypto"
	"github.com/zeebo/blake3"
)

// Repository is an open repository.
type Repository struct {
	st       backend.Storage
	loc      string // st.Location(), for messages
	cacheDir string
	cfg      Config
	idKey    []byte
	idx      *index.Index

	privateIdx string        // a cache file of this process alone, removed by Close
	cacheWait  time.Duration // OpenOptions.CacheWait

	knownMu  sync.Mutex
	known    map[string]bool // index files in the cache's view (cache file or overlay)
	caughtUp time.Time       // last catchUp after a missed lookup

	unsavedMu sync.Mutex
	unsaved   unsavedIndex

	mk    *crypto.MasterKey // nil: unencrypted
	keyID string            // key file that opened the repository

	comp         atomic.Pointer[compressor] // zstd encoder/decoder with the current dictionaries
	dictMu       sync.Mutex
	retired      []*compressor // replaced by a new dictionary; closed by Close
	sampler      dictSampler
	dictProblems []string

	hashers   sync.Pool
	sealBufs  sync.Pool // *[]byte for sealed blobs on their way into a pack
	compBufs  sync.Pool // *[]byte for compressed blobs on their way into a pack
	frameBufs sync.Pool // *[]byte for the plaintext of frames being stored

	frames frameCache // decoded multi-blob frames (frame.go)
	// framesDecoded counts the data frames readFramed decoded (DataFramesDecoded).
	framesDecoded atomic.Int64

	mu      sync.Mutex
	pending map[blob.ID]struct{} // blobs in packs not yet indexed
	packers map[blob.Type]*packer

	packs *packReader

	deg degradedState // lost compression dictionaries (dictdamage.go)
}

// OpenOptions tune Open.
type OpenOptions struct {
	// CacheDir is the client's cache directory, which holds one
	// subdirectory per repository (named by its id); empty means
	// $XDG_CACHE_HOME/stasis (see DefaultCacheDir).
	CacheDir string
	// Exclusive says that the caller holds an exclusive repository lock:
	// the index cache is then kept open for writing (prune and repair
	// update it in place).
	Exclusive bool
	// SkipIndexFiles opens the cache for writing without reading the
	// index files (for repair index, which rebuilds them: a damaged index
	// file would otherwise stop Open). The view is empty until RebuildIndex.
	SkipIndexFiles bool
	// CacheWait bounds the wait for another command on this host that is
	// merging index files into the shared cache; 0 means DefaultMergeWait.
	CacheWait time.Duration
	// Password is called, once, when the repository is encrypted; nil
	// means no password is available (Open then fails with an error
	// matching crypto.ErrNoPassword).
	Password func(ctx context.Context) ([]byte, error)
}

// Init creates a repository in st, which must hold no objects. It is
// encrypted with a first key file for o.Password, unless o.InsecureNoPassword.
func Init(ctx context.Context, st backend.Storage, o InitOptions, oo OpenOptions) (*Repository, error) {
	dir := st.Location()
	if !o.InsecureNoPassword && len(o.Password) == 0 {
		return nil, fmt.Errorf("init %s: %w", dir, ErrInitNoPassword)
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
	if _, err := st.Stat(ctx, "config"); err == nil {
		return nil, fmt.Errorf("init %s: %w", dir, ErrExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("init %s: %w", dir, err)
	}
	errNotEmpty := errors.New("not empty")
	err = st.List(ctx, "", func(backend.ObjectInfo) error { return errNotEmpty })
	if errors.Is(err, errNotEmpty) {
		return nil, fmt.Errorf("init %s: it is not empty; choose an empty or new directory, bucket or prefix", dir)
	}
	if err != nil {
		return nil, fmt.Errorf("init %s: %w", dir, err)
	}
	b := st
	var keyID string
	if mk != nil {
		// The key file goes first: a config without a key would be a
		// repository nobody can open.
		if keyID, err = writeKeyFile(ctx, b, mk, o.Password, kdfOrDefault(o.KDF)); err != nil {
			return nil, fmt.Errorf("init %s: %w", dir, err)
		}
	}
	data, err := json.MarshalIndent(fileCfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := backend.PutBytes(ctx, b, "config", append(data, '\n')); err != nil {
		return nil, fmt.Errorf("init %s: %w", dir, err)
	}
	return open(ctx, b, cfg, mk, keyID, oo)
}

// Open opens the repository in st. It fails with a *NoRepositoryError,
// matching ErrNoRepository, when there is none.
func Open(ctx context.Context, st backend.Storage, o OpenOptions) (*Repository, error) {
	b := st
	dir := st.Location()
	data, err := backend.ReadAll(ctx, b, "config", maxConfigSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &NoRepositoryError{Location: dir}
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
	if !o.SkipIndexFiles {
		if err := refuseLegacyIndex(ctx, b); err != nil {
			return nil, err
		}
	}
	if !cfg.Encrypted {
		if err := refuseKeysInPlainRepo(ctx, b, dir); err != nil {
			return nil, err
		}
	}
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
		// The key derivation (argon2id) used tens of MiB that nothing
		// needs any more: give them back now, or they stay in the
		// process's resident set for the whole command.
		debug.FreeOSMemory()
		if err != nil {
			return nil, err
		}
		if cfg, err = openConfig(cfg, mk); err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
	}
	return open(ctx, b, cfg, mk, keyID, o)
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
func open(ctx context.Context, b backend.Storage, cfg Config, mk *crypto.MasterKey, keyID string, o OpenOptions) (*Repository, error) {
	dir := b.Location()
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
	cacheDir := filepath.Join(o.CacheDir, cfg.ID)
	if o.CacheDir == "" {
		var err error
		if cacheDir, err = DefaultCacheDir(cfg.ID); err != nil {
			return nil, err
		}
	}
	r := &Repository{st: b, loc: dir, cacheDir: cacheDir, cacheWait: o.CacheWait, cfg: cfg, idKey: key, mk: mk, keyID: keyID,
		pending: map[blob.ID]struct{}{}, packers: map[blob.Type]*packer{}, frames: frameCache{max: framesCached}}
	idx, err := r.openIndexMode(ctx, o.Exclusive || o.SkipIndexFiles, o.CacheWait, o.SkipIndexFiles)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	r.idx = idx
	r.hashers.New = func() any { h, _ := blake3.NewKeyed(key); return h }
	c, problems, err := r.loadCompressor(ctx)
	if err != nil {
		r.closeIndex()
		return nil, err
	}
	r.comp.Store(c)
	r.dictProblems = problems
	r.sampler.done = c.dictID != 0 || cfg.Compression != CompressionZstd
	r.packs = newPackReader(b)
	for _, t := range []blob.Type{blob.Data, blob.Tree} {
		r.packers[t] = newPacker(r, t)
	}
	return r, nil
}

func (r *Repository) closeIndex() error {
	err := r.idx.Close()
	if r.privateIdx != "" {
		os.Remove(r.privateIdx)
		os.Remove(r.privateIdx + ".filter")
	}
	return err
}

// Close flushes nothing: call Flush first to keep blobs saved since the last
// flush. It releases the index and open files.
func (r *Repository) Close() error {
	for _, p := range r.packers {
		p.abort()
	}
	r.packs.close()
	r.comp.Load().dec.Close()
	r.dictMu.Lock()
	for _, c := range r.retired {
		c.dec.Close()
	}
	r.retired = nil
	r.dictMu.Unlock()
	return r.closeIndex()
}

// Location returns the repository's location (a directory or an s3: URL),
// for messages.
func (r *Repository) Location() string { return r.loc }

// CacheDir returns the client's cache directory of this repository.
func (r *Repository) CacheDir() string { return r.cacheDir }

// Config returns the repository configuration.
func (r *Repository) Config() Config { return r.cfg }

// Index gives access to the bbolt index (for check, stats and repair).
func (r *Repository) Index() *index.Index { return r.idx }

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
	has, err := r.idx.Has(id)
	if err != nil || !has {
		return false, err
	}
	// In a repository that lost a dictionary, only a blob that decodes.
	return r.BlobUsable(context.Background(), id)
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
		// In a repository that lost a dictionary, an indexed blob counts
		// only if it decodes; otherwise it is stored again.
		if ok, err := r.BlobUsable(ctx, id); err != nil || ok {
			return SaveResult{}, err
		}
	}
	if !r.claimPending(id) {
		return SaveResult{}, nil // another goroutine is saving it
	}
	return r.storeBlob(ctx, t, id, data)
}

// storeBlob compresses data and appends it to a pack of type t without
// looking at the index; the caller has put id in r.pending. SaveBlob uses it
// for new blobs, and prune to rewrite live blobs of packs it repacks.
func (r *Repository) storeBlob(ctx context.Context, t blob.Type, id blob.ID, data []byte) (res SaveResult, err error) {
	defer func() {
		if err != nil {
			// Not stored: a later save must write it (the packer forgot the
			// ids of a pack it discarded; this one may never have reached one).
			r.mu.Lock()
			delete(r.pending, id)
			r.mu.Unlock()
		}
	}()
	stored, storage := data, pack.Raw
	var buf []byte
	if r.cfg.Compression == CompressionZstd {
		c := r.comp.Load()
		if c.dictID == 0 && t == blob.Data && !r.cfg.framed() {
			if err := r.sampleForDict(ctx, data); err != nil {
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

// claimPending marks id as being saved by the caller and reports whether
// it was not already: of several goroutines saving the same new blob, one
// stores it.
func (r *Repository) claimPending(id blob.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.pending[id]; dup {
		return false
	}
	r.pending[id] = struct{}{}
	return true
}

// Flush finishes the packs being written and writes an index file naming
// them, so that every blob saved so far is durable and indexed.
func (r *Repository) Flush(ctx context.Context) error {
	for _, t := range []blob.Type{blob.Data, blob.Tree} {
		if err := r.packers[t].flush(ctx); err != nil {
			return err
		}
	}
	return r.writeIndex(ctx, true)
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
		// Perhaps another client stored it after this view was built.
		if loc, ok, err = r.lookupAfterCatchUp(ctx, id); err != nil {
			return nil, fmt.Errorf("look up blob %s: %w", id, err)
		}
	}
	if !ok {
		return nil, fmt.Errorf("blob %s: %w in the index (run `stasis check`)", id, ErrBlobNotFound)
	}
	return r.LoadBlobAt(ctx, id, loc, buf)
}

// LoadBlobAt is LoadBlob for a blob whose location the caller looked up
// (LookupBlobs).
func (r *Repository) LoadBlobAt(ctx context.Context, id blob.ID, loc index.Location, buf []byte) ([]byte, error) {
	data, err := r.ReadBlobAt(ctx, id, loc, buf)
	if err != nil && isDamage(err) {
		// In a repository that lost a dictionary, a later backup may
		// have stored a copy that decodes (dictdamage.go).
		return r.loadOtherCopy(ctx, id, loc, buf, err)
	}
	return data, err
}

// ReadBlobAt reads blob id from the given location and verifies it. The
// location's lengths come from the index, which nothing authenticates: they
// are checked (checkBlobLength) before anything is allocated for them.
func (r *Repository) ReadBlobAt(ctx context.Context, id blob.ID, loc index.Location, buf []byte) ([]byte, error) {
	if loc.Storage.Framed() {
		return r.readFramed(ctx, id, loc, buf)
	}
	if err := r.checkBlobLength(ctx, id, loc); err != nil {
		return nil, err
	}
	raw := make([]byte, loc.Length)
	if err := r.packs.readAt(ctx, loc.Pack, raw, int64(loc.Offset)); err != nil {
		return nil, fmt.Errorf("read blob %s from pack %s: %w", id, loc.Pack, err)
	}
	return r.DecodeBlob(id, loc.Type, loc.Storage, int(loc.RawLength), raw, buf)
}

// maxChunk returns the largest data blob (plaintext) the repository's
// chunk profiles make.
func (r *Repository) maxChunk() uint32 {
	var m uint
	for _, p := range r.cfg.Profiles {
		m = max(m, p.Max)
	}
	return uint32(m) // validate bounds profiles to 64 MiB
}

// checkBlobLength refuses a location whose lengths no blob of its type can
// have, before ReadBlobAt allocates loc.Length bytes: a data blob is at
// most the largest chunk (stored raw when compression does not make it
// smaller) plus the AEAD overhead. Tree blobs have no fixed bound; one
// longer than any data blob must lie within the pack as it is stored
// (its real size, from the storage, not the index).
func (r *Repository) checkBlobLength(ctx context.Context, id blob.ID, loc index.Location) error {
	maxRaw := r.maxChunk()
	maxStored := uint64(maxRaw) + crypto.Overhead
	if loc.Type == blob.Data && (loc.RawLength > maxRaw || uint64(loc.Length) > maxStored) {
		return fmt.Errorf("blob %s in pack %s: %w: the index gives it %d bytes (%d decoded), more than a data blob can have (%d, %d decoded); the index is damaged or was tampered with (run `stasis repair index`)",
			id, loc.Pack, ErrCorruptBlob, loc.Length, loc.RawLength, maxStored, maxRaw)
	}
	if uint64(loc.Length) <= maxStored {
		return nil
	}
	size, err := r.packs.size(ctx, loc.Pack)
	if err != nil {
		return fmt.Errorf("read blob %s from pack %s: %w", id, loc.Pack, err)
	}
	if loc.Offset+uint64(loc.Length) > uint64(size) {
		return fmt.Errorf("blob %s in pack %s: %w: the index gives it %d bytes at offset %d, beyond the end of the pack (%d bytes); the index is damaged or was tampered with (run `stasis repair index`)",
			id, loc.Pack, ErrCorruptBlob, loc.Length, loc.Offset, size)
	}
	return nil
}

// maxDecodeHint bounds the buffer DecodeBlob allocates up front for a tree
// blob from its claimed raw length; a longer one grows as it decodes (the
// zstd decoder's own limit, WithDecoderMaxMemory, bounds it).
const maxDecodeHint = 16 << 20

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
		if t == blob.Data && (rawLength < 0 || rawLength > int(r.maxChunk())) {
			return nil, fmt.Errorf("blob %s: %w: %d bytes decoded claimed, more than a data blob can have (%d)", id, ErrCorruptBlob, rawLength, r.maxChunk())
		}
		if cap(buf) < rawLength {
			buf = make([]byte, 0, min(rawLength, max(int(r.maxChunk()), maxDecodeHint)))
		}
		c := r.comp.Load()
		plain, err = c.dec.DecodeAll(stored, buf[:0])
		if errors.Is(err, zstd.ErrUnknownDictionary) && r.reloadDicts(c) {
			// Another client made a dictionary after this one opened.
			plain, err = r.comp.Load().dec.DecodeAll(stored, buf[:0])
		}
		if err != nil {
			return nil, r.decompressError(r.comp.Load(), id, stored, err)
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

// packReader reads byte ranges of packs from the storage. On a local
// directory it keeps up to openPacks pack files open and reads with pread
// (the page cache does the rest). On an object store, where every read is
// a request, it fetches a window of readWindow bytes from the requested
// offset and keeps the last few windows, so that a restore reading a file's
// chunks in pack order makes one request per window instead of one per
// chunk.
type packReader struct {
	st     backend.Storage
	files  backend.FileOpener     // nil: not local
	ranges backend.ObjectReaderAt // nil: not ranges of local files
	window int64

	mu    sync.Mutex
	wins  []*packWindow     // most recently used last
	sizes map[blob.ID]int64 // stored sizes of packs, from Stat (see size)
	open  map[blob.ID]*openPack
	order []blob.ID // open packs, least recently opened first
}

// size returns the stored size of a pack (one Stat per pack and process).
func (c *packReader) size(ctx context.Context, id blob.ID) (int64, error) {
	c.mu.Lock()
	n, ok := c.sizes[id]
	c.mu.Unlock()
	if ok {
		return n, nil
	}
	fi, err := c.st.Stat(ctx, PackName(id))
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	if len(c.sizes) >= 1<<16 {
		clear(c.sizes)
	}
	c.sizes[id] = fi.Size
	c.mu.Unlock()
	return fi.Size, nil
}

type packWindow struct {
	pack blob.ID
	off  int64
	data []byte
}

// openPack is an open pack file; it is closed when evicted and unused.
type openPack struct {
	f       *os.File
	refs    int
	evicted bool
}

const (
	readWindow  = 4 << 20 // a power of two (windows are aligned to it)
	readWindows = 8
	openPacks   = 64
)

func newPackReader(st backend.Storage) *packReader {
	c := &packReader{st: st, sizes: map[blob.ID]int64{}, open: map[blob.ID]*openPack{}}
	if fo, ok := st.(backend.FileOpener); ok {
		c.files = fo
	} else if ra, ok := st.(backend.ObjectReaderAt); ok {
		c.ranges = ra
	} else {
		c.window = readWindow
	}
	return c
}

func (c *packReader) readAt(ctx context.Context, id blob.ID, p []byte, off int64) error {
	if c.files != nil {
		return c.readLocal(ctx, id, p, off)
	}
	if c.ranges != nil {
		n, err := c.ranges.ReadObjectAt(ctx, PackName(id), p, off)
		return readResult(id, p, off, n, err)
	}
	if int64(len(p)) >= c.window {
		return backend.ReadAt(ctx, c.st, PackName(id), p, off)
	}
	end := off + int64(len(p))
	c.mu.Lock()
	for i, w := range c.wins {
		if w.pack == id && off >= w.off && end <= w.off+int64(len(w.data)) {
			copy(p, w.data[off-w.off:])
			c.wins = append(append(c.wins[:i:i], c.wins[i+1:]...), w)
			c.mu.Unlock()
			return nil
		}
	}
	c.mu.Unlock()
	// Windows start at multiples of the window size, so that readers of
	// neighbouring blobs (the restore's workers) share them.
	start := off &^ (c.window - 1)
	length := max(c.window, end-start)
	rc, err := c.st.Get(ctx, PackName(id), start, length)
	if err != nil {
		return err
	}
	data := make([]byte, length)
	n, err := io.ReadFull(rc, data)
	rc.Close()
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return fmt.Errorf("read %s: %w", PackName(id), err)
	}
	data = data[:n] // short at the end of the pack
	if start+int64(len(data)) < end {
		return fmt.Errorf("%s: %d of %d bytes at offset %d: object is truncated: %w", PackName(id), max(0, start+int64(len(data))-off), len(p), off, io.ErrUnexpectedEOF)
	}
	copy(p, data[off-start:])
	c.mu.Lock()
	if len(c.wins) >= readWindows {
		c.wins = c.wins[1:]
	}
	c.wins = append(c.wins, &packWindow{pack: id, off: start, data: data})
	c.mu.Unlock()
	return nil
}

// readLocal reads with pread from a pack file kept open.
func (c *packReader) readLocal(ctx context.Context, id blob.ID, p []byte, off int64) error {
	c.mu.Lock()
	e, ok := c.open[id]
	if !ok {
		c.mu.Unlock()
		f, err := c.files.OpenFile(ctx, PackName(id))
		if err != nil {
			return err
		}
		c.mu.Lock()
		if e, ok = c.open[id]; ok {
			f.Close() // opened meanwhile by another reader
		} else {
			if len(c.order) >= openPacks {
				old := c.order[0]
				c.order = c.order[1:]
				if o := c.open[old]; o != nil {
					delete(c.open, old)
					o.evicted = true
					if o.refs == 0 {
						o.f.Close()
					}
				}
			}
			e = &openPack{f: f}
			c.open[id] = e
			c.order = append(c.order, id)
		}
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
	return readResult(id, p, off, n, err)
}

// readResult is the error of a read of len(p) bytes of pack id at off
// that gave n bytes and err: nil when all were read.
func readResult(id blob.ID, p []byte, off int64, n int, err error) error {
	if n == len(p) {
		return nil
	}
	if err == io.EOF || err == nil {
		return fmt.Errorf("%s: %d of %d bytes at offset %d: object is truncated: %w", PackName(id), n, len(p), off, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("read %s: %w", PackName(id), err)
}

// close closes the open pack files.
func (c *packReader) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, o := range c.open {
		o.evicted = true
		if o.refs == 0 {
			o.f.Close()
		}
		delete(c.open, id)
	}
	c.order = nil
}

// forget drops cached windows, size and open file of a pack (it was
// deleted or moved).
func (c *packReader) forget(id blob.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wins = slices.DeleteFunc(c.wins, func(w *packWindow) bool { return w.pack == id })
	delete(c.sizes, id)
	if o := c.open[id]; o != nil {
		delete(c.open, id)
		c.order = slices.DeleteFunc(c.order, func(x blob.ID) bool { return x == id })
		o.evicted = true
		if o.refs == 0 {
			o.f.Close()
		}
	}
}
