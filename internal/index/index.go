// Package index is a client's bbolt cache of a repository's index: blob id
// → pack location, pack → size, and which of the repository's index files
// it holds. It is derived data: the repository's index files (and, behind
// them, the pack headers) are the truth, and the cache can be deleted and
// rebuilt at any time. Lookups go to bbolt (memory-mapped pages), never to a
// whole-index map, so memory stays flat as the repository grows.
//
// Buckets (keys are raw 32-byte ids, integers little-endian unless said):
//
//	meta       "version" → u32, "repo" → repository id bytes, "nextpack" → u32
//	blobs      blob id → pack number u32 | type u8 | storage u8 | offset u32 | length u32 | rawLength u32 | inner u32
//	packs      pack id → size u64 | blob count u32 | type u8 | pack number u32
//	packnums   pack number (u32 big-endian) → pack id
//	files      index file name → empty: the index files merged into the cache
//
// A blob record names its pack by a small number (assigned when the pack is
// first indexed) instead of its 32-byte id: 22 bytes instead of 54 per blob,
// about a third less index for the millions of small chunks of a database.
//
// # Sharing between processes
//
// bbolt lets one process open a file for writing, or any number for reading.
// An Index opened read-only (Options.ReadOnly) adds what it learns during
// its run (packs it writes, index files the cache does not hold yet) to an
// in-memory overlay instead of the file, so that any number of commands on
// one host can use one cache at once; the next process that gets the file
// for writing merges those index files for good (package repo does that at
// the start of every command when it can). The overlay holds only what is
// not merged, never the whole index. An Index opened for writing writes
// through to the file.
//
// An Index is safe for concurrent use.
package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/blob"
	bolt "go.etcd.io/bbolt"
)

const version = 4

var (
	bucketMeta     = []byte("meta")
	bucketBlobs    = []byte("blobs")
	bucketPacks    = []byte("packs")
	bucketFiles    = []byte("files")
	bucketPackNums = []byte("packnums")
)

// ErrBusy is returned by Open when another process holds the cache file in
// a conflicting mode for longer than Options.Timeout.
var ErrBusy = errors.New("the index cache is in use by another stasis process")

// ErrDamaged is matched by errors of a cache file that bbolt cannot read
// (it panicked); a damaged file is removed when the Index is closed, so the
// next command rebuilds it.
var ErrDamaged = errors.New("the index cache is damaged")

// ErrReadOnly is returned by the updates that only a writable Index does
// (SetPack, RemovePacks, AddFile, RemoveFiles, Reset).
var ErrReadOnly = errors.New("index cache is open read-only")

// ErrMismatch is returned by Open when index.db belongs to another repository
// or format version; it must be rebuilt.
var ErrMismatch = errors.New("index.db does not match this repository")

// Index is an open cache file, plus the in-memory overlay of a read-only one.
type Index struct {
	db       *bolt.DB
	path     string
	readOnly bool
	filt     *filter // nil: none (every lookup goes to bbolt)

	damaged atomic.Bool // a transaction panicked: remove the file at Close

	mu        sync.RWMutex
	overlay   map[blob.ID]overlayLoc // blobs not in the file
	oPackIDs  []blob.ID              // the packs overlayLoc.pack numbers
	oPackNums map[blob.ID]uint32     // and their numbers
	oPacks    map[blob.ID]PackInfo   // packs not in the file
}

// Location says where a blob is stored: the frame that holds it (Offset
// and Length in Pack) and where it lies in the frame's plaintext.
type Location struct {
	Pack      blob.ID
	Type      blob.Type
	Storage   pack.Storage
	Offset    uint64
	Length    uint32
	RawLength uint32
	Inner     uint32
}

// LocationOf returns the location of the blob of entry e of pack id.
func LocationOf(id blob.ID, e pack.Entry) Location {
	return Location{Pack: id, Type: e.Type, Storage: e.Storage, Offset: e.Offset, Length: e.Length, RawLength: e.RawLength, Inner: e.Inner}
}

// Entry returns the pack entry of blob id at l.
func (l Location) Entry(id blob.ID) pack.Entry {
	return pack.Entry{ID: id, Type: l.Type, Storage: l.Storage, Offset: l.Offset, Length: l.Length, RawLength: l.RawLength, Inner: l.Inner}
}

// PackInfo describes an indexed pack.
type PackInfo struct {
	Size  uint64
	Count uint32
	Type  blob.Type
}

// Options for Open.
type Options struct {
	Timeout  time.Duration // how long to wait for another process to close it
	ReadOnly bool
}

// Open opens (creating when needed, unless read-only) the index at path for
// the repository with the given id.
func Open(path string, repoID []byte, opts Options) (ix *Index, err error) {
	// bbolt panics on some damaged pages instead of returning an error; the
	// cache is derived data, so damage is an error its caller mends by
	// rebuilding the file.
	var db *bolt.DB
	defer func() {
		if p := recover(); p != nil {
			if db != nil {
				db.Close()
			}
			ix, err = nil, fmt.Errorf("index cache %s: %w: %v", path, ErrDamaged, p)
		}
	}()
	return open(path, repoID, opts, &db)
}

func open(path string, repoID []byte, opts Options, dbp **bolt.DB) (*Index, error) {
	// A larger first mapping saves remapping while a merge grows the file
	// (address space only: pages count in memory when touched).
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.Timeout, ReadOnly: opts.ReadOnly, FreelistType: bolt.FreelistMapType, InitialMmapSize: 64 << 20})
	*dbp = db
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("open %s: %w", path, ErrBusy)
	}
	if err != nil {
		return nil, fmt.Errorf("open index cache %s: %w", path, err)
	}
	ix := &Index{db: db, path: path, readOnly: opts.ReadOnly, overlay: map[blob.ID]overlayLoc{}, oPackNums: map[blob.ID]uint32{}, oPacks: map[blob.ID]PackInfo{}}
	// A writable open writes only to make a new file: a commit would change
	// the txid and disown the saved filter.
	err = db.View(func(tx *bolt.Tx) error { return checkMeta(tx, repoID) })
	if err != nil && !opts.ReadOnly && isNew(db) {
		err = db.Update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketMeta, bucketBlobs, bucketPacks, bucketFiles, bucketPackNums} {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			m := tx.Bucket(bucketMeta)
			if m.Get([]byte("repo")) == nil {
				if err := m.Put([]byte("repo"), repoID); err != nil {
					return err
				}
				if err := m.Put([]byte("version"), binary.LittleEndian.AppendUint32(nil, version)); err != nil {
					return err
				}
			}
			return checkMeta(tx, repoID)
		})
	}
	if err == nil {
		err = ix.openFilter()
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("index cache %s: %w", path, err)
	}
	return ix, nil
}

// openFilter loads the filter that matches the file; a writable Index
// builds one when there is none.
func (ix *Index) openFilter() error {
	txid, err := txID(ix.db)
	if err != nil {
		return err
	}
	ix.filt = loadFilter(ix.path, txid)
	if ix.filt == nil && !ix.readOnly {
		if ix.filt, err = buildFilter(ix.db); err != nil {
			return err
		}
		ix.filt.dirty = true
	}
	return nil
}

// isNew reports whether the file has no buckets yet.
func isNew(db *bolt.DB) bool {
	empty := true
	db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
	})
	return empty
}

func checkMeta(tx *bolt.Tx, repoID []byte) error {
	m := tx.Bucket(bucketMeta)
	if m == nil || tx.Bucket(bucketBlobs) == nil || tx.Bucket(bucketPacks) == nil || tx.Bucket(bucketFiles) == nil || tx.Bucket(bucketPackNums) == nil {
		return fmt.Errorf("%w: buckets missing (it is rebuilt)", ErrMismatch)
	}
	if string(m.Get([]byte("repo"))) != string(repoID) {
		return fmt.Errorf("%w: it was built for another repository (it is rebuilt)", ErrMismatch)
	}
	if v := m.Get([]byte("version")); len(v) != 4 || binary.LittleEndian.Uint32(v) != version {
		return fmt.Errorf("%w: unknown index version (it is rebuilt)", ErrMismatch)
	}
	return nil
}

// Close saves the filter of a writable Index and closes the database.
func (ix *Index) Close() error {
	var err error
	if !ix.readOnly && !ix.damaged.Load() && ix.filt != nil && (ix.filt.dirty || ix.filt.full()) {
		err = ix.saveFilter()
	}
	if cerr := ix.db.Close(); err == nil {
		err = cerr
	}
	ix.mu.Lock()
	ix.filt.free()
	ix.filt = nil
	ix.mu.Unlock()
	if ix.damaged.Load() {
		os.Remove(ix.path)
		os.Remove(filterPath(ix.path))
	}
	return err
}

// view and update run bbolt transactions, turning a panic on a damaged
// page into an error matching ErrDamaged.
func (ix *Index) view(fn func(tx *bolt.Tx) error) (err error) {
	defer ix.recoverDamage(&err)
	return ix.db.View(fn)
}

func (ix *Index) update(fn func(tx *bolt.Tx) error) (err error) {
	defer ix.recoverDamage(&err)
	return ix.db.Update(fn)
}

func (ix *Index) recoverDamage(err *error) {
	if p := recover(); p != nil {
		ix.damaged.Store(true)
		*err = fmt.Errorf("index cache %s: %w (it is rebuilt by the next command): %v", ix.path, ErrDamaged, p)
	}
}

func (ix *Index) saveFilter() error {
	if ix.filt.full() {
		f, err := buildFilter(ix.db)
		if err != nil {
			return err
		}
		ix.mu.Lock()
		ix.filt.free()
		ix.filt = f
		ix.mu.Unlock()
	}
	txid, err := txID(ix.db)
	if err != nil {
		return err
	}
	return ix.filt.save(ix.path, txid)
}

// filterAdd records new ids in the filter of a writable Index.
func (ix *Index) filterAdd(entries []pack.Entry) {
	if ix.filt == nil {
		return
	}
	ix.mu.Lock()
	for _, e := range entries {
		ix.filt.add(e.ID)
	}
	ix.mu.Unlock()
}

// ruledOut reports whether id is certainly in neither the overlay nor the
// file; inOverlay reports a hit in the overlay (loc is valid then).
func (ix *Index) probe(id blob.ID) (loc Location, inOverlay, ruledOut bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if l, ok := ix.overlay[id]; ok {
		return ix.location(l), true, false
	}
	return Location{}, false, ix.filt != nil && !ix.filt.mayHave(id)
}

const (
	blobValueSize = 22
	packValueSize = 17
)

func encodeLocation(num uint32, l Location) []byte {
	b := make([]byte, 0, blobValueSize)
	b = binary.LittleEndian.AppendUint32(b, num)
	b = append(b, byte(l.Type), byte(l.Storage))
	b = binary.LittleEndian.AppendUint32(b, uint32(l.Offset))
	b = binary.LittleEndian.AppendUint32(b, l.Length)
	b = binary.LittleEndian.AppendUint32(b, l.RawLength)
	return binary.LittleEndian.AppendUint32(b, l.Inner)
}

// packNumKey is the big-endian key of a pack number (packnums sorts by it).
func packNumKey(num uint32) []byte { return binary.BigEndian.AppendUint32(nil, num) }

// decodeLocation decodes a blob record, resolving its pack number in tx.
func decodeLocation(tx *bolt.Tx, b []byte) (Location, error) {
	if len(b) != blobValueSize {
		return Location{}, fmt.Errorf("index entry of %d bytes, want %d (run `stasis repair index`)", len(b), blobValueSize)
	}
	num := binary.LittleEndian.Uint32(b)
	id := tx.Bucket(bucketPackNums).Get(packNumKey(num))
	if len(id) != blob.IDSize {
		return Location{}, fmt.Errorf("index names pack number %d, which it does not record (run `stasis repair index`)", num)
	}
	return locationOf(blob.ID(id), b), nil
}

// locationOf decodes blob record b (of blobValueSize bytes) of a blob in
// pack packID.
func locationOf(packID blob.ID, b []byte) Location {
	l := Location{Pack: packID, Type: blob.Type(b[4]), Storage: pack.Storage(b[5])}
	l.Offset = uint64(binary.LittleEndian.Uint32(b[6:]))
	l.Length = binary.LittleEndian.Uint32(b[10:])
	l.RawLength = binary.LittleEndian.Uint32(b[14:])
	l.Inner = binary.LittleEndian.Uint32(b[18:])
	return l
}

// packNumber returns the number of pack id, assigning the next one (and
// recording the pack) when it is new.
func packNumber(tx *bolt.Tx, id blob.ID, size uint64, count int, t blob.Type) (uint32, error) {
	packs := tx.Bucket(bucketPacks)
	if v := packs.Get(id[:]); len(v) == packValueSize {
		num := binary.LittleEndian.Uint32(v[13:])
		return num, packs.Put(id[:], encodePackInfo(PackInfo{Size: size, Count: uint32(count), Type: t}, num))
	}
	meta := tx.Bucket(bucketMeta)
	var num uint32 = 1
	if v := meta.Get([]byte("nextpack")); len(v) == 4 {
		num = binary.LittleEndian.Uint32(v)
	}
	if num == 0 {
		return 0, errors.New("index: pack numbers exhausted (run `stasis repair index`)")
	}
	if err := meta.Put([]byte("nextpack"), binary.LittleEndian.AppendUint32(nil, num+1)); err != nil {
		return 0, err
	}
	if err := tx.Bucket(bucketPackNums).Put(packNumKey(num), id[:]); err != nil {
		return 0, err
	}
	return num, packs.Put(id[:], encodePackInfo(PackInfo{Size: size, Count: uint32(count), Type: t}, num))
}

func encodePackInfo(info PackInfo, num uint32) []byte {
	v := binary.LittleEndian.AppendUint64(nil, info.Size)
	v = binary.LittleEndian.AppendUint32(v, info.Count)
	v = append(v, byte(info.Type))
	return binary.LittleEndian.AppendUint32(v, num)
}

// Lookup returns where blob id is stored; ok is false when it is not indexed.
func (ix *Index) Lookup(id blob.ID) (loc Location, ok bool, err error) {
	if loc, in, out := ix.probe(id); in || out {
		return loc, in, nil
	}
	err = ix.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketBlobs).Get(id[:])
		if v == nil {
			return nil
		}
		ok = true
		loc, err = decodeLocation(tx, v)
		return err
	})
	return loc, ok, err
}

// LookupMany is Lookup for many ids in one read transaction: locs[i] and
// found[i] are those of ids[i]. A pack's number is resolved once per call.
func (ix *Index) LookupMany(ids []blob.ID) (locs []Location, found []bool, err error) {
	locs, found = make([]Location, len(ids)), make([]bool, len(ids))
	err = ix.view(func(tx *bolt.Tx) error {
		blobs, nums := tx.Bucket(bucketBlobs), tx.Bucket(bucketPackNums)
		packs := map[uint32]blob.ID{}
		for i, id := range ids {
			loc, in, out := ix.probe(id)
			if in || out {
				locs[i], found[i] = loc, in
				continue
			}
			v := blobs.Get(id[:])
			if v == nil {
				continue
			}
			if len(v) != blobValueSize {
				return fmt.Errorf("index entry of %d bytes, want %d (run `stasis repair index`)", len(v), blobValueSize)
			}
			num := binary.LittleEndian.Uint32(v)
			pack, ok := packs[num]
			if !ok {
				pid := nums.Get(packNumKey(num))
				if len(pid) != blob.IDSize {
					return fmt.Errorf("index names pack number %d, which it does not record (run `stasis repair index`)", num)
				}
				pack = blob.ID(pid)
				packs[num] = pack
			}
			locs[i], found[i] = locationOf(pack, v), true
		}
		return nil
	})
	return locs, found, err
}

// Has reports whether blob id is indexed.
func (ix *Index) Has(id blob.ID) (bool, error) {
	if _, in, out := ix.probe(id); in || out {
		return in, nil
	}
	var ok bool
	err := ix.view(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketBlobs).Get(id[:]) != nil
		return nil
	})
	return ok, err
}

// HasAll reports whether every id is indexed, in one read transaction.
// The ids are looked up in key order with one cursor that steps forward
// to the next id when it is near (a file's chunks are often a good part of
// the index: stepping is much cheaper than a search from the root).
func (ix *Index) HasAll(ids []blob.ID) (bool, error) {
	ids = slices.Clone(ids)
	slices.SortFunc(ids, func(a, b blob.ID) int { return bytes.Compare(a[:], b[:]) })
	ok := true
	err := ix.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketBlobs).Cursor()
		var k []byte // the cursor's key; nil before the first seek and at the end
		for _, id := range ids {
			_, in, out := ix.probe(id)
			if in {
				continue
			}
			if out {
				ok = false
				return nil
			}
			k = seekForward(c, k, id[:])
			if !bytes.Equal(k, id[:]) {
				ok = false
				return nil
			}
		}
		return nil
	})
	return ok, err
}

// seekForward moves cursor c, at key k (nil: not positioned), to the first
// key ≥ key, which is not before k: with a few steps when it is near,
// else with a seek. It returns the key it stops at (nil past the end).
func seekForward(c *bolt.Cursor, k, key []byte) []byte {
	const steps = 16
	if k != nil {
		for range steps {
			if bytes.Compare(k, key) >= 0 {
				return k
			}
			if k, _ = c.Next(); k == nil {
				return nil
			}
		}
	}
	k, _ = c.Seek(key)
	return k
}

// AddPack records a pack and all its blobs (in one transaction, or in the
// overlay of a read-only Index). A blob that is already indexed keeps its
// existing location.
func (ix *Index) AddPack(id blob.ID, size uint64, entries []pack.Entry) error {
	if ix.readOnly {
		return ix.addOverlay(id, size, entries)
	}
	// The pack is in no index file yet: mark the cache so that a kill
	// before the index file is stored makes the next command rebuild it.
	err := ix.update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketFiles).Put([]byte(DirtyMark), nil); err != nil {
			return err
		}
		return addPack(tx, id, size, entries)
	})
	if err != nil {
		return err
	}
	ix.filterAdd(entries)
	return nil
}

func addPack(tx *bolt.Tx, id blob.ID, size uint64, entries []pack.Entry) error {
	num, err := packNumber(tx, id, size, len(entries), packType(entries))
	if err != nil {
		return err
	}
	// In key order: bbolt splits nodes only at commit (see AddFile).
	entries = slices.Clone(entries)
	slices.SortFunc(entries, func(a, b pack.Entry) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	blobs := tx.Bucket(bucketBlobs)
	for _, e := range entries {
		if blobs.Get(e.ID[:]) != nil {
			continue
		}
		if err := putBlob(blobs, num, e); err != nil {
			return err
		}
	}
	return nil
}

// Pack returns the recorded information of a pack.
func (ix *Index) Pack(id blob.ID) (info PackInfo, ok bool, err error) {
	ix.mu.RLock()
	info, ok = ix.oPacks[id]
	ix.mu.RUnlock()
	if ok {
		return info, true, nil
	}
	err = ix.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketPacks).Get(id[:])
		if v == nil {
			return nil
		}
		ok = true
		info, err = decodePackInfo(v)
		return err
	})
	return info, ok, err
}

func packType(entries []pack.Entry) blob.Type {
	if len(entries) == 0 {
		return 0
	}
	return entries[len(entries)-1].Type
}

func putBlob(blobs *bolt.Bucket, num uint32, e pack.Entry) error {
	if e.Offset > 1<<32-1 {
		return fmt.Errorf("index: blob %s at offset %d: packs larger than 4 GiB are not supported", e.ID.Short(), e.Offset)
	}
	return blobs.Put(e.ID[:], encodeLocation(num, LocationOf(blob.ID{}, e)))
}

func decodePackInfo(v []byte) (PackInfo, error) {
	if len(v) != packValueSize {
		return PackInfo{}, fmt.Errorf("pack entry of %d bytes, want %d (run `stasis repair index`)", len(v), packValueSize)
	}
	return PackInfo{Size: binary.LittleEndian.Uint64(v), Count: binary.LittleEndian.Uint32(v[8:]), Type: blob.Type(v[12])}, nil
}

// EachPack calls fn for every indexed pack: those of the file in id order
// inside one read transaction, then those of the overlay; fn must not call
// other Index methods that write.
func (ix *Index) EachPack(fn func(id blob.ID, info PackInfo) error) error {
	err := ix.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPacks).ForEach(func(k, v []byte) error {
			info, err := decodePackInfo(v)
			if err != nil {
				return err
			}
			return fn(blob.ID(k), info)
		})
	})
	if err != nil {
		return err
	}
	ix.mu.RLock()
	packs := make(map[blob.ID]PackInfo, len(ix.oPacks))
	maps.Copy(packs, ix.oPacks)
	ix.mu.RUnlock()
	for id, info := range packs {
		if err := fn(id, info); err != nil {
			return err
		}
	}
	return nil
}

// EachBlob calls fn for every indexed blob at the location Lookup gives:
// those of the file in id order (except those the overlay holds too), then
// those of the overlay.
func (ix *Index) EachBlob(fn func(id blob.ID, loc Location) error) error {
	err := ix.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			if _, in := ix.overlayLookup(blob.ID(k)); in {
				return nil // the overlay's location is the one used
			}
			loc, err := decodeLocation(tx, v)
			if err != nil {
				return err
			}
			return fn(blob.ID(k), loc)
		})
	})
	if err != nil {
		return err
	}
	ix.mu.RLock()
	blobs := make(map[blob.ID]Location, len(ix.overlay))
	for id, l := range ix.overlay {
		blobs[id] = ix.location(l)
	}
	ix.mu.RUnlock()
	for id, loc := range blobs {
		if err := fn(id, loc); err != nil {
			return err
		}
	}
	return nil
}

// Counts returns the number of indexed blobs and packs.
func (ix *Index) Counts() (blobs, packs int, err error) {
	err = ix.view(func(tx *bolt.Tx) error {
		blobs = tx.Bucket(bucketBlobs).Stats().KeyN
		packs = tx.Bucket(bucketPacks).Stats().KeyN
		return nil
	})
	ix.mu.RLock()
	blobs += len(ix.overlay)
	packs += len(ix.oPacks)
	ix.mu.RUnlock()
	return blobs, packs, err
}
