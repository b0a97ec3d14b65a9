package repo

// The client-side cache: a bbolt index (package index) and copies of
// snapshot files, in a directory of this client's
// ($XDG_CACHE_HOME/stasis/<repository id>/ by default). The repository is the
// only truth; the cache is brought up to date from the index files it has
// not seen at every Open, and rebuilt when it is missing, damaged, or holds
// an index file the repository no longer has (prune or repair replaced it).
// Deleting the cache loses nothing.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/zeebo/blake3"
)

// DefaultCacheDir returns the cache directory of the repository with the
// given id: $XDG_CACHE_HOME/stasis/<id>, or ~/.cache/stasis/<id>. It fails
// with a *CacheDirError when the user has no cache directory.
func DefaultCacheDir(repoID string) (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", &CacheDirError{Err: err}
	}
	return filepath.Join(base, "stasis", repoID), nil
}

const (
	cacheFile = "index.db"
	// mergeTry is how long a command waits to get the cache file for
	// writing, to merge new index files, before it uses it read-only with
	// the new files in memory (another command on this host is using it).
	mergeTry = 100 * time.Millisecond
)

// maxUnmerged is how many bytes of index files (46 bytes per blob) a
// command keeps in memory instead of merging them into the cache file:
// about 180,000 blobs, 20 MiB of overlay. Merging a day's index file into a
// cache of millions of blobs rewrites pages all over the file (seconds, and
// the whole file faulted into the process); below this bound a command
// leaves that to a later one, which merges several days at once.
var maxUnmerged int64 = 8 << 20

// DefaultMergeWait bounds how long a command waits for another command on
// this host that is merging index files into the shared cache file.
const DefaultMergeWait = 2 * time.Minute

// openIndex opens the index cache for this command and brings it up to
// date with the repository's index files. exclusive commands (which hold
// an exclusive repository lock) keep the file open for writing; others
// merge what they can and then share the file read-only.
func (r *Repository) openIndex(ctx context.Context, exclusive bool, wait time.Duration) (*index.Index, error) {
	return r.openIndexMode(ctx, exclusive, wait, false)
}

// openIndexMode is openIndex; with skip (repair index, which rebuilds the
// index files) it opens the cache for writing and reads no index file, so
// that a damaged one does not stop the repair that replaces it.
func (r *Repository) openIndexMode(ctx context.Context, exclusive bool, wait time.Duration, skip bool) (*index.Index, error) {
	if err := os.MkdirAll(r.cacheDir, 0o700); err != nil {
		return nil, &CacheDirError{Dir: r.cacheDir, Err: err}
	}
	sizes, names, err := r.listKnownIndexFiles(ctx)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(r.cacheDir, cacheFile)
	if wait <= 0 {
		wait = DefaultMergeWait
	}
	try := mergeTry
	if exclusive {
		try = wait
	}
	if skip {
		return r.openCacheFile(p, index.Options{Timeout: wait})
	}
	ix, err := r.openCacheFile(p, index.Options{Timeout: try})
	switch {
	case err == nil:
		ix, err = r.mergeWritable(ctx, p, ix, exclusive, sizes, names)
		if err != nil || ix != nil {
			return ix, err
		}
	case errors.Is(err, index.ErrBusy) && !exclusive:
		// Another command on this host has the file; share it.
	default:
		return nil, err
	}
	return r.openShared(ctx, p, names, wait)
}

// listKnownIndexFiles lists the repository's index files, with their sizes
// and as sorted names, and records them as the ones this Repository's view
// is brought up to (mergeIndexFiles does that).
func (r *Repository) listKnownIndexFiles(ctx context.Context) (map[string]int64, []string, error) {
	sizes, err := r.indexFileSizes(ctx)
	if err != nil {
		return nil, nil, err
	}
	names := make([]string, 0, len(sizes))
	for n := range sizes {
		names = append(names, n)
	}
	slices.Sort(names)
	r.knownMu.Lock()
	r.known = make(map[string]bool, len(names))
	for _, n := range names {
		r.known[n] = true
	}
	r.knownMu.Unlock()
	return sizes, names, nil
}

// mergeWritable merges the index files names into the cache file ix at p,
// open for writing. An exclusive command keeps ix: it is returned open.
// Otherwise ix is closed and nil returned, for the command to share the
// file read-only; the merge is then left out when the files it lacks are
// few (fewUnmerged: a merge rewrites pages all over a large cache file, so
// the few new entries are kept in memory, like a sharer does).
func (r *Repository) mergeWritable(ctx context.Context, p string, ix *index.Index, exclusive bool, sizes map[string]int64, names []string) (*index.Index, error) {
	if exclusive || !r.fewUnmerged(ix, sizes) {
		if err := r.mergeIndexFiles(ctx, ix, names); err != nil {
			ix.Close()
			return nil, err
		}
		if exclusive {
			return ix, nil
		}
	}
	if err := ix.Close(); err != nil {
		return nil, fmt.Errorf("close index cache %s: %w", p, err)
	}
	return nil, nil
}

// openShared opens the cache file at p read-only, beside other commands of
// this host, with the index files names it does not hold in memory. When
// the file is damaged, or holds an index file the repository no longer has
// (also after listing again), the command builds a private one instead.
func (r *Repository) openShared(ctx context.Context, p string, names []string, wait time.Duration) (*index.Index, error) {
	ix, err := index.Open(p, []byte(r.cfg.ID), index.Options{ReadOnly: true, Timeout: wait})
	if errors.Is(err, index.ErrDamaged) || errors.Is(err, index.ErrMismatch) {
		// Damaged while another command holds it: build a private one;
		// the next command that gets the file for writing replaces it.
		return r.privateIndex(ctx, names)
	}
	if errors.Is(err, index.ErrBusy) {
		return nil, fmt.Errorf("%w: another stasis command on this host has been merging index files into %s for %s; try again when it is done", err, p, wait)
	}
	if err != nil {
		return nil, err
	}
	err = r.mergeIndexFiles(ctx, ix, names)
	if errors.Is(err, errStaleCache) {
		// Perhaps only newer than our listing: another command merged an
		// index file written after we listed. List again before giving up
		// on the shared file.
		if again, lerr := r.IndexFiles(ctx); lerr == nil {
			names = again
			r.markKnown(names...)
			err = r.mergeIndexFiles(ctx, ix, names)
		}
	}
	if errors.Is(err, errStaleCache) {
		ix.Close()
		return r.privateIndex(ctx, names)
	}
	if err != nil {
		ix.Close()
		return nil, err
	}
	return ix, nil
}

// WritableIndex makes the index cache writable for this Repository, for
// the commands that change the index in place (prune, repair): it waits up
// to OpenOptions.CacheWait for other commands on this host to release the
// cache file. Call it before other goroutines use the Repository. The
// caller holds an exclusive repository lock, so no other command uses this
// repository anywhere, and the wait is for commands that are just exiting.
func (r *Repository) WritableIndex(ctx context.Context) error {
	return r.writableIndex(ctx, false)
}

func (r *Repository) writableIndex(ctx context.Context, skip bool) error {
	if !r.idx.ReadOnly() {
		return nil
	}
	if err := r.Flush(ctx); err != nil {
		return err
	}
	if err := r.writeIndex(ctx, true); err != nil {
		return err
	}
	if err := r.closeIndex(); err != nil {
		return err
	}
	r.privateIdx = ""
	idx, err := r.openIndexMode(ctx, true, r.cacheWait, skip)
	if err != nil {
		return fmt.Errorf("%s: %w", r.loc, err)
	}
	r.idx = idx
	return nil
}

// catchUp merges the index files written since this Repository's view was
// built (by other clients, while it ran), so that a snapshot listed now
// finds its blobs: a backup stores its index files before its snapshot.
func (r *Repository) catchUp(ctx context.Context) error {
	names, err := r.IndexFiles(ctx)
	if err != nil {
		return err
	}
	r.knownMu.Lock()
	defer r.knownMu.Unlock()
	for _, n := range names {
		if r.known[n] {
			continue
		}
		packs, err := r.loadIndexFile(ctx, n, r.idx.ReadOnly())
		if err != nil {
			return fmt.Errorf("%w (run `stasis repair index`)", err)
		}
		if err := r.idx.AddFile(n, packs); err != nil {
			return fmt.Errorf("merge %s into the index cache: %w", n, err)
		}
		r.known[n] = true
	}
	return nil
}

// lookupAfterCatchUp looks a blob up again after catching up, at most once
// a second (a miss is normal for a backup's new chunks; only readers call
// this).
func (r *Repository) lookupAfterCatchUp(ctx context.Context, id blob.ID) (index.Location, bool, error) {
	r.knownMu.Lock()
	due := time.Since(r.caughtUp) >= time.Second
	if due {
		r.caughtUp = time.Now()
	}
	r.knownMu.Unlock()
	if due {
		if err := r.catchUp(ctx); err != nil {
			return index.Location{}, false, err
		}
	}
	return r.idx.Lookup(id)
}

// known records an index file this Repository wrote or merged itself.
func (r *Repository) markKnown(names ...string) {
	r.knownMu.Lock()
	if r.known == nil {
		r.known = map[string]bool{}
	}
	for _, n := range names {
		r.known[n] = true
	}
	r.knownMu.Unlock()
}

// privateIndex builds a cache file for this command alone, removed by
// Close: the shared one is out of date in a way only a rebuild mends (an
// index file it holds was replaced), and another command on this host is
// using it, so it cannot be rebuilt now. The next command that finds the
// shared file free rebuilds it.
func (r *Repository) privateIndex(ctx context.Context, names []string) (*index.Index, error) {
	// Private files of processes that are gone are removed on the way.
	if old, _ := filepath.Glob(filepath.Join(r.cacheDir, "private-*.db")); len(old) > 0 {
		for _, o := range old {
			var pid int
			if _, err := fmt.Sscanf(filepath.Base(o), "private-%d.db", &pid); err == nil && pid != os.Getpid() && !processAlive(pid) {
				os.Remove(o)
				os.Remove(o + ".filter")
			}
		}
	}
	p := filepath.Join(r.cacheDir, fmt.Sprintf("private-%d.db", os.Getpid()))
	os.Remove(p)
	os.Remove(p + ".filter")
	ix, err := index.Open(p, []byte(r.cfg.ID), index.Options{Timeout: time.Second})
	if err != nil {
		return nil, err
	}
	r.privateIdx = p
	if err := r.mergeIndexFiles(ctx, ix, names); err != nil {
		ix.Close()
		os.Remove(p)
		return nil, err
	}
	return ix, nil
}

// indexFileSizes lists the index files with their sizes.
func (r *Repository) indexFileSizes(ctx context.Context) (map[string]int64, error) {
	sizes := map[string]int64{}
	err := r.st.List(ctx, IndexDir+"/", func(o backend.ObjectInfo) error { sizes[o.Name] = o.Size; return nil })
	if err != nil {
		return nil, fmt.Errorf("list index files of %s: %w", r.loc, err)
	}
	return sizes, nil
}

// fewUnmerged reports whether the cache file holds every index file it has
// seen that the repository still has, and the ones it lacks are small
// enough to keep in memory (maxUnmerged).
func (r *Repository) fewUnmerged(ix *index.Index, sizes map[string]int64) bool {
	seen, err := ix.Files()
	if err != nil {
		return false
	}
	for n := range seen {
		if _, ok := sizes[n]; !ok {
			return false // replaced: the file must be rebuilt
		}
	}
	var unmerged int64
	for n, size := range sizes {
		if !seen[n] {
			unmerged += size
		}
	}
	return unmerged <= maxUnmerged
}

// openCacheFile opens the cache file for writing, replacing it by an empty
// one when it is damaged or belongs to another repository or version.
func (r *Repository) openCacheFile(p string, o index.Options) (*index.Index, error) {
	ix, err := index.Open(p, []byte(r.cfg.ID), o)
	if err == nil || errors.Is(err, index.ErrBusy) {
		return ix, err
	}
	if _, serr := os.Stat(p); errors.Is(serr, fs.ErrNotExist) {
		return nil, err
	}
	// Damaged or foreign: it is only a cache.
	os.Remove(p + ".filter")
	if rerr := os.Remove(p); rerr != nil {
		return nil, fmt.Errorf("%w; removing it failed too: %v", err, rerr)
	}
	return index.Open(p, []byte(r.cfg.ID), o)
}

// mergeIndexFiles adds the index files the cache does not hold. A
// writable cache that holds a file the repository no longer has is
// emptied and rebuilt; a read-only one that does is replaced by a private
// copy for this command (see privateIndex).
func (r *Repository) mergeIndexFiles(ctx context.Context, ix *index.Index, names []string) error {
	seen, err := ix.Files()
	if err != nil {
		return fmt.Errorf("read index cache: %w", err)
	}
	current := make(map[string]bool, len(names))
	for _, n := range names {
		current[n] = true
	}
	for n := range seen {
		if !current[n] {
			if ix.ReadOnly() {
				return errStaleCache
			}
			if err := ix.Reset(); err != nil {
				return fmt.Errorf("reset index cache: %w", err)
			}
			seen = map[string]bool{}
			break
		}
	}
	for _, n := range names {
		if seen[n] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		packs, err := r.loadIndexFile(ctx, n, ix.ReadOnly())
		if err != nil {
			return fmt.Errorf("%w (run `stasis repair index`)", err)
		}
		if err := ix.AddFile(n, packs); err != nil {
			return fmt.Errorf("merge %s into the index cache: %w", n, err)
		}
		if !ix.ReadOnly() {
			os.Remove(r.indexCopyPath(n)) // merged: the copy is not needed any more
		}
	}
	return nil
}

// indexCopyPath is where the cache keeps a copy of an index file it has
// not merged, so that the commands that keep it in memory read it from
// local disk rather than from the repository each time.
func (r *Repository) indexCopyPath(name string) string {
	return filepath.Join(r.cacheDir, filepath.FromSlash(name))
}

var errStaleCache = errors.New("the index cache holds index files the repository no longer has")

// snapshotCacheDir holds copies of snapshot files (named like them), so
// that listing snapshots reads only the new ones from the repository.
func (r *Repository) snapshotCacheDir() string { return filepath.Join(r.cacheDir, "snapshots") }

// cachedSnapshot returns the cached bytes of snapshot id, or nil.
func (r *Repository) cachedSnapshot(id blob.ID) []byte {
	p := filepath.Join(r.snapshotCacheDir(), id.String())
	if fi, err := os.Stat(p); err != nil || fi.Size() > maxSnapshotFile {
		return nil
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil
	}
	return data
}

// blobIDOf returns the BLAKE3 of data (the name of a snapshot file).
func blobIDOf(data []byte) blob.ID { return blob.ID(blake3.Sum256(data)) }

// cacheSnapshot keeps a copy of a snapshot file; failures only cost a read
// from the repository later.
func (r *Repository) cacheSnapshot(id blob.ID, data []byte) {
	writeCacheFile(filepath.Join(r.snapshotCacheDir(), id.String()), data)
}

// writeCacheFile writes data to the cache file p (its directory made when
// missing) under a temporary name renamed into place, so that a reader
// never sees half a file; a failure leaves nothing behind and only costs a
// read from the repository later.
func writeCacheFile(p string, data []byte) {
	if os.MkdirAll(filepath.Dir(p), 0o700) != nil {
		return
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		os.Remove(f.Name())
	}
}

// uncacheSnapshots removes cached copies of snapshots the repository does
// not list.
func (r *Repository) uncacheSnapshots(current map[blob.ID]bool) {
	ents, err := os.ReadDir(r.snapshotCacheDir())
	if err != nil {
		return
	}
	for _, e := range ents {
		id, err := blob.ParseID(e.Name())
		if err == nil && !current[id] {
			os.Remove(filepath.Join(r.snapshotCacheDir(), e.Name()))
		}
	}
}

// processAlive reports whether a process with this pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
