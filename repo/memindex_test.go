package repo_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

// A repository of packs without index files (as tape restore's spool) is
// indexed in memory: every blob loads, nothing is stored (no index file,
// and a later command with the same cache finds none of it), and a pack
// whose header is unreadable is named while the others still load.
func TestIndexPacksForCommand(t *testing.T) {
	ctx := context.Background()
	dir, open, packIDs := spoolOfTwoPacks(t)
	first, second := packIDs[0], packIDs[1]
	r := open()
	packs, blobs, bad, err := r.IndexPacksForCommand(ctx, 1000)
	if err != nil || len(bad) != 0 {
		t.Fatalf("IndexPacksForCommand: %v, damaged %v", err, bad)
	}
	if packs != 2 || blobs != 6 {
		t.Errorf("indexed %d packs and %d blobs, want 2 and 6", packs, blobs)
	}
	wantBlobs(t, r, append(append([]blob.ID{}, first...), second...), "in memory")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r = open()
	if names, err := r.IndexFiles(ctx); err != nil || len(names) != 0 {
		t.Errorf("index files after indexing in memory: %v (%v), want none", names, err)
	}
	if _, err := r.LoadBlob(ctx, first[0], nil); err == nil {
		t.Error("a new command with the same cache found a blob indexed in another command's memory")
	}

	// Damage the header of the first blobs' pack: cut its last bytes.
	loc, ok, err := lookupAfterIndexing(ctx, r, first[0])
	if err != nil || !ok {
		t.Fatalf("lookup %s: %v %v", first[0].Short(), ok, err)
	}
	r.Close()
	p := filepath.Join(dir, repo.PackName(loc.Pack))
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, fi.Size()-4); err != nil {
		t.Fatal(err)
	}
	r = open()
	defer r.Close()
	packs, _, bad, err = r.IndexPacksForCommand(ctx, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if packs != 1 || len(bad) != 1 || bad[0].ID != loc.Pack {
		t.Fatalf("indexed %d packs, damaged %v; want 1 and pack %s", packs, bad, loc.Pack.Short())
	}
	wantBlobs(t, r, second, "the intact pack")
	if _, err := r.LoadBlob(ctx, first[0], nil); err == nil {
		t.Error("a blob of the pack with the unreadable header loaded")
	}
}

// lookupAfterIndexing indexes r's packs in memory and looks id up.
func lookupAfterIndexing(ctx context.Context, r *repo.Repository, id blob.ID) (repo.Location, bool, error) {
	if _, _, _, err := r.IndexPacksForCommand(ctx, 1000); err != nil {
		return repo.Location{}, false, err
	}
	return r.LookupBlob(ctx, id)
}

// Past its bound in memory IndexPacksForCommand indexes the packs into the
// cache file, marked so that a later command does not trust that cache.
func TestIndexPacksForCommandPastTheBound(t *testing.T) {
	ctx := context.Background()
	_, open, packIDs := spoolOfTwoPacks(t)
	ids := append(append([]blob.ID{}, packIDs[0]...), packIDs[1]...)
	r := open()
	packs, blobs, bad, err := r.IndexPacksForCommand(ctx, 4) // one pack in memory, one in the cache file
	if err != nil || len(bad) != 0 || packs != 2 || blobs != 6 {
		t.Fatalf("IndexPacksForCommand: %d packs, %d blobs, damaged %v, %v; want 2, 6", packs, blobs, bad, err)
	}
	wantBlobs(t, r, ids, "past the bound")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r = open()
	defer r.Close()
	for _, id := range ids {
		if _, ok, err := r.LookupBlob(ctx, id); err != nil || ok {
			t.Errorf("blob %s is indexed for the next command too (%v): the cache of packs in no index file was trusted", id.Short(), err)
		}
	}
}

// spoolOfTwoPacks makes a repository of two packs of three blobs each (ids
// by pack) and deletes its index files, as in tape restore's spool; open
// opens it for one command with a cache of its own.
func spoolOfTwoPacks(t *testing.T) (dir string, open func() *repo.Repository, ids [2][]blob.ID) {
	t.Helper()
	st, cache := cacheRepo(t)
	r := openIn(t, st, cache)
	rng := rand.New(rand.NewPCG(3, 4))
	ids[0] = saveRandom(t, r, rng, 3)
	ids[1] = saveRandom(t, r, rng, 3)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	dir = st.Location()
	if err := os.RemoveAll(filepath.Join(dir, "index")); err != nil {
		t.Fatal(err)
	}
	spoolCache := t.TempDir()
	open = func() *repo.Repository {
		t.Helper()
		r, err := repo.Open(context.Background(), enginetest.Local(dir), repo.OpenOptions{CacheDir: spoolCache, Exclusive: true})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	return dir, open, ids
}
