package index

import (
	"encoding/binary"

	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/pack"
	bolt "go.etcd.io/bbolt"
)

// This file holds the index updates of prune and repair.

// SetPack records a pack and points every one of its blobs at it, replacing
// existing locations (prune uses it after repacking live blobs, so that the
// old packs can be dropped). One transaction.
func (ix *Index) SetPack(id blob.ID, size uint64, entries []pack.Entry) error {
	return ix.db.Update(func(tx *bolt.Tx) error {
		blobs := tx.Bucket(bucketBlobs)
		var t blob.Type
		for _, e := range entries {
			t = e.Type
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

// RemovePacks drops the records of the given packs and of every blob whose
// location is in one of them, in one transaction. Blobs indexed in other
// packs are kept. It returns the number of blob records removed. The set
// of packs is held in memory (packs are few); the blobs are scanned with a
// cursor.
func (ix *Index) RemovePacks(ids map[blob.ID]bool) (removed int, err error) {
	err = ix.db.Update(func(tx *bolt.Tx) error {
		removed = 0
		c := tx.Bucket(bucketBlobs).Cursor()
		for k, v := c.First(); k != nil; {
			loc, err := decodeLocation(v)
			if err != nil || !ids[loc.Pack] {
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
		p := tx.Bucket(bucketPacks)
		for id := range ids {
			if err := p.Delete(id[:]); err != nil {
				return err
			}
		}
		return nil
	})
	return removed, err
}
