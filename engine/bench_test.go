package engine_test

import (
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/stasisbackup/stasis/cmd/zoomsim/zdb"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/tree"
)

// BenchmarkBackupDatabase backs up a 64 MiB page-structured database into an
// empty repository each iteration (go test -bench BackupDatabase -benchmem ./engine).
func BenchmarkBackupDatabase(b *testing.B) {
	dir := b.TempDir()
	rng := rand.New(rand.NewSource(1))
	f, _ := os.Create(filepath.Join(dir, "X500.db"))
	for i := 0; i < 16384; i++ {
		f.Write(page(rng))
	}
	f.Close()
	b.SetBytes(64 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		r := enginetest.NewRepo(b)
		b.StartTimer()
		if _, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{dir}, Now: time.Now}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBackupSmallFiles backs up 2,000 small LDIF-like files into an
// empty repository each iteration.
func BenchmarkBackupSmallFiles(b *testing.B) {
	dir := b.TempDir()
	rng := rand.New(rand.NewSource(2))
	var total int64
	for i := 0; i < 2000; i++ {
		sub := filepath.Join(dir, "ldif", string(rune('a'+i%20)))
		os.MkdirAll(sub, 0o755)
		data := page(rng)[:1024+rng.Intn(3072)]
		total += int64(len(data))
		os.WriteFile(filepath.Join(sub, "entry"+string(rune('A'+i%26))+string(rune('a'+i/26%26))+string(rune('a'+i/676))+".ldif"), data, 0o644)
	}
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		r := enginetest.NewRepo(b)
		b.StartTimer()
		if _, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{dir}, Now: time.Now}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRestore restores a 64 MiB page-structured database and 2,000
// small files into a new directory (go test -bench Restore -benchmem ./engine).
func BenchmarkRestore(b *testing.B) {
	r, sn := restoreBenchSnapshot(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := engine.Restore(ctx, r, sn, engine.RestoreOptions{Target: b.TempDir(), Workers: 16}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRestoreAfterRemove restores the same tree as BenchmarkRestore
// into one directory, removed before each restore: the pattern of a
// disaster (the data just deleted, then restored), where journal-less ext4
// skips the inodes freed in the last minute (docs/benchmarks.md).
func BenchmarkRestoreAfterRemove(b *testing.B) {
	r, sn := restoreBenchSnapshot(b)
	target := filepath.Join(b.TempDir(), "restore")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if err := os.RemoveAll(target); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := engine.Restore(ctx, r, sn, engine.RestoreOptions{Target: target}); err != nil {
			b.Fatal(err)
		}
	}
}

// restoreBenchSnapshot backs up a 64 MiB page-structured database and
// 2,000 small files in 20 directories and sets the benchmark's bytes.
func restoreBenchSnapshot(b *testing.B) (engine.RestoreRepo, *repo.Snapshot) {
	b.Helper()
	dir := b.TempDir()
	rng := rand.New(rand.NewSource(3))
	f, err := os.Create(filepath.Join(dir, "X500.db"))
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 16384; i++ {
		f.Write(page(rng))
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 2000; i++ {
		sub := filepath.Join(dir, "ldif", string(rune('a'+i%20)))
		os.MkdirAll(sub, 0o755)
		if err := os.WriteFile(filepath.Join(sub, "e"+strconv.Itoa(i)+".ldif"), page(rng)[:1024+rng.Intn(3072)], 0o644); err != nil {
			b.Fatal(err)
		}
	}
	r := enginetest.NewRepo(b)
	sn, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{dir}, Now: time.Now})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(sn.Summary.TotalBytes)
	return r, sn
}

// BenchmarkZstdDictionary measures the decision behind the repository's
// compression dictionary (docs/format.md): 16 KiB chunks of a zoomsim
// database compressed one by one at zstd's fastest level, without and with a
// 64 KiB raw-content dictionary sampled as the repository samples it.
// go test -run '^$' -bench ZstdDictionary ./engine
func BenchmarkZstdDictionary(b *testing.B) {
	// Zoomserv-like pages (cmd/zoomsim's generator), 32 MiB.
	db := filepath.Join(b.TempDir(), "X500.db")
	if err := zdb.Create(db, 8192, 1); err != nil {
		b.Fatal(err)
	}
	data, err := os.ReadFile(db)
	if err != nil {
		b.Fatal(err)
	}
	const cs = 16 << 10
	var chunks [][]byte
	for i := 0; i+cs <= len(data); i += cs {
		chunks = append(chunks, data[i:i+cs])
	}
	var dict []byte
	for i := 0; len(dict) < 64<<10; i++ {
		dict = append(dict, chunks[i][:4096]...)
	}
	for _, withDict := range []bool{false, true} {
		name := "none"
		eo := []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderCRC(false), zstd.WithEncoderConcurrency(1)}
		do := []zstd.DOption{zstd.WithDecoderConcurrency(1)}
		if withDict {
			name = "dict64K"
			eo = append(eo, zstd.WithEncoderDictRaw(40000, dict))
			do = append(do, zstd.WithDecoderDictRaw(40000, dict))
		}
		enc, _ := zstd.NewWriter(nil, eo...)
		dec, _ := zstd.NewReader(nil, do...)
		var frames [][]byte
		stored := 0
		for _, c := range chunks {
			f := enc.EncodeAll(c, nil)
			frames = append(frames, f)
			stored += len(f)
		}
		b.Run(name+"/encode", func(b *testing.B) {
			b.SetBytes(int64(len(chunks) * cs))
			buf := make([]byte, 0, cs)
			for i := 0; i < b.N; i++ {
				for _, c := range chunks {
					buf = enc.EncodeAll(c, buf[:0])
				}
			}
			b.ReportMetric(float64(len(chunks)*cs)/float64(stored), "ratio")
		})
		b.Run(name+"/decode", func(b *testing.B) {
			b.SetBytes(int64(len(chunks) * cs))
			buf := make([]byte, 0, cs)
			for i := 0; i < b.N; i++ {
				for _, f := range frames {
					buf, _ = dec.DecodeAll(f, buf[:0])
				}
			}
		})
	}
}

// BenchmarkRestoreDaysOfChanges restores a 64 MiB page-structured database
// after ten days of 150 single pages rewritten all over it, each day backed
// up: the changed pages of a day sit in a few frames that the whole file
// uses. It reports the frames decoded per restore beside the frames the
// file uses (a restore that decodes each frame once has the two equal).
// go test -run '^$' -bench RestoreDaysOfChanges ./engine
func BenchmarkRestoreDaysOfChanges(b *testing.B) {
	dir := b.TempDir()
	db := filepath.Join(dir, "X500.db")
	const pages = 16384
	rng := rand.New(rand.NewSource(4))
	writePages(b, db, pages, rng)
	r := enginetest.NewRepo(b)
	var sn *repo.Snapshot
	for day := 0; day <= 10; day++ {
		if day > 0 {
			f, err := os.OpenFile(db, os.O_RDWR, 0)
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; i < 150; i++ {
				f.WriteAt(page(rng), int64(rng.Intn(pages))*4096)
			}
			f.Close()
		}
		var err error
		if sn, err = engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{dir}, Now: clock(day1.Add(time.Duration(day) * 24 * time.Hour))}); err != nil {
			b.Fatal(err)
		}
	}
	var node tree.Node
	engine.Walk(ctx, r, sn, db, func(_ string, n *tree.Node) error { node = *n; return nil })
	frames := map[[3]uint64]bool{}
	for _, e := range node.Content {
		if loc, ok, _ := r.Index().Lookup(e.ID); ok && loc.Storage.Framed() {
			frames[[3]uint64{uint64(loc.Pack[0])<<56 | uint64(loc.Pack[1])<<48 | uint64(loc.Pack[2])<<40, loc.Offset, uint64(loc.Length)}] = true
		}
	}
	b.SetBytes(int64(node.Size))
	b.ResetTimer()
	decoded := int64(0)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		r2, err := repo.Open(ctx, enginetest.Local(r.Location()), enginetest.OpenOptionsIn(b.TempDir())) // no frame cached
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := engine.Restore(ctx, r2, sn, engine.RestoreOptions{Target: b.TempDir(), Includes: []string{db}}); err != nil {
			b.Fatal(err)
		}
		decoded += r2.DataFramesDecoded()
		b.StopTimer()
		r2.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(decoded)/float64(b.N), "frames-decoded/op")
	b.ReportMetric(float64(len(frames)), "frames-used")
}
