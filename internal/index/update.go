package index

import (
	"encoding/binary"

	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/blob"
	bolt "go.etcd.io/bbolt"
)

// This file holds the index updates of prune and repair.

// SetPack records a pack and points every one of its blobs at it, replacing
// existing locations (prune uses it after repacking live blobs, so that the
// old packs can be dropped). One transaction.
func (ix *Index) SetPack(id blob.ID, size uint64, entries []pack.Entry) error {
	if ix.readOnly {
		return ErrReadOnly
	}
	return ix.update(func(tx *bolt.Tx) error {
		num, err := packNumber(tx, id, size, len(entries), packType(entries))
		if err != nil {
			return err
		}
		blobs := tx.Bucket(bucketBlobs)
		for _, e := range entries {
			if err := putBlob(blobs, num, e); err != nil {
				return err
			}
		}
		return nil
	})
}

// RemovePacks drops the records of the given packs and of every blob whose
// location is in one of them, in one transaction. Blobs indexed in other
// packs are kept. It returns the number of blob records removed. The set
// of packs is held in memory (packs are few); the blobs are scanned with a
// cursor.
func (ix *Index) RemovePacks(ids map[blob.ID]bool) (removed int, err error) {
	if ix.readOnly {
		return 0, ErrReadOnly
	}
	err = ix.update(func(tx *bolt.Tx) error {
		removed = 0
		nums := map[uint32]bool{}
		p := tx.Bucket(bucketPacks)
		for id := range ids {
			if v := p.Get(id[:]); len(v) == packValueSize {
				nums[binary.LittleEndian.Uint32(v[13:])] = true
			}
		}
		c := tx.Bucket(bucketBlobs).Cursor()
		for k, v := c.First(); k != nil; {
			if len(v) != blobValueSize || !nums[binary.LittleEndian.Uint32(v)] {
				k, v = c.Next()
				continue
			}
			key := append([]byte(nil), k...)
			if err := c.Delete(); err != nil {
				return err
			}
			removed++
			// Seek past the deleted key: Next after Delete may skip one.
			k, v = c.Seek(key)
		}
		nb := tx.Bucket(bucketPackNums)
		for num := range nums {
			if err := nb.Delete(packNumKey(num)); err != nil {
				return err
			}
		}
		for id := range ids {
			if err := p.Delete(id[:]); err != nil {
				return err
			}
		}
		return nil
	})
	return removed, err
}
