package repo_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stasisbackup/stasis/internal/backendtest"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
)

// cacheRepo makes an unencrypted repository (fast) with its cache in a
// directory of the test.
func cacheRepo(t testing.TB) (st repo.Storage, cache string) {
	t.Helper()
	base := t.TempDir()
	st, cache = enginetest.Local(filepath.Join(base, "repo")), filepath.Join(base, "cache")
	o := enginetest.InitOptions()
	o.InsecureNoPassword, o.Password = true, nil
	o.PackSize = 64 << 10
	r, err := repo.Init(context.Background(), st, o, repo.OpenOptions{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	return st, cache
}

func openIn(t testing.TB, st repo.Storage, cache string) *repo.Repository {
	t.Helper()
	r, err := repo.Open(context.Background(), st, repo.OpenOptions{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// saveRandom stores n random data blobs of about 4 KiB and flushes; it
// returns their ids.
func saveRandom(t testing.TB, r *repo.Repository, rng *rand.Rand, n int) []blob.ID {
	t.Helper()
	ids := make([]blob.ID, n)
	for i := range ids {
		data := make([]byte, 4096+rng.IntN(512))
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		ids[i] = r.Hash(data)
		if _, err := r.SaveBlob(context.Background(), blob.Data, ids[i], data); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	return ids
}

func wantBlobs(t *testing.T, r *repo.Repository, ids []blob.ID, what string) {
	t.Helper()
	for _, id := range ids {
		if _, err := r.LoadBlob(context.Background(), id, nil); err != nil {
			t.Fatalf("%s: blob %s: %v", what, id.Short(), err)
		}
	}
}

// The cache is derived: deleted or damaged, it is rebuilt from the index
// files and every blob is found again.
func TestCacheDeletedOrDamagedIsRebuilt(t *testing.T) {
	st, cache := cacheRepo(t)
	r := openIn(t, st, cache)
	ids := saveRandom(t, r, rand.New(rand.NewPCG(1, 2)), 300)
	id := r.Config().ID
	r.Close()

	if err := os.RemoveAll(cache); err != nil {
		t.Fatal(err)
	}
	r = openIn(t, st, cache)
	wantBlobs(t, r, ids, "after deleting the cache")
	r.Close()

	p := filepath.Join(cache, id, "index.db")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(data); i += 4096 {
		copy(data[i:], "garbage!garbage!garbage!")
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r = openIn(t, st, cache)
	wantBlobs(t, r, ids, "after damaging the cache")
	r.Close()
}

// Two commands on one host share one cache: the second opens it read-only
// while the first holds it, sees the first one's flushed blobs (through
// the index files), and what each adds is merged for good by the next
// command that has the cache to itself.
func TestCacheSharedByConcurrentRepositories(t *testing.T) {
	st, cache := cacheRepo(t)
	rng := rand.New(rand.NewPCG(3, 4))
	a := openIn(t, st, cache)
	idsA := saveRandom(t, a, rng, 200)
	b := openIn(t, st, cache) // a still holds the cache read-only
	if !b.Index().ReadOnly() || !a.Index().ReadOnly() {
		t.Fatal("concurrent repositories should share the cache read-only")
	}
	wantBlobs(t, b, idsA, "b reads a's blobs")
	idsB := saveRandom(t, b, rng, 200)
	if b.Index().OverlaySize() < len(idsB) {
		t.Errorf("b's own blobs: overlay holds %d, want at least %d", b.Index().OverlaySize(), len(idsB))
	}
	// A blob b saved is not stored again by a second saver who knows it.
	res, err := b.SaveBlob(context.Background(), blob.Data, idsB[0], nil)
	if err != nil || res.Added {
		t.Fatalf("saving a known blob again: %+v %v", res, err)
	}
	a.Close()
	b.Close()

	// Alone, a command keeps a few unmerged blobs in memory (a merge
	// rewrites pages all over a large cache file)...
	c := openIn(t, st, cache)
	if n := c.Index().OverlaySize(); n != len(idsA)+len(idsB) {
		t.Errorf("%d blobs in memory, want the %d unmerged ones", n, len(idsA)+len(idsB))
	}
	wantBlobs(t, c, idsA, "a's blobs, in memory")
	c.Close()
	// ... and merges them for good once they are more than the bound.
	defer repo.SetMaxUnmerged(0)()
	c = openIn(t, st, cache)
	defer c.Close()
	if n := c.Index().OverlaySize(); n != 0 {
		t.Fatalf("above the bound a command should merge every index file into the cache file; %d blobs are in memory", n)
	}
	wantBlobs(t, c, idsA, "a's blobs after the merge")
	wantBlobs(t, c, idsB, "b's blobs after the merge")
}

// A cache that holds an index file the repository no longer has (another
// client rewrote the index files) is rebuilt: a pack another client deleted
// is not looked up any more.
func TestCacheStaleAfterRewriteIsRebuilt(t *testing.T) {
	st, cacheA := cacheRepo(t)
	cacheB := filepath.Join(t.TempDir(), "cacheB")
	rng := rand.New(rand.NewPCG(5, 6))
	a := openIn(t, st, cacheA)
	keep := saveRandom(t, a, rng, 50)
	gone := saveRandom(t, a, rng, 50)
	loc, _, err := a.Index().Lookup(gone[0])
	if err != nil {
		t.Fatal(err)
	}
	a.Close()

	// Client B deletes one pack (as prune does, under an exclusive lock).
	b := openIn(t, st, cacheB)
	if err := b.WritableIndex(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.DeletePacks(context.Background(), []blob.ID{loc.Pack}); err != nil {
		t.Fatal(err)
	}
	b.Close()

	a = openIn(t, st, cacheA)
	defer a.Close()
	if ok, _ := a.HasBlob(gone[0]); ok {
		t.Fatalf("blob %s of a deleted pack is still in A's cache", gone[0].Short())
	}
	wantBlobs(t, a, keep, "blobs of the packs that remain")
}

// BenchmarkCacheMerge measures what a command waits for at its start when
// another command added one index file of 64 packs of 1000 blobs each (a
// daily backup adding 1 GiB of 16 KiB database chunks writes about that
// much): merging it into the cache file, with an fsync'ed bbolt commit.
// go test -run '^$' -bench CacheMerge -benchtime 20x ./repo
func BenchmarkCacheMerge(b *testing.B) {
	defer repo.SetMaxUnmerged(0)()
	benchmarkCacheOpen(b)
}

// BenchmarkCacheOverlay is BenchmarkCacheMerge's case as a command meets it
// when the unmerged index files are small: they are read into memory
// instead of merged. go test -run '^$' -bench CacheOverlay -benchtime 20x ./repo
func BenchmarkCacheOverlay(b *testing.B) { benchmarkCacheOpen(b) }

func benchmarkCacheOpen(b *testing.B) {
	st, cache := cacheRepo(b)
	rng := rand.New(rand.NewPCG(7, 8))
	r := openIn(b, st, cache)
	var packs []index.IndexedPack
	for p := 0; p < 64; p++ {
		ip := index.IndexedPack{Size: 16 << 20}
		putRandom(rng, ip.ID[:])
		off := uint64(8)
		for e := 0; e < 1000; e++ {
			en := pack.Entry{Type: blob.Data, Storage: pack.Zstd, Offset: off, Length: 6000, RawLength: 16384}
			putRandom(rng, en.ID[:])
			ip.Entries = append(ip.Entries, en)
			off += 6000
		}
		packs = append(packs, ip)
	}
	if _, err := r.SaveIndexFile(context.Background(), packs); err != nil {
		b.Fatal(err)
	}
	r.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		os.RemoveAll(cache)
		b.StartTimer()
		r := openIn(b, st, cache)
		r.Close()
	}
}

func putRandom(rng *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
}

// A command that opened the repository before another client wrote finds
// that client's blobs when it reads them (restore of a snapshot made while
// it ran): its view catches up with the new index files.
func TestViewCatchesUpWithOtherClients(t *testing.T) {
	st, cacheA := cacheRepo(t)
	cacheB := filepath.Join(t.TempDir(), "cacheB")
	a := openIn(t, st, cacheA)
	defer a.Close()
	b := openIn(t, st, cacheB)
	ids := saveRandom(t, b, rand.New(rand.NewPCG(11, 12)), 100)
	b.Close()
	wantBlobs(t, a, ids, "blobs another client stored after this one opened")
}

// A writable cache that took in a pack before any index file named it (an
// exclusive command killed before its Flush) is not trusted by the next
// command: it would deduplicate against a pack another client's prune may
// delete as unindexed.
func TestCacheAheadOfIndexFilesIsRebuilt(t *testing.T) {
	st, cache := cacheRepo(t)
	r := openIn(t, st, cache)
	if err := r.WritableIndex(context.Background()); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(13, 14))
	var ids []blob.ID
	// 100 × 4 KiB fill more than 4 packs of 64 KiB; at most 2 finish in the
	// background at once, so at least one has finished when SaveBlob returns.
	for i := 0; i < 100; i++ {
		data := make([]byte, 4096)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		id := r.Hash(data)
		if _, err := r.SaveBlob(context.Background(), blob.Data, id, data); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	stored := 0
	for _, id := range ids {
		if _, ok, _ := r.Index().Lookup(id); ok {
			stored++
		}
	}
	if stored == 0 {
		t.Fatal("no pack was finished; the test needs one in the cache before Flush")
	}
	r.Close() // no Flush: as if killed; the finished packs are in no index file

	r = openIn(t, st, cache)
	defer r.Close()
	for _, id := range ids {
		if ok, err := r.HasBlob(id); err != nil || ok {
			t.Fatalf("blob %s of a pack no index file names is still known (%v): a backup would deduplicate against it", id.Short(), err)
		}
	}
}

// A repository of an older stasis (its bbolt index.db in the repository,
// no index files) is refused with the way out, instead of opening as if
// its packs were unindexed; repair index writes the index files and
// removes index.db.
func TestLegacyIndexIsRefusedUntilRepair(t *testing.T) {
	st, cache := cacheRepo(t)
	r := openIn(t, st, cache)
	ids := saveRandom(t, r, rand.New(rand.NewPCG(15, 16)), 20)
	r.Close()
	if err := backend.PutBytes(context.Background(), st, "index.db", []byte("old bbolt file")); err != nil {
		t.Fatal(err)
	}
	_, err := repo.Open(context.Background(), st, repo.OpenOptions{CacheDir: cache})
	if !errors.Is(err, repo.ErrLegacyIndex) || !strings.Contains(err.Error(), "repair index") {
		t.Fatalf("open with a legacy index.db: %v; want ErrLegacyIndex naming repair index", err)
	}
	r, err = repo.Open(context.Background(), st, repo.OpenOptions{CacheDir: cache, SkipIndexFiles: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.RebuildIndex(context.Background(), repo.RebuildOptions{}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r = openIn(t, st, cache)
	defer r.Close()
	wantBlobs(t, r, ids, "after repair index")
}

// Through a storage that is not a local directory, packs are read in
// aligned windows: blobs that cross a window's end, and the last blob of a
// pack, read back intact.
func TestWindowedPackReads(t *testing.T) {
	base := t.TempDir()
	st := backendtest.NewFaulty(backend.NewLocal(filepath.Join(base, "repo"))) // no faults: only not a local directory
	cache := filepath.Join(base, "cache")
	o := enginetest.InitOptions()
	o.InsecureNoPassword, o.Password = true, nil
	r, err := repo.Init(context.Background(), st, o, repo.OpenOptions{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(17, 18))
	want := map[blob.ID][]byte{}
	for i := 0; i < 40; i++ { // 40 × ≈300 KiB: one pack of ≈12 MiB, three window boundaries
		data := make([]byte, 300<<10+rng.IntN(1000))
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		id := r.Hash(data)
		want[id] = data
		if _, err := r.SaveBlob(context.Background(), blob.Data, id, data); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r, err = repo.Open(context.Background(), st, repo.OpenOptions{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for id, data := range want {
		got, err := r.LoadBlob(context.Background(), id, nil)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("blob %s: %v (%d bytes, want %d)", id.Short(), err, len(got), len(data))
		}
	}
}
