package quiesce

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/internal/loopfs"
)

// benchDBSize is the page database's size in BenchmarkSnapshotDowntime:
// 1 GiB, or STASIS_BENCH_DB_MIB MiB.
func benchDBSize(b *testing.B) int64 {
	if s := os.Getenv("STASIS_BENCH_DB_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			b.Fatalf("STASIS_BENCH_DB_MIB=%q: want a positive number of MiB", s)
		}
		return int64(n) << 20
	}
	return 1 << 30
}

// writePages creates a database file of size bytes of random pages, fsynced.
func writePages(b *testing.B, path string, size int64) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 8<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		rng.Read(buf)
		if _, err := f.WriteAt(buf[:min(int64(len(buf)), size-off)], off); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

// overwritePages is the writer between backups: n random 4 KiB pages
// overwritten in place, then fsync (each write to a shared extent is
// copied on write, so the file fragments).
func overwritePages(b *testing.B, path string, n int, seed uint64) {
	b.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	pages := int(fi.Size() / 4096)
	rng := rand.New(rand.NewPCG(seed, 14))
	data := rand.NewChaCha8([32]byte{byte(seed), 14})
	page := make([]byte, 4096)
	for i := 0; i < n; i++ {
		data.Read(page)
		if _, err := f.WriteAt(page, int64(rng.IntN(pages))*4096); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

var filefragRe = regexp.MustCompile(`: (\d+) extents? found`)

// filefrag returns the extent count filefrag reports for path.
func filefrag(b *testing.B, path string) int {
	b.Helper()
	out, err := exec.Command("filefrag", path).CombinedOutput()
	m := filefragRe.FindSubmatch(out)
	if err != nil || m == nil {
		b.Fatalf("filefrag %s: %v: %s", path, err, out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// BenchmarkSnapshotDowntime measures the downtime (quiesce hook start to
// resume hook end; the hooks are `true`) of freeze snapshot on btrfs and of
// freeze reflink on XFS for one page database file, fresh and after a writer
// overwrote random 4 KiB pages (a fifth of them, fsynced) between three
// backups, while the backup reads the clone or snapshot (issue 14); copy
// mode on the same file for comparison, staged on the temp directory's
// filesystem. The capture reads nothing: only
// the window is measured. Reflink is also measured with
// an operator's remedy: xfs_fsr (defragmentation) after each backup, and a
// copy-on-write extent size hint (xfs_io cowextsize 16m) set on the file
// before the first. Each iteration is three backups on a fresh loop-mounted
// image; root only. Cases can be picked: -bench 'SnapshotDowntime/snapshot'.
//
//	go test -bench SnapshotDowntime -run '^$' -benchtime 1x ./engine/quiesce/
//	STASIS_BENCH_DB_MIB=256 go test -bench ...   # a smaller database
func BenchmarkSnapshotDowntime(b *testing.B) {
	size := benchDBSize(b)
	writes := int(size / 4096 / 5) // per round between backups: a fifth of the pages
	for _, c := range []struct {
		name   string
		mkfs   []string
		freeze Freeze
		before []string // xfs_io commands on the fresh file
		after  []string // a command run on the file after each backup
	}{
		{name: "snapshot-btrfs", mkfs: []string{"mkfs.btrfs", "-q", "-f"}, freeze: FreezeSnapshot},
		{name: "reflink-xfs", mkfs: []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1"}, freeze: FreezeReflink},
		{name: "copy-xfs", mkfs: []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1"}, freeze: FreezeCopy},
		{name: "reflink-xfs-fsr", mkfs: []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1"}, freeze: FreezeReflink, after: []string{"xfs_fsr"}},
		{name: "reflink-xfs-cowextsize16m", mkfs: []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1"}, freeze: FreezeReflink, before: []string{"cowextsize 16m"}},
	} {
		b.Run(fmt.Sprintf("%s/%dMiB", c.name, size>>20), func(b *testing.B) {
			var fresh, frag, create, cli float64
			var extents int
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				mnt := loopfs.Mount(b, "snapshot downtime benchmark", 3*size+(512<<20), c.mkfs...)
				data := filepath.Join(mnt, "svc")
				if c.freeze == FreezeSnapshot {
					if out, err := exec.Command("btrfs", "subvolume", "create", data).CombinedOutput(); err != nil {
						b.Fatalf("btrfs subvolume create: %v: %s", err, out)
					}
				} else if err := os.Mkdir(data, 0o755); err != nil {
					b.Fatal(err)
				}
				db := filepath.Join(data, "pages.db")
				if len(c.before) > 0 {
					os.WriteFile(db, nil, 0o644) // hints are set on an empty file
					for _, cmd := range c.before {
						if out, err := exec.Command("xfs_io", "-c", cmd, db).CombinedOutput(); err != nil {
							b.Fatalf("xfs_io -c %q: %v: %s", cmd, err, out)
						}
					}
					out, _ := exec.Command("xfs_io", "-c", "cowextsize", db).CombinedOutput()
					b.Logf("%s: xfs_io -c cowextsize: %s", c.name, bytes.TrimSpace(out))
				}
				writePages(b, db, size)
				opts := Options{Paths: []string{data}, Quiesce: "true", Resume: "true", Freeze: c.freeze}
				if c.freeze == FreezeCopy {
					// On another filesystem (the temp dir's): staged on the
					// same XFS, copy_file_range clones, and copy is reflink.
					opts.Staging = filepath.Join(b.TempDir(), "staging")
				}
				b.StartTimer()
				for round := 0; round < 3; round++ {
					b.StopTimer()
					n := filefrag(b, db) // what this backup's clone or snapshot faces
					b.StartTimer()
					rep, err := Run(context.Background(), opts, func(context.Context, *Stage) error {
						if round < 2 {
							// The service runs while the backup reads the
							// clone or snapshot: its writes are copied on write.
							b.StopTimer()
							overwritePages(b, db, writes, uint64(round))
							b.StartTimer()
						}
						return nil
					})
					if err != nil {
						b.Fatal(err)
					}
					if rep.Freeze != c.freeze {
						b.Fatalf("freeze %s, want %s: %v", rep.Freeze, c.freeze, rep.Warnings)
					}
					b.StopTimer()
					b.Logf("%s backup %d: %d extents, downtime %.1f ms", c.name, round+1, n, rep.DowntimeSeconds*1000)
					if round == 0 {
						fresh += rep.DowntimeSeconds
					} else if round == 2 {
						frag += rep.DowntimeSeconds
						extents += n
					}
					if rep.Snapshot != nil && round == 2 {
						create += rep.Snapshot.CreateSeconds
					}
					for _, cmd := range c.after {
						out, err := exec.Command(cmd, "-v", db).CombinedOutput()
						if err != nil {
							b.Fatalf("%s %s: %v: %s", cmd, db, err, out)
						}
						b.Logf("%s -v: %s; then %d extents", cmd, bytes.TrimSpace(out), filefrag(b, db))
					}
					b.StartTimer()
				}
				if c.freeze == FreezeSnapshot {
					// For comparison: the same snapshot by the btrfs command.
					b.StopTimer()
					dest := filepath.Join(mnt, "cli-snapshot")
					start := time.Now()
					if out, err := exec.Command("btrfs", "subvolume", "snapshot", "-r", data, dest).CombinedOutput(); err != nil {
						b.Fatalf("btrfs subvolume snapshot: %v: %s", err, out)
					}
					cli += time.Since(start).Seconds()
					if out, err := exec.Command("btrfs", "subvolume", "delete", dest).CombinedOutput(); err != nil {
						b.Fatalf("btrfs subvolume delete: %v: %s", err, out)
					}
					b.StartTimer()
				}
			}
			b.StopTimer()
			n := float64(b.N)
			b.ReportMetric(fresh/n*1000, "fresh-downtime-ms")
			b.ReportMetric(frag/n*1000, "frag-downtime-ms")
			b.ReportMetric(float64(extents)/n, "frag-extents")
			if c.freeze == FreezeSnapshot {
				b.ReportMetric(create/n*1000, "frag-create-ms")
				b.ReportMetric(cli/n*1000, "btrfs-cli-create-ms")
			}
		})
	}
}
