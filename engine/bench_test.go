package engine_test

import (
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/enginetest"
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
// small files (go test -bench Restore -benchmem ./engine).
func BenchmarkRestore(b *testing.B) {
	dir := b.TempDir()
	rng := rand.New(rand.NewSource(3))
	f, _ := os.Create(filepath.Join(dir, "X500.db"))
	for i := 0; i < 16384; i++ {
		f.Write(page(rng))
	}
	f.Close()
	for i := 0; i < 2000; i++ {
		sub := filepath.Join(dir, "ldif", string(rune('a'+i%20)))
		os.MkdirAll(sub, 0o755)
		os.WriteFile(filepath.Join(sub, "e"+strconv.Itoa(i)+".ldif"), page(rng)[:1024+rng.Intn(3072)], 0o644)
	}
	r := enginetest.NewRepo(b)
	sn, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{dir}, Now: time.Now})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(sn.Summary.TotalBytes)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := engine.Restore(ctx, r, sn, engine.RestoreOptions{Target: b.TempDir(), Workers: 16}); err != nil {
			b.Fatal(err)
		}
	}
}
