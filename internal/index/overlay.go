package index

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/blob"
	bolt "go.etcd.io/bbolt"
)

// This file holds the in-memory overlay of a read-only Index and the
// bookkeeping of which index files the cache file holds.

// overlayLookup finds a blob in the overlay.
func (ix *Index) overlayLookup(id blob.ID) (Location, bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if len(ix.overlay) == 0 {
		return Location{}, false
	}
	l, ok := ix.overlay[id]
	if !ok {
		return Location{}, false
	}
	return ix.location(l), true
}

// overlayLoc is a blob's location in the overlay, its pack named by its
// place in oPackIDs: 24 bytes instead of Location's 64, for an overlay that
// holds every new blob of a backup (a third of its peak heap before).
type overlayLoc struct {
	pack                             uint32
	typ                              blob.Type
	storage                          pack.Storage
	offset, length, rawLength, inner uint32
}

// location expands l; ix.mu is held.
func (ix *Index) location(l overlayLoc) Location {
	return Location{Pack: ix.oPackIDs[l.pack], Type: l.typ, Storage: l.storage, Offset: uint64(l.offset),
		Length: l.length, RawLength: l.rawLength, Inner: l.inner}
}

// addOverlay records a pack in the overlay. A blob the overlay already
// holds keeps its location. The file is not consulted: a blob in both is
// found in the overlay first, at a location as valid as the file's, and
// checking would fault file pages into the process for every new blob.
func (ix *Index) addOverlay(id blob.ID, size uint64, entries []pack.Entry) error {
	_, err := ix.addOverlayDups(id, size, entries, false)
	return err
}

// addOverlayDups is addOverlay; with dups it returns the entries whose blob
// the overlay held already (at another location).
func (ix *Index) addOverlayDups(id blob.ID, size uint64, entries []pack.Entry, dups bool) ([]pack.Entry, error) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	num, ok := ix.oPackNums[id]
	if !ok {
		num = uint32(len(ix.oPackIDs))
		ix.oPackIDs = append(ix.oPackIDs, id)
		ix.oPackNums[id] = num
	}
	ix.oPacks[id] = PackInfo{Size: size, Count: uint32(len(entries)), Type: packType(entries)}
	var held []pack.Entry
	for _, e := range entries {
		if l, ok := ix.overlay[e.ID]; ok {
			if dups && (l.pack != num || uint64(l.offset) != e.Offset) {
				held = append(held, e)
			}
			continue
		}
		if e.Offset > 1<<32-1 {
			return nil, fmt.Errorf("index: blob %s at offset %d: packs larger than 4 GiB are not supported", e.ID.Short(), e.Offset)
		}
		ix.overlay[e.ID] = overlayLoc{pack: num, typ: e.Type, storage: e.Storage, offset: uint32(e.Offset),
			length: e.Length, rawLength: e.RawLength, inner: e.Inner}
	}
	return held, nil
}

// OverlaySize returns the number of blobs held in memory because the cache
// file was open read-only.
func (ix *Index) OverlaySize() int {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return len(ix.overlay)
}

// ReadOnly reports whether the cache file is open read-only.
func (ix *Index) ReadOnly() bool { return ix.readOnly }

// IndexedPack is one pack of an index file.
type IndexedPack struct {
	ID      blob.ID
	Size    uint64
	Entries []pack.Entry
}

// DirtyMark is a name in the files bucket that no index file has: while
// it is there, the cache file holds packs (or lacks removals) that the
// repository's index files do not agree with yet. A command killed in that
// window leaves it, and the next command, finding a name the repository
// lacks, rebuilds the cache instead of trusting it.
const DirtyMark = "index/~unsaved"

// MarkDirty records DirtyMark (writable Index only).
func (ix *Index) MarkDirty() error {
	if ix.readOnly {
		return ErrReadOnly
	}
	return ix.update(func(tx *bolt.Tx) error { return tx.Bucket(bucketFiles).Put([]byte(DirtyMark), nil) })
}

// ClearDirty removes DirtyMark: the cache agrees with the index files
// again.
func (ix *Index) ClearDirty() error {
	if ix.readOnly {
		return nil
	}
	return ix.update(func(tx *bolt.Tx) error { return tx.Bucket(bucketFiles).Delete([]byte(DirtyMark)) })
}

// Files returns the names of the index files the cache file holds.
func (ix *Index) Files() (map[string]bool, error) {
	files := map[string]bool{}
	err := ix.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketFiles).ForEach(func(k, _ []byte) error { files[string(k)] = true; return nil })
	})
	return files, err
}

// AddFile merges the packs of index file name and records the file, in one
// transaction. A read-only Index adds the packs to its overlay and does not
// record the file.
func (ix *Index) AddFile(name string, packs []IndexedPack) error {
	if ix.readOnly {
		for _, p := range packs {
			if err := ix.addOverlay(p.ID, p.Size, p.Entries); err != nil {
				return err
			}
		}
		return nil
	}
	// Blob records go in in key order: bbolt splits nodes only at commit,
	// so random inserts into one transaction cost quadratic copying.
	type rec struct {
		num uint32
		e   pack.Entry
	}
	err := ix.update(func(tx *bolt.Tx) error {
		var recs []rec
		for _, p := range packs {
			num, err := packNumber(tx, p.ID, p.Size, len(p.Entries), packType(p.Entries))
			if err != nil {
				return err
			}
			for _, e := range p.Entries {
				recs = append(recs, rec{num, e})
			}
		}
		slices.SortFunc(recs, func(a, b rec) int { return bytes.Compare(a.e.ID[:], b.e.ID[:]) })
		blobs := tx.Bucket(bucketBlobs)
		for _, r := range recs {
			if blobs.Get(r.e.ID[:]) != nil {
				continue
			}
			if err := putBlob(blobs, r.num, r.e); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketFiles).Put([]byte(name), nil)
	})
	if err != nil {
		return err
	}
	for _, p := range packs {
		ix.filterAdd(p.Entries)
	}
	return nil
}

// RemoveFiles forgets that the cache holds the given index files (after
// they were replaced in the repository by files with the same packs).
func (ix *Index) RemoveFiles(names []string) error {
	if ix.readOnly {
		return ErrReadOnly
	}
	return ix.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketFiles)
		for _, n := range names {
			if err := b.Delete([]byte(n)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Reset empties the cache file (before a rebuild).
func (ix *Index) Reset() error {
	if ix.readOnly {
		return ErrReadOnly
	}
	ix.mu.Lock()
	clear(ix.overlay)
	clear(ix.oPacks)
	clear(ix.oPackNums)
	ix.oPackIDs = nil
	ix.filt.free()
	ix.filt = newFilter(0)
	ix.filt.dirty = true
	ix.mu.Unlock()
	return ix.update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketBlobs, bucketPacks, bucketFiles, bucketPackNums} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Delete([]byte("nextpack"))
	})
}

// Hold adds a pack to the in-memory overlay only, also when the cache file
// is open for writing: for a repository that lives for one command (a tape
// restore's spool), whose index is never kept, so that indexing it costs
// neither transactions nor index files. It returns the entries whose blob
// the overlay already held at another location (other copies of it).
func (ix *Index) Hold(id blob.ID, size uint64, entries []pack.Entry) (dups []pack.Entry, err error) {
	return ix.addOverlayDups(id, size, entries, true)
}
