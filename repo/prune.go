package repo

// Primitives of forget and prune. The policy (what is live, which packs to
// delete or repack) is the caller's: see engine.Prune. Every primitive is
// ordered so that a crash at any moment leaves a repository in which every
// remaining snapshot is restorable:
//
//   - RemoveSnapshot removes the snapshot object (and its cached copy).
//   - Repack writes new packs and their index file before anything is
//     deleted; the old packs are still there and simply unused.
//   - DeletePacks first rewrites the index files without the packs (new
//     files stored before the old ones are deleted), then deletes the
//     packs; a crash in between leaves packs no index file names, which the
//     next prune deletes.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
	bolt "go.etcd.io/bbolt"
)

// BlobSet is a set of blob ids kept on disk, in a temporary bbolt file in
// the client's cache directory, so that marking the live blobs of a large
// repository does not hold them all in memory. It is not synced to disk (it
// is scratch data) and its file is removed by Close. A BlobSet is safe for
// concurrent use.
type BlobSet struct {
	db   *bolt.DB
	path string
	n    int
}

var bucketSet = []byte("set")

// NewBlobSet creates an empty BlobSet in the cache directory.
func (r *Repository) NewBlobSet() (*BlobSet, error) {
	dir := filepath.Join(r.cacheDir, "tmp")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create blob set: %w", err)
	}
	f, err := os.CreateTemp(dir, "blobset-*.db")
	if err != nil {
		return nil, fmt.Errorf("create blob set in %s: %w", dir, err)
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

// RemoveSnapshot deletes a snapshot object.
func (r *Repository) RemoveSnapshot(ctx context.Context, id blob.ID) error {
	if err := r.st.Delete(ctx, SnapshotName(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove snapshot %s: %w", id.Short(), err)
	}
	os.Remove(filepath.Join(r.snapshotCacheDir(), id.String()))
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
// DeletePacks. A pack header or blob that cannot be read fails the repack
// (a *RepackError) before anything is deleted. The caller must hold an exclusive lock: Repack must be the
// only writer. done, when not nil, is called on Repack's goroutine after
// the live blobs of each pack were copied (for progress).
func (r *Repository) Repack(ctx context.Context, packs []blob.ID, keep func(blob.ID) (bool, error), done func(pack blob.ID)) (RepackStats, error) {
	var st RepackStats
	before := map[blob.ID]bool{}
	if err := r.idx.EachPack(func(id blob.ID, _ index.PackInfo) error { before[id] = true; return nil }); err != nil {
		return st, fmt.Errorf("list indexed packs: %w", err)
	}
	var buf []byte
	frames := &refiler{r: r, st: &st}
	defer frames.drop()
	for _, pid := range packs {
		entries, _, err := r.ReadPackHeader(ctx, pid)
		if err != nil {
			return st, &RepackError{Pack: pid.String(), Err: err}
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
				frames.drop()
				return st, &RepackError{Pack: pid.Short(), Blob: true, Err: err}
			}
			if err := frames.add(ctx, loc.Type, e.ID, buf); err != nil {
				return st, fmt.Errorf("repack %s: %w", pid.Short(), err)
			}
		}
		if done != nil {
			done(pid)
		}
	}
	if err := frames.flush(ctx); err != nil {
		return st, fmt.Errorf("repack: %w", err)
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

// DeletePacks removes packs: first from the index files (RewriteIndex) and
// the cache, then from the storage. Packs no index file names are only
// deleted. It returns the bytes removed. The caller must make sure no
// snapshot needs a blob that is only in these packs, and hold an exclusive
// lock.
func (r *Repository) DeletePacks(ctx context.Context, ids []blob.ID) (int64, error) {
	set := make(map[blob.ID]bool, len(ids))
	for _, id := range ids {
		set[id] = true
	}
	// Between rewriting the index files and dropping the packs from the
	// cache, the cache names packs no index file does: marked, so that a
	// kill in between makes the next command rebuild it.
	if err := r.idx.MarkDirty(); err != nil {
		return 0, fmt.Errorf("update the index cache: %w", err)
	}
	if _, err := r.RewriteIndex(ctx, set); err != nil {
		return 0, err
	}
	if _, err := r.idx.RemovePacks(set); err != nil {
		return 0, fmt.Errorf("remove %d packs from the index cache: %w", len(ids), err)
	}
	r.unsavedMu.Lock()
	err := r.cleanIfSaved()
	r.unsavedMu.Unlock()
	if err != nil {
		return 0, err
	}
	var freed int64
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return freed, err
		}
		name := PackName(id)
		fi, err := r.st.Stat(ctx, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return freed, fmt.Errorf("delete pack %s: %w", id, err)
		}
		if err := r.st.Delete(ctx, name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return freed, fmt.Errorf("delete pack %s: %w", id, err)
		}
		r.packs.forget(id)
		freed += fi.Size
	}
	return freed, nil
}

// RewriteIndex replaces the repository's index files by files (of up to
// packsPerIndexFile packs) that name every pack they named except those in
// drop, each pack once: prune's consolidation. The new files are stored
// before any old one is deleted, so a crash leaves both (harmless: they
// agree). It returns the number of index files written. The caller holds an
// exclusive lock and a writable cache.
func (r *Repository) RewriteIndex(ctx context.Context, drop map[blob.ID]bool) (int, error) {
	old, err := r.IndexFiles(ctx)
	if err != nil {
		return 0, err
	}
	seen := map[blob.ID]bool{}
	var out []index.IndexedPack
	written := map[string]bool{}
	flush := func() error {
		if len(out) == 0 {
			return nil
		}
		name, err := r.SaveIndexFile(ctx, out)
		if err != nil {
			return err
		}
		if err := r.idx.AddFile(name, out); err != nil {
			return fmt.Errorf("record index file %s in the cache: %w", name, err)
		}
		written[name] = true
		r.markKnown(name)
		out = nil
		return nil
	}
	for _, name := range old {
		packs, err := r.LoadIndexFile(ctx, name)
		if err != nil {
			return 0, fmt.Errorf("rewrite index: %w; nothing was deleted (run `stasis repair index`)", err)
		}
		for _, p := range packs {
			if drop[p.ID] || seen[p.ID] {
				continue
			}
			seen[p.ID] = true
			out = append(out, p)
			if len(out) >= packsPerIndexFile {
				if err := flush(); err != nil {
					return 0, err
				}
			}
		}
	}
	if err := flush(); err != nil {
		return 0, err
	}
	var gone []string
	for _, name := range old {
		if written[name] {
			continue
		}
		if err := r.st.Delete(ctx, name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return len(written), fmt.Errorf("delete replaced index file %s: %w", name, err)
		}
		gone = append(gone, name)
	}
	if err := r.idx.RemoveFiles(gone); err != nil {
		return len(written), fmt.Errorf("update the index cache: %w", err)
	}
	return len(written), nil
}

// RemoveTemp deletes the files in tmp/ (left by interrupted commands) except
// those named in keep, and returns their names. Only call it under an
// exclusive lock: a running backup writes its packs there.
func (r *Repository) RemoveTemp(ctx context.Context) ([]string, error) {
	tc, ok := r.st.(backend.TempCleaner)
	if !ok {
		return nil, nil
	}
	return tc.RemoveTemp(ctx)
}

// PackOverhead is the size of a pack with count blobs minus their stored
// bytes (magic, header, trailer) when the header is not sealed (of a
// version 2 pack; a version 1 header is 4 bytes a blob smaller).
func PackOverhead(count int) int64 {
	return int64(pack.MagicSize + pack.TrailerSize + 8 + count*pack.EntrySizeV2)
}

// refiler stores the blobs Repack copies (claimed in r.pending): data blobs
// smaller than a frame are gathered into frames again in a version 2
// repository, the others are stored one by one.
type refiler struct {
	r     *Repository
	st    *RepackStats
	batch []FrameBlob
	size  int
}

func (f *refiler) add(ctx context.Context, t blob.Type, id blob.ID, data []byte) error {
	if t != blob.Data || !f.r.cfg.framed() || len(data) >= f.r.FrameSize() {
		res, err := f.r.storeBlob(ctx, t, id, data)
		if err == nil {
			f.st.Blobs++
			f.st.Bytes += int64(res.Stored)
		}
		return err
	}
	f.batch = append(f.batch, FrameBlob{ID: id, Data: slices.Clone(data)})
	f.size += len(data)
	if f.size >= f.r.FrameSize() {
		return f.flush(ctx)
	}
	return nil
}

func (f *refiler) flush(ctx context.Context) error {
	if len(f.batch) == 0 {
		return nil
	}
	batch := f.batch
	f.batch, f.size = nil, 0
	stored, err := f.r.storeFrame(ctx, blob.Data, batch)
	if err != nil {
		return err
	}
	f.st.Blobs += len(batch)
	f.st.Bytes += int64(stored)
	return nil
}

// drop forgets blobs gathered but not stored (Repack failed).
func (f *refiler) drop() {
	f.r.unclaim(f.batch)
	f.batch, f.size = nil, 0
}
