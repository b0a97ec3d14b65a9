package engine_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
)

// encBenchSize is the data BenchmarkBackupEncrypted and BenchmarkBackupPlain
// back up: 16 files of 16 MiB.
const encBenchSize = 256 << 20

// semiCompressible writes 16 files of 16 MiB into dir: 64 KiB blocks that
// are alternately random (incompressible) and log-like text drawn from a
// small vocabulary (zstd shrinks it about 3-4x), from a fixed seed.
func semiCompressible(b *testing.B, dir string) {
	b.Helper()
	rng := rand.New(rand.NewPCG(5, 5))
	words := []string{"dn:", "cn=alice", "o=Zoomserv", "objectClass:", "person", "mail:", "2026-11-29T02:00:00Z", "modify", "replace", "uid="}
	block := make([]byte, 64<<10)
	for f := range 16 {
		fh, err := os.Create(filepath.Join(dir, "file"+strconv.Itoa(f)+".dat"))
		if err != nil {
			b.Fatal(err)
		}
		for i := range (16 << 20) / len(block) {
			if i%2 == 0 {
				for j := range block {
					block[j] = byte(rng.Uint32())
				}
			} else {
				block = block[:0]
				for len(block) < 64<<10 {
					block = append(block, words[rng.IntN(len(words))]...)
					block = strconv.AppendUint(block, uint64(rng.IntN(100000)), 10)
					block = append(block, " \n"[rng.IntN(2)])
				}
				block = block[:64<<10]
			}
			if _, err := fh.Write(block); err != nil {
				b.Fatal(err)
			}
		}
		if err := fh.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// benchBackup backs up the same 256 MiB into a new repository every
// iteration, encrypted or not; the repository is created and removed
// outside the timer.
func benchBackup(b *testing.B, encrypted bool) {
	src := b.TempDir()
	semiCompressible(b, src)
	b.SetBytes(encBenchSize)
	ctx := context.Background()
	var stored int64
	var cpu time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := filepath.Join(b.TempDir(), "repo")
		o := enginetest.InitOptions()
		o.InsecureNoPassword = !encrypted
		r, err := repo.Init(ctx, enginetest.Local(dir), o, repo.OpenOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		before := cpuTime()
		sn, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{src}, Now: time.Now})
		if err != nil {
			b.Fatal(err)
		}
		cpu += cpuTime() - before
		b.StopTimer()
		stored = sn.Summary.StoredAdded
		r.Close()
		os.RemoveAll(dir)
		b.StartTimer()
	}
	b.ReportMetric(float64(stored)/encBenchSize, "stored/raw")
	// CPU time (user+system, all threads) is far less disturbed than wall
	// time by other work on a shared machine.
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
}

// cpuTime returns the user+system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkBackupEncrypted and BenchmarkBackupPlain measure what encryption
// costs a backup (docs/benchmarks.md, "Encryption cost"):
//
//	go test -run '^$' -bench 'BackupEncrypted|BackupPlain' -count 5 ./engine
func BenchmarkBackupEncrypted(b *testing.B) { benchBackup(b, true) }

// BenchmarkBackupPlain is BenchmarkBackupEncrypted with --insecure-no-password.
func BenchmarkBackupPlain(b *testing.B) { benchBackup(b, false) }
