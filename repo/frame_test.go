package repo_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

var ctx = context.Background()

// frameRepo creates an encrypted repository of the given format version
// (0: the current one) in a temporary directory.
func frameRepo(t *testing.T, version int) (*repo.Repository, string) {
	t.Helper()
	dir := t.TempDir()
	o := enginetest.InitOptions()
	o.Version = version
	r, err := repo.Init(context.Background(), enginetest.Local(filepath.Join(dir, "repo")), o, enginetest.OpenOptionsIn(filepath.Join(dir, "cache")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, filepath.Join(dir, "repo")
}

// pageChunks returns n compressible chunks of 16 KiB, alike but distinct,
// as pages of a database are.
func pageChunks(r *repo.Repository, n int) []repo.FrameBlob {
	rng := rand.New(rand.NewSource(7))
	blobs := make([]repo.FrameBlob, n)
	for i := range blobs {
		var b []byte
		for len(b) < 16<<10 {
			b = fmt.Appendf(b, "record %08d balance %+09d owner uid=user%05d,ou=Sales\n", i, rng.Intn(1e8)-5e7, rng.Intn(1e5))
		}
		blobs[i] = repo.FrameBlob{ID: r.Hash(b), Data: b}
	}
	return blobs
}

// Chunks saved together share frames of about the frame size in a version
// 2 repository, each readable on its own, after the frame is decoded once.
func TestSaveFrameStoresChunksTogether(t *testing.T) {
	r, _ := frameRepo(t, 0)
	blobs := pageChunks(r, 80) // 1.25 MiB: three frames
	var stored int
	for i := 0; i < len(blobs); i += 32 {
		res, err := r.SaveFrame(ctx, blob.Data, blobs[i:min(i+32, len(blobs))])
		if err != nil {
			t.Fatal(err)
		}
		stored += res.Stored
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	frames := map[uint64]int{}
	for i, b := range blobs {
		loc, ok, err := r.LookupBlob(ctx, b.ID)
		if err != nil || !ok {
			t.Fatalf("blob %d not indexed: %v", i, err)
		}
		if !loc.Storage.Framed() {
			t.Errorf("blob %d stored as %s, want a shared frame", i, loc.Storage)
		}
		frames[loc.Offset]++
		got, err := r.LoadBlob(ctx, b.ID, nil)
		if err != nil || string(got) != string(b.Data) {
			t.Fatalf("load blob %d: %d bytes, %v", i, len(got), err)
		}
	}
	if len(frames) != 3 {
		t.Errorf("%d frames, want 3 (of 32, 32 and 16 chunks): %v", len(frames), frames)
	}
	if stored <= 0 || stored > len(blobs)*(16<<10)/4 {
		t.Errorf("stored %d bytes for %d compressible chunks", stored, len(blobs))
	}
	again, err := r.SaveFrame(ctx, blob.Data, blobs[:5])
	if err != nil || again.Added != 0 {
		t.Errorf("saving stored chunks again added %d: %v", again.Added, err)
	}
}

// A version 1 repository stores each chunk of a frame on its own, in
// version 1 packs, as stasis before frames did.
func TestSaveFrameInVersion1StoresOneByOne(t *testing.T) {
	r, _ := frameRepo(t, 1)
	blobs := pageChunks(r, 6)
	res, err := r.SaveFrame(ctx, blob.Data, blobs)
	if err != nil || res.Added != 6 {
		t.Fatalf("SaveFrame: %+v, %v", res, err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for i, b := range blobs {
		loc, ok, err := r.LookupBlob(ctx, b.ID)
		if err != nil || !ok || loc.Storage.Framed() || loc.Inner != 0 {
			t.Errorf("blob %d: %+v %v %v; want a frame of its own", i, loc, ok, err)
		}
		if got, err := r.LoadBlob(ctx, b.ID, nil); err != nil || string(got) != string(b.Data) {
			t.Errorf("load blob %d: %v", i, err)
		}
	}
}

// A damaged frame fails every chunk in it with ErrCorruptBlob, and only
// those: the other frames still load.
func TestDamagedFrameFailsItsChunks(t *testing.T) {
	r, dir := frameRepo(t, 0)
	blobs := pageChunks(r, 64)
	if _, err := r.SaveFrame(ctx, blob.Data, blobs[:32]); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SaveFrame(ctx, blob.Data, blobs[32:]); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	loc, _, _ := r.LookupBlob(ctx, blobs[0].ID)
	name := filepath.Join(dir, repo.PackName(loc.Pack))
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	b[loc.Offset+uint64(loc.Length)/2] ^= 1
	os.Chmod(name, 0o644)
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
	for i, bl := range blobs {
		_, err := r.LoadBlob(ctx, bl.ID, nil)
		if damaged := i < 32; damaged != errors.Is(err, repo.ErrCorruptBlob) {
			t.Errorf("blob %d (in the damaged frame: %v): %v", i, damaged, err)
		}
	}
}

// An index entry that puts a chunk beyond what a frame can hold is refused
// before anything is read or allocated for it.
func TestFrameLocationBeyondAFrameIsRefused(t *testing.T) {
	r, _ := frameRepo(t, 0)
	blobs := pageChunks(r, 4)
	if _, err := r.SaveFrame(ctx, blob.Data, blobs); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	loc, _, _ := r.LookupBlob(ctx, blobs[1].ID)
	for name, bad := range map[string]func(l *repo.Location){
		"inner past the frame": func(l *repo.Location) { l.Inner = 3 << 30 },
		"frame too long":       func(l *repo.Location) { l.Length = 1 << 31 },
		"blob past the frame":  func(l *repo.Location) { l.RawLength += 1 << 20 },
	} {
		l := loc
		bad(&l)
		if _, err := r.ReadBlobAt(ctx, blobs[1].ID, l, nil); !errors.Is(err, repo.ErrCorruptBlob) {
			t.Errorf("%s: %v, want ErrCorruptBlob", name, err)
		}
	}
}

// A backup of many small chunks writes an index file every 65,536 blobs,
// before it has 64 packs, so that the entries it holds for the next index
// file stay bounded (and a crash loses the deduplication of fewer).
func TestIndexFileEveryManyBlobs(t *testing.T) {
	dir := t.TempDir()
	o := enginetest.InitOptions()
	o.PackSize = 1 << 20
	r, err := repo.Init(ctx, enginetest.Local(filepath.Join(dir, "repo")), o, enginetest.OpenOptionsIn(filepath.Join(dir, "cache")))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rng := rand.New(rand.NewSource(3))
	// 300 random bytes each: ≈ 40 packs of 1 MiB, fewer than 64. Packs are
	// finished in the background, so a few more than 65,536 blobs may go
	// into one index file; twice as many make two files in any order.
	const n = 140000
	var frame []repo.FrameBlob
	for i := 0; i < n; i++ {
		b := make([]byte, 300)
		rng.Read(b)
		frame = append(frame, repo.FrameBlob{ID: r.Hash(b), Data: b})
		if len(frame) == 1000 || i == n-1 {
			if _, err := r.SaveFrame(ctx, blob.Data, frame); err != nil {
				t.Fatal(err)
			}
			frame = nil
		}
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "repo", "index", "*"))
	packs, _ := filepath.Glob(filepath.Join(dir, "repo", "packs", "*", "*"))
	if len(packs) >= 64 {
		t.Fatalf("%d packs: the test means fewer than 64", len(packs))
	}
	if len(files) < 2 || len(files) > 3 {
		t.Errorf("%d index files for %d blobs in %d packs, want 2 or 3 (one at each 65,536 blobs, one at the end)", len(files), n, len(packs))
	}
	r2, err := repo.Open(ctx, enginetest.Local(filepath.Join(dir, "repo")), enginetest.OpenOptionsIn(filepath.Join(t.TempDir(), "cache")))
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if blobs, _, err := r2.IndexCounts(); err != nil || blobs != n {
		t.Errorf("a fresh cache indexes %d blobs (%v), want %d", blobs, err, n)
	}
}
