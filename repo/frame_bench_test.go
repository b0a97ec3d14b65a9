package repo_test

import (
	"bytes"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/restic/chunker"
	"github.com/stasisbackup/stasis/cmd/zoomsim/zdb"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

// benchPages is a 64 MiB page-structured database (the benchmark
// workload's kind, fixed seed) cut with the db profile: ≈4,000 chunks of
// ≈16 KiB.
var benchPages = sync.OnceValues(func() ([][]byte, error) {
	dir, err := os.MkdirTemp("", "stasis-frame-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "X500.db")
	if err := zdb.Create(path, 64<<20/zdb.PageSize-1, 42); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p := repo.ProfileDB
	c := chunker.NewWithBoundaries(bytes.NewReader(data), enginetest.Polynomial, p.Min, p.Max)
	c.SetAverageBits(p.AvgBits)
	var chunks [][]byte
	for {
		ch, err := c.Next(nil)
		if err == io.EOF {
			return chunks, nil
		}
		if err != nil {
			return nil, err
		}
		chunks = append(chunks, ch.Data)
	}
})

// storePages stores the chunks of benchPages into a new encrypted
// repository of the given version, 32 chunks (512 KiB) per SaveFrame as
// the backup's frame builder hands them over, and returns it with the ids.
func storePages(b *testing.B, version int, chunks [][]byte) (*repo.Repository, []blob.ID, int) {
	dir := b.TempDir()
	o := enginetest.InitOptions()
	o.Version = version
	r, err := repo.Init(ctx, enginetest.Local(filepath.Join(dir, "repo")), o, enginetest.OpenOptionsIn(filepath.Join(dir, "cache")))
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]blob.ID, len(chunks))
	stored := 0
	for i := 0; i < len(chunks); i += 32 {
		var batch []repo.FrameBlob
		for j := i; j < min(i+32, len(chunks)); j++ {
			ids[j] = r.Hash(chunks[j])
			batch = append(batch, repo.FrameBlob{ID: ids[j], Data: chunks[j]})
		}
		res, err := r.SaveFrame(ctx, blob.Data, batch)
		if err != nil {
			b.Fatal(err)
		}
		stored += res.Stored
	}
	if err := r.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	return r, ids, stored
}

func benchVersions(b *testing.B, fn func(b *testing.B, version int, chunks [][]byte)) {
	chunks, err := benchPages()
	if err != nil {
		b.Fatal(err)
	}
	for _, v := range []struct {
		name    string
		version int
	}{{"chunk-per-frame-v1", 1}, {"frames-v2", 2}} {
		b.Run(v.name, func(b *testing.B) { fn(b, v.version, chunks) })
	}
}

func totalBytes(chunks [][]byte) (n int64) {
	for _, c := range chunks {
		n += int64(len(c))
	}
	return n
}

// BenchmarkStoreChunks: hash-checked store of a database's chunks
// (compress + seal + pack write), one chunk per frame against frames of
// 512 KiB. stored/raw is the compressed share.
func BenchmarkStoreChunks(b *testing.B) {
	benchVersions(b, func(b *testing.B, version int, chunks [][]byte) {
		b.SetBytes(totalBytes(chunks))
		var stored int
		for b.Loop() {
			var r *repo.Repository
			r, _, stored = storePages(b, version, chunks)
			r.Close()
		}
		b.ReportMetric(float64(stored)/float64(totalBytes(chunks)), "stored/raw")
	})
}

// BenchmarkLoadChunks: reading every chunk in file order (a restore) and
// single chunks at random (a single-chunk read: the frame is decoded for
// one chunk).
func BenchmarkLoadChunks(b *testing.B) {
	benchVersions(b, func(b *testing.B, version int, chunks [][]byte) {
		r, ids, _ := storePages(b, version, chunks)
		defer r.Close()
		b.Run("in-order", func(b *testing.B) {
			b.SetBytes(totalBytes(chunks))
			var buf []byte
			for b.Loop() {
				for _, id := range ids {
					var err error
					if buf, err = r.LoadBlob(ctx, id, buf); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		b.Run("random-single", func(b *testing.B) {
			rng := rand.New(rand.NewSource(1))
			var buf []byte
			for b.Loop() {
				var err error
				if buf, err = r.LoadBlob(ctx, ids[rng.Intn(len(ids))], buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
