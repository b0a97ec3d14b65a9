package index_test

import (
	"bytes"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/blob"
)

const benchEntries = 1 << 20

func randomID(rng *rand.Rand) (id blob.ID) {
	for j := 0; j < 32; j += 8 {
		v := rng.Uint64()
		for k := 0; k < 8; k++ {
			id[j+k] = byte(v >> (8 * k))
		}
	}
	return id
}

// buildIndex makes an index of benchEntries random data-blob ids (added in
// id order, 50,000 per pack) and returns the ids shuffled.
func buildIndex(b *testing.B) (*index.Index, []blob.ID) {
	ix, err := index.Open(filepath.Join(b.TempDir(), "index.db"), []byte("bench"), index.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ix.Close() })
	rng := rand.New(rand.NewPCG(1, 2))
	ids := make([]blob.ID, benchEntries)
	for i := range ids {
		ids[i] = randomID(rng)
	}
	slices.SortFunc(ids, func(a, b blob.ID) int { return bytes.Compare(a[:], b[:]) })
	for start := 0; start < len(ids); start += 50_000 {
		var entries []pack.Entry
		for i, id := range ids[start:min(start+50_000, len(ids))] {
			entries = append(entries, pack.Entry{ID: id, Type: blob.Data, Storage: pack.Zstd, Offset: uint64(i) * 6000, Length: 6000, RawLength: 16384})
		}
		if err := ix.AddPack(randomID(rng), uint64(len(entries))*6000, entries); err != nil {
			b.Fatal(err)
		}
	}
	rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	return ix, ids
}

// BenchmarkLookup measures index lookups in an index of 2^20 blobs: Has of
// present and absent ids, and Lookup (with decoding) of present ids.
// Run: go test -run '^$' -bench Lookup -benchmem ./internal/index/
func BenchmarkLookup(b *testing.B) {
	ix, ids := buildIndex(b)
	b.Run("has-present", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			ok, err := ix.Has(ids[i%len(ids)])
			if err != nil || !ok {
				b.Fatalf("Has = %v, %v; want true", ok, err)
			}
		}
	})
	b.Run("has-absent", func(b *testing.B) {
		rng := rand.New(rand.NewPCG(3, 4))
		for b.Loop() {
			ok, err := ix.Has(randomID(rng))
			if err != nil || ok {
				b.Fatalf("Has = %v, %v; want false", ok, err)
			}
		}
	})
	b.Run("lookup-present", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			_, ok, err := ix.Lookup(ids[i%len(ids)])
			if err != nil || !ok {
				b.Fatalf("Lookup = %v, %v; want found", ok, err)
			}
		}
	})
	b.Run("has-present-parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			rng := rand.New(rand.NewPCG(5, 6))
			for pb.Next() {
				if ok, err := ix.Has(ids[rng.IntN(len(ids))]); err != nil || !ok {
					b.Errorf("Has = %v, %v; want true", ok, err)
					return
				}
			}
		})
	})
}
