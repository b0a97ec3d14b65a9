// Command stasis-bench measures stasis side by side with restic and borg on
// a generated Zoomserv-like tree, and measures stasis against a repository
// of millions of chunks.
//
//	stasis-bench [run] [flags]   the side-by-side scenarios; prints one markdown table
//	stasis-bench scale [flags]   backup peak RSS into a 10-million-chunk repository vs an empty one
//	stasis-bench profile [flags] CPU profile of a full stasis backup, in process
//	stasis-bench s3 [flags]      stasis and restic on a local directory and on S3 (SeaweedFS on loopback)
//
// The workload (fixed seed, so the same bytes every time): a page-structured
// X500.db written with cmd/zoomsim/zdb (--db-size, 1 GiB by default) whose
// pages hold directory records, a transaction log, and --files small LDIF and
// config files. Scenarios: initial backup; re-backup with nothing changed;
// daily change (1% of the pages rewritten in runs of 1..16 adjacent pages,
// 64 pages appended, 1 MiB of log, 50 new files) then backup; full restore;
// single-file restore (X500.db). Each is run --runs times per tool and the
// median of each figure is reported.
//
// Figures per tool and scenario: wall time; CPU time (user+sys from the
// child's rusage); peak RSS (rusage ru_maxrss); bytes read (rchar from
// /proc/<pid>/io: bytes passed by read(2)-family calls whether or not they
// came from the page cache; memory-mapped reads are not counted); repository
// growth (du of the repository directory, caches excluded).
//
// restic and borg are used when found on PATH (Debian packages restic and
// borgbackup); a missing one is named and the run goes on without it.
// stasis is built from the module in the current directory unless --stasis
// names a binary. Run it as root for reliable /proc/<pid>/io and for --cold.
//
// s3 runs stasis and restic (borg has no S3 backend) on the same workload,
// each on a local directory and on a SeaweedFS S3 gateway it starts on
// 127.0.0.1 for the run (the weed binary of .ci/build-seaweedfs, or
// $STASIS_WEED) and stops after it: per run and tool a fresh repository (an
// S3 repository is a fresh prefix in one bucket) and empty client caches in
// the work directory, then initial backup, re-backup with nothing changed,
// full restore (checked). Both tools encrypt (stasis with a password, as with
// --stasis-encrypt). Figures: wall, CPU, peak RSS, and the repository size
// after each backup (du of the directory; the sum of the object sizes under
// the prefix); one table per backend.
//
// floor applies the daily change to a workload of its own (WORK/floor) and
// prints the floor of the daily growth: only the changed database pages, the
// log's new bytes and the new files, compressed with zstd in 512 KiB frames
// at three levels (runFloor).
//
// change --day N generates the workload in WORK/data (or reuses it) and
// applies day N's change to it, as run does before its daily backup: for
// profiling one daily backup with the CLI (docs/benchmarks.md).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the flags shared by the subcommands.
type options struct {
	work        string
	dbSize      int64
	logSize     int64
	files       int
	seed        int64
	day         int
	runs        int
	cold        bool
	stasisBin   string
	tools       string
	borgComp    string
	encrypt     bool
	out         string
	chunks      int
	cpuprofile  string
	keepWorkDir bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("stasis-bench "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var dbSize, logSize string
	fs.StringVar(&o.work, "work", filepath.Join(os.TempDir(), "stasis-bench"), "work directory (workload, repositories, restores); reused between runs")
	fs.StringVar(&dbSize, "db-size", "1GiB", "size of X500.db (KiB, MiB, GiB suffixes)")
	fs.StringVar(&logSize, "log-size", "", "size of the transaction log (default: db-size/16)")
	fs.IntVar(&o.files, "files", 20000, "number of small LDIF/config files")
	fs.Int64Var(&o.seed, "seed", 1, "workload seed")
	fs.IntVar(&o.day, "day", 1, "change: the day whose change to apply")
	fs.IntVar(&o.runs, "runs", 3, "runs of each scenario (the median is reported)")
	fs.BoolVar(&o.cold, "cold", false, "drop the page cache before every measured command (root only); default: warm cache")
	fs.StringVar(&o.stasisBin, "stasis", "", "stasis binary (default: go build ./cmd/stasis from the current module)")
	fs.StringVar(&o.tools, "tools", "stasis,restic,borg", "tools to run, comma-separated")
	fs.StringVar(&o.borgComp, "borg-compression", "zstd,3", "borg --compression (borg's own default is lz4)")
	fs.BoolVar(&o.encrypt, "stasis-encrypt", false, "encrypt the stasis repository (password) instead of --insecure-no-password")
	fs.StringVar(&o.out, "out", "", "also write the markdown report to this file")
	fs.IntVar(&o.chunks, "chunks", 10_000_000, "scale: synthetic index entries in the large repository")
	fs.StringVar(&o.cpuprofile, "cpuprofile", os.Getenv("STASIS_CPUPROFILE"), "profile: CPU profile file (default $STASIS_CPUPROFILE, else WORK/cpu.pprof)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var err error
	if o.dbSize, err = parseSize(dbSize); err != nil {
		fmt.Fprintf(stderr, "stasis-bench: --db-size: %v\n", err)
		return 2
	}
	o.logSize = o.dbSize / 16
	if logSize != "" {
		if o.logSize, err = parseSize(logSize); err != nil {
			fmt.Fprintf(stderr, "stasis-bench: --log-size: %v\n", err)
			return 2
		}
	}
	if o.runs < 1 {
		fmt.Fprintln(stderr, "stasis-bench: --runs must be at least 1")
		return 2
	}
	if cmd == "fill-index" { // internal: run by scale in a child process, in its --work as given
		return exitCode(runFillIndex(ctx, o, stdout), stderr)
	}
	if o.work, err = filepath.Abs(o.work); err != nil {
		fmt.Fprintf(stderr, "stasis-bench: %v\n", err)
		return 1
	}
	if err := os.MkdirAll(o.work, 0o755); err != nil {
		fmt.Fprintf(stderr, "stasis-bench: %v\n", err)
		return 1
	}
	log := func(format string, a ...any) { fmt.Fprintf(stderr, "stasis-bench: "+format+"\n", a...) }
	switch cmd {
	case "run":
		err = runSideBySide(ctx, o, stdout, log)
	case "scale":
		err = runScale(ctx, o, stdout, log)
	case "profile":
		err = runProfile(ctx, o, stdout, log)
	case "s3":
		err = runS3(ctx, o, stdout, log)
	case "floor":
		err = runFloor(ctx, o, stdout, log)
	case "change":
		err = runChange(o, stdout)
	default:
		fmt.Fprintf(stderr, "stasis-bench: unknown command %q: use run, scale, profile, s3, floor or change\n", cmd)
		return 2
	}
	return exitCode(err, stderr)
}

func (o options) workload() Workload {
	return Workload{Root: filepath.Join(o.work, "data", "srv", "zoomserv"), DBSize: o.dbSize, LogSize: o.logSize, Files: o.files, Seed: o.seed}
}

// parseSize reads "1GiB", "64MiB", "512KiB", "4096" (bytes).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.m
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size: use bytes or a KiB/MiB/GiB suffix", s)
	}
	return n * mult, nil
}

// buildStasis builds cmd/stasis of the module in the current directory into
// the work directory.
func buildStasis(ctx context.Context, o options) (string, error) {
	if o.stasisBin != "" {
		return o.stasisBin, nil
	}
	bin := filepath.Join(o.work, "bin", "stasis")
	c := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/stasisbackup/stasis/cmd/stasis")
	if out, err := c.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build stasis (run stasis-bench inside the stasis module, or give --stasis BIN): %w\n%s", err, out)
	}
	return bin, nil
}

// machine describes this machine for the report.
func machine() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d CPUs (%s)", runtime.NumCPU(), cpuModel())
	if m, err := os.ReadFile("/proc/meminfo"); err == nil {
		line, _, _ := strings.Cut(string(m), "\n")
		f := strings.Fields(line)
		if len(f) >= 2 {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			fmt.Fprintf(&b, ", %.1f GiB RAM", float64(kb)/(1<<20))
		}
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		fmt.Fprintf(&b, ", Linux %s", utsString(u.Release[:]))
	}
	return b.String()
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func utsString(a []int8) string {
	var b strings.Builder
	for _, c := range a {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	return b.String()
}

// disk describes the file system holding dir (from /proc/self/mounts).
func disk(dir string) string {
	var st syscall.Statfs_t
	desc := "unknown file system"
	b, _ := os.ReadFile("/proc/self/mounts")
	best := ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && strings.HasPrefix(dir, f[1]) && len(f[1]) >= len(best) {
			best, desc = f[1], fmt.Sprintf("%s on %s (%s)", f[0], f[1], f[2])
		}
	}
	if syscall.Statfs(dir, &st) == nil {
		desc += fmt.Sprintf(", %.0f GiB", float64(st.Blocks)*float64(st.Bsize)/(1<<30))
	}
	if dev, _, ok := strings.Cut(strings.TrimPrefix(desc, "/dev/"), " "); ok {
		if rot, err := os.ReadFile("/sys/block/" + dev + "/queue/rotational"); err == nil {
			if strings.TrimSpace(string(rot)) == "0" {
				desc += ", non-rotational"
			} else {
				desc += ", rotational"
			}
		}
	}
	return desc
}

// loadAvg is the first three fields of /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func exitCode(err error, stderr io.Writer) int {
	if err != nil {
		fmt.Fprintf(stderr, "stasis-bench: %v\n", err)
		return 1
	}
	return 0
}

// selfPeakRSS is the harness's own peak RSS: on Linux every child's
// ru_maxrss starts at its parent's peak, so this is the floor of the figures.
func selfPeakRSS() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Maxrss << 10
}
