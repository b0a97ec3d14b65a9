package repo

// Primitives of forget and prune. The policy (what is live, which packs to
// delete or repack) is the caller's: see engine.Prune. Every primitive is
// ordered so that a crash at any moment leaves a repository in which every
// remaining snapshot is restorable:
//
//   - RemoveSnapshot removes the file first, then the index record (a crash
//     in between is repaired by the next Open).
//   - Repack writes new packs and points the index at them before anything
//     is deleted; the old packs are still there and simply unused.
//   - DeletePacks removes the index records first, then the files; a crash
//     in between leaves unindexed packs, which the next prune deletes.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/index"
	"github.com/stasisbackup/stasis/repo/pack"
	bolt "go.etcd.io/bbolt"
)

// BlobSet is a set of blob ids kept on disk, in a temporary bbolt file in
// the repository's tmp/ directory, so that marking the live blobs of a large
// repository does not hold them all in memory. It is not synced to disk (it
// is scratch data) and its file is removed by Close. A BlobSet is safe for
// concurrent use.
type BlobSet struct {
	db   *bolt.DB
	path string
	n    int
}

var bucketSet = []byte("set")

// NewBlobSet creates an empty BlobSet in the repository's tmp/ directory.
func (r *Repository) NewBlobSet() (*BlobSet, error) {
	f, err := os.CreateTemp(filepath.Join(r.dir, "tmp"), "blobset-*.db")
	if err != nil {
		return nil, fmt.Errorf("create blob set in %s/tmp: %w", r.dir, err)
	}
	name := f.Name()
	f.Close()
	db, err := bolt.Open(name, 0o600, &bolt.Options{NoSync: true, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		os.Remove(name)
		return nil, fmt.Errorf("open blob set %s: %w", name, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket(bucketSet); return err }); err != nil {
		db.Close()
		os.Remove(name)
		return nil, fmt.Errorf("blob set %s: %w", name, err)
	}
	return &BlobSet{db: db, path: name}, nil
}

// Add inserts ids in one transaction and returns how many were new.
func (s *BlobSet) Add(ids ...blob.ID) (added int, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		added = 0
		b := tx.Bucket(bucketSet)
		for _, id := range ids {
			if b.Get(id[:]) != nil {
				continue
			}
			if err := b.Put(id[:], nil); err != nil {
				return err
			}
			added++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("blob set %s: %w", s.path, err)
	}
	s.n += added
	return added, nil
}

// Has reports whether id is in the set.
func (s *BlobSet) Has(id blob.ID) (bool, error) {
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketSet).Get(id[:]) != nil
		return nil
	})
	return ok, err
}

// Path returns the set's file name.
func (s *BlobSet) Path() string { return s.path }

// Len returns the number of ids added.
func (s *BlobSet) Len() int { return s.n }

// Close closes and removes the set's file.
func (s *BlobSet) Close() error {
	err := s.db.Close()
	if rerr := os.Remove(s.path); err == nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = rerr
	}
	return err
}

// RemoveSnapshot deletes a snapshot: the file (and an fsync of snapshots/),
// then its index record.
func (r *Repository) RemoveSnapshot(ctx context.Context, id blob.ID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := r.fs.Remove(SnapshotName(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove snapshot %s: %w", id.Short(), err)
	}
	if err := r.fs.SyncDir("snapshots"); err != nil {
		return fmt.Errorf("remove snapshot %s: fsync snapshots/: %w", id.Short(), err)
	}
	if err := r.idx.DeleteSnapshot(id); err != nil {
		return fmt.Errorf("remove snapshot %s from the index: %w", id.Short(), err)
	}
	return nil
}

// RepackStats says what Repack wrote.
type RepackStats struct {
	Blobs    int   // blobs copied
	Bytes    int64 // stored bytes copied
	NewPacks []blob.ID
}

// Repack copies every blob of the given packs for which keep returns true,
// and whose index location is in that pack, into new packs; each blob is
// read, verified and stored again (so compression and encryption apply as
// for a new blob). After the new packs are durable the index points those
// blobs at them. The old packs are left in place; delete them with
// DeletePacks. A blob that cannot be read fails the repack before anything
// is deleted. The caller must hold an exclusive lock: Repack must be the
// only writer.
func (r *Repository) Repack(ctx context.Context, packs []blob.ID, keep func(blob.ID) (bool, error)) (RepackStats, error) {
	var st RepackStats
	before := map[blob.ID]bool{}
	if err := r.idx.EachPack(func(id blob.ID, _ index.PackInfo) error { before[id] = true; return nil }); err != nil {
		return st, fmt.Errorf("list indexed packs: %w", err)
	}
	var buf []byte
	for _, pid := range packs {
		entries, _, err := r.ReadPackHeader(ctx, pid)
		if err != nil {
			return st, fmt.Errorf("repack %s: %w (run `stasis check --read-data`)", pid, err)
		}
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return st, err
			}
			loc, ok, err := r.idx.Lookup(e.ID)
			if err != nil {
				return st, fmt.Errorf("repack %s: look up blob %s: %w", pid.Short(), e.ID.Short(), err)
			}
			if !ok || loc.Pack != pid {
				continue // not indexed here: a duplicate, or garbage
			}
			if want, err := keep(e.ID); err != nil {
				return st, err
			} else if !want {
				continue
			}
			r.mu.Lock()
			_, dup := r.pending[e.ID]
			r.pending[e.ID] = struct{}{}
			r.mu.Unlock()
			if dup {
				continue
			}
			buf, err = r.ReadBlobAt(ctx, e.ID, loc, buf)
			if err != nil {
				return st, fmt.Errorf("repack %s: %w; nothing was deleted (run `stasis check --read-data`, then `stasis repair`)", pid.Short(), err)
			}
			res, err := r.storeBlob(ctx, loc.Type, e.ID, buf)
			if err != nil {
				return st, fmt.Errorf("repack %s: %w", pid.Short(), err)
			}
			st.Blobs++
			st.Bytes += int64(res.Stored)
		}
	}
	if err := r.Flush(ctx); err != nil {
		return st, fmt.Errorf("repack: %w", err)
	}
	var fresh []blob.ID
	if err := r.idx.EachPack(func(id blob.ID, _ index.PackInfo) error {
		if !before[id] {
			fresh = append(fresh, id)
		}
		return nil
	}); err != nil {
		return st, fmt.Errorf("list indexed packs: %w", err)
	}
	for _, id := range fresh {
		entries, size, err := r.ReadPackHeader(ctx, id)
		if err != nil {
			return st, fmt.Errorf("read back new pack %s: %w", id, err)
		}
		if err := r.idx.SetPack(id, uint64(size), entries); err != nil {
			return st, fmt.Errorf("index new pack %s: %w", id, err)
		}
		st.NewPacks = append(st.NewPacks, id)
	}
	return st, nil
}

// DeletePacks removes packs: first their index records and the records of
// blobs located in them (one transaction), then the files. Packs that are not
// indexed are only removed from disk. It returns the bytes removed from disk.
// The caller must make sure no snapshot needs a blob that is only in these
// packs, and hold an exclusive lock.
func (r *Repository) DeletePacks(ctx context.Context, ids []blob.ID) (int64, error) {
	set := make(map[blob.ID]bool, len(ids))
	for _, id := range ids {
		set[id] = true
	}
	if _, err := r.idx.RemovePacks(set); err != nil {
		return 0, fmt.Errorf("remove %d packs from the index: %w", len(ids), err)
	}
	var freed int64
	dirs := map[string]bool{}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return freed, err
		}
		name := PackName(id)
		fi, err := r.fs.Stat(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return freed, fmt.Errorf("delete pack %s: %w", id, err)
		}
		if err := r.fs.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return freed, fmt.Errorf("delete pack %s: %w", id, err)
		}
		r.packs.forget(id)
		freed += fi.Size()
		dirs[path.Dir(name)] = true
	}
	for d := range dirs {
		if err := r.fs.SyncDir(d); err != nil {
			return freed, fmt.Errorf("fsync %s: %w", d, err)
		}
	}
	return freed, nil
}

// forget closes a cached pack file that was deleted.
func (c *packCache) forget(id blob.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if o, ok := c.files[id]; ok {
		delete(c.files, id)
		o.evicted = true
		if o.refs == 0 {
			o.f.Close()
		}
	}
}

// RemoveTemp deletes the files in tmp/ (left by interrupted commands) except
// those named in keep, and returns their names. Only call it under an
// exclusive lock: a running backup writes its packs there.
func (r *Repository) RemoveTemp(ctx context.Context, keep ...string) ([]string, error) {
	ents, err := r.fs.ReadDir("tmp")
	if err != nil {
		return nil, fmt.Errorf("list %s/tmp: %w", r.dir, err)
	}
	skip := map[string]bool{}
	for _, k := range keep {
		skip[filepath.Base(k)] = true
	}
	var removed []string
	for _, e := range ents {
		if skip[e.Name()] || e.IsDir() {
			continue
		}
		name := path.Join("tmp", e.Name())
		if err := r.fs.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("remove %s: %w", name, err)
		}
		removed = append(removed, name)
	}
	return removed, nil
}

// PackOverhead is the size of a pack with count blobs minus their stored
// bytes (magic, header, trailer) when the header is not sealed.
func PackOverhead(count int) int64 {
	return int64(pack.MagicSize + pack.TrailerSize + 8 + count*pack.EntrySize)
}
