// Package index is the repository's bbolt index (index.db): blob id → pack
// location, pack → size, and a copy of every snapshot file. It is derived
// data: everything in it can be rebuilt from pack headers and snapshot files.
// Lookups go to bbolt (memory-mapped pages), never to a whole-index map, so
// memory stays flat as the repository grows.
//
// Buckets (keys are raw 32-byte ids, integers little-endian):
//
//	meta       "version" → u32, "repo" → repository id bytes
//	blobs      blob id → pack id [32] | type u8 | storage u8 | offset u64 | length u32 | rawLength u32
//	packs      pack id → size u64 | blob count u32 | type u8
//	snapshots  snapshot id → the snapshot file's bytes
//
// An Index is safe for concurrent use. Only one process can have index.db
// open at a time (bbolt takes a file lock); Open waits up to Options.Timeout.
package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/pack"
	bolt "go.etcd.io/bbolt"
)

const version = 1

var (
	bucketMeta      = []byte("meta")
	bucketBlobs     = []byte("blobs")
	bucketPacks     = []byte("packs")
	bucketSnapshots = []byte("snapshots")
)

// ErrBusy is returned by Open when another process holds index.db.
var ErrBusy = errors.New("index.db is in use by another stasis process")

// ErrMismatch is returned by Open when index.db belongs to another repository
// or format version; it must be rebuilt.
var ErrMismatch = errors.New("index.db does not match this repository")

// Index is an open index.db.
type Index struct {
	db *bolt.DB
}

// Location says where a blob is stored.
type Location struct {
	Pack      blob.ID
	Type      blob.Type
	Storage   pack.Storage
	Offset    uint64
	Length    uint32
	RawLength uint32
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
func Open(path string, repoID []byte, opts Options) (*Index, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.Timeout, ReadOnly: opts.ReadOnly, FreelistType: bolt.FreelistMapType})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("open %s: %w", path, ErrBusy)
	}
	if err != nil {
		return nil, fmt.Errorf("open index %s: %w (run `stasis repair index` to rebuild it)", path, err)
	}
	ix := &Index{db: db}
	if opts.ReadOnly {
		err = db.View(func(tx *bolt.Tx) error { return checkMeta(tx, repoID) })
	} else {
		err = db.Update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketMeta, bucketBlobs, bucketPacks, bucketSnapshots} {
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
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("index %s: %w", path, err)
	}
	return ix, nil
}

func checkMeta(tx *bolt.Tx, repoID []byte) error {
	m := tx.Bucket(bucketMeta)
	if m == nil || tx.Bucket(bucketBlobs) == nil || tx.Bucket(bucketPacks) == nil || tx.Bucket(bucketSnapshots) == nil {
		return fmt.Errorf("%w: buckets missing (run `stasis repair index`)", ErrMismatch)
	}
	if string(m.Get([]byte("repo"))) != string(repoID) {
		return fmt.Errorf("%w: it was built for another repository (run `stasis repair index`)", ErrMismatch)
	}
	if v := m.Get([]byte("version")); len(v) != 4 || binary.LittleEndian.Uint32(v) != version {
		return fmt.Errorf("%w: unknown index version (run `stasis repair index`)", ErrMismatch)
	}
	return nil
}

// Close closes the database.
func (ix *Index) Close() error { return ix.db.Close() }

func encodeLocation(l Location) []byte {
	b := make([]byte, 0, 50)
	b = append(b, l.Pack[:]...)
	b = append(b, byte(l.Type), byte(l.Storage))
	b = binary.LittleEndian.AppendUint64(b, l.Offset)
	b = binary.LittleEndian.AppendUint32(b, l.Length)
	return binary.LittleEndian.AppendUint32(b, l.RawLength)
}

func decodeLocation(b []byte) (Location, error) {
	if len(b) != 50 {
		return Location{}, fmt.Errorf("index entry of %d bytes, want 50 (run `stasis repair index`)", len(b))
	}
	var l Location
	copy(l.Pack[:], b)
	l.Type, l.Storage = blob.Type(b[32]), pack.Storage(b[33])
	l.Offset = binary.LittleEndian.Uint64(b[34:])
	l.Length = binary.LittleEndian.Uint32(b[42:])
	l.RawLength = binary.LittleEndian.Uint32(b[46:])
	return l, nil
}

// Lookup returns where blob id is stored; ok is false when it is not indexed.
func (ix *Index) Lookup(id blob.ID) (loc Location, ok bool, err error) {
	err = ix.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketBlobs).Get(id[:])
		if v == nil {
			return nil
		}
		ok = true
		loc, err = decodeLocation(v)
		return err
	})
	return loc, ok, err
}

// Has reports whether blob id is indexed.
func (ix *Index) Has(id blob.ID) (bool, error) {
	var ok bool
	err := ix.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketBlobs).Get(id[:]) != nil
		return nil
	})
	return ok, err
}

// HasAll reports whether every id is indexed, in one read transaction.
func (ix *Index) HasAll(ids []blob.ID) (bool, error) {
	ok := true
	err := ix.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBlobs)
		for _, id := range ids {
			if b.Get(id[:]) == nil {
				ok = false
				return nil
			}
		}
		return nil
	})
	return ok, err
}

// AddPack records a pack and all its blobs in one transaction. A blob that is
// already indexed keeps its existing location.
func (ix *Index) AddPack(id blob.ID, size uint64, entries []pack.Entry) error {
	return ix.db.Update(func(tx *bolt.Tx) error {
		blobs := tx.Bucket(bucketBlobs)
		var t blob.Type
		for _, e := range entries {
			t = e.Type
			if blobs.Get(e.ID[:]) != nil {
				continue
			}
			loc := Location{Pack: id, Type: e.Type, Storage: e.Storage, Offset: e.Offset, Length: e.Length, RawLength: e.RawLength}
			if err := blobs.Put(e.ID[:], encodeLocation(loc)); err != nil {
				return err
			}
		}
		v := binary.LittleEndian.AppendUint64(nil, size)
		v = binary.LittleEndian.AppendUint32(v, uint32(len(entries)))
		v = append(v, byte(t))
		return tx.Bucket(bucketPacks).Put(id[:], v)
	})
}

// Pack returns the recorded information of a pack.
func (ix *Index) Pack(id blob.ID) (info PackInfo, ok bool, err error) {
	err = ix.db.View(func(tx *bolt.Tx) error {
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

func decodePackInfo(v []byte) (PackInfo, error) {
	if len(v) != 13 {
		return PackInfo{}, fmt.Errorf("pack entry of %d bytes, want 13 (run `stasis repair index`)", len(v))
	}
	return PackInfo{Size: binary.LittleEndian.Uint64(v), Count: binary.LittleEndian.Uint32(v[8:]), Type: blob.Type(v[12])}, nil
}

// EachPack calls fn for every indexed pack, in id order, inside one read
// transaction; fn must not call other Index methods that write.
func (ix *Index) EachPack(fn func(id blob.ID, info PackInfo) error) error {
	return ix.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPacks).ForEach(func(k, v []byte) error {
			info, err := decodePackInfo(v)
			if err != nil {
				return err
			}
			return fn(blob.ID(k), info)
		})
	})
}

// EachBlob calls fn for every indexed blob, in id order.
func (ix *Index) EachBlob(fn func(id blob.ID, loc Location) error) error {
	return ix.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			loc, err := decodeLocation(v)
			if err != nil {
				return err
			}
			return fn(blob.ID(k), loc)
		})
	})
}

// Counts returns the number of indexed blobs and packs.
func (ix *Index) Counts() (blobs, packs int, err error) {
	err = ix.db.View(func(tx *bolt.Tx) error {
		blobs = tx.Bucket(bucketBlobs).Stats().KeyN
		packs = tx.Bucket(bucketPacks).Stats().KeyN
		return nil
	})
	return blobs, packs, err
}

// PutSnapshot stores a copy of a snapshot file.
func (ix *Index) PutSnapshot(id blob.ID, data []byte) error {
	return ix.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketSnapshots).Put(id[:], data) })
}

// DeleteSnapshot removes a snapshot record.
func (ix *Index) DeleteSnapshot(id blob.ID) error {
	return ix.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketSnapshots).Delete(id[:]) })
}

// EachSnapshot calls fn with every snapshot record. data is only valid
// during the call.
func (ix *Index) EachSnapshot(fn func(id blob.ID, data []byte) error) error {
	return ix.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSnapshots).ForEach(func(k, v []byte) error { return fn(blob.ID(k), v) })
	})
}
