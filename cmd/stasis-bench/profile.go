package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
)

func runtimeVersion() string { return runtime.Version() }

// openRepo opens a repository made by the stasis binary, with the bench's
// password when it is encrypted.
func openRepo(ctx context.Context, dir string) (*repo.Repository, error) {
	return openRepoCache(ctx, dir, "")
}

// openRepoCache is openRepo with the client cache in cacheDir ("" for the
// default).
func openRepoCache(ctx context.Context, dir, cacheDir string) (*repo.Repository, error) {
	st, err := repo.OpenStorage(ctx, dir)
	if err != nil {
		return nil, err
	}
	return repo.Open(ctx, st, repo.OpenOptions{CacheDir: cacheDir, Password: func(context.Context) ([]byte, error) { return []byte("stasis-bench"), nil }})
}

// readyStasis generates the workload (or reuses it), reads it once and
// builds stasis: the start of scale and profile.
func readyStasis(ctx context.Context, o options) (Workload, string, error) {
	w := o.workload()
	if _, err := w.Generate(); err != nil {
		return w, "", err
	}
	if _, err := warm(w.Root); err != nil {
		return w, "", err
	}
	bin, err := buildStasis(ctx, o)
	return w, bin, err
}

// runProfile takes a full (initial) backup of the workload in process, under
// the CPU profiler, and prints `go tool pprof -top` of it.
func runProfile(ctx context.Context, o options, stdout io.Writer, log func(string, ...any)) error {
	w, bin, err := readyStasis(ctx, o)
	if err != nil {
		return err
	}
	t := stasisAt(ctx, bin, o.work, filepath.Join(o.work, "repo-profile"), "", o.encrypt)
	if err := t.Reset(ctx); err != nil {
		return err
	}
	r, err := openRepo(ctx, t.Repo)
	if err != nil {
		return err
	}
	defer r.Close()
	out := o.cpuprofile
	if out == "" {
		out = filepath.Join(o.work, "cpu.pprof")
	}
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("create CPU profile: %w", err)
	}
	defer f.Close()
	var before syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	start := time.Now()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	sn, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{w.Root}, Host: "bench"})
	pprof.StopCPUProfile()
	wall := time.Since(start)
	if err != nil {
		return fmt.Errorf("profiled backup: %w", err)
	}
	var after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	fmt.Fprintf(stdout, "In-process backup of %s: %s read, %s stored, wall %.2fs, CPU %.2fs (%.2f cores busy); profile in %s\n\n",
		w.Root, mib(sn.Summary.BytesRead), mib(sn.Summary.StoredAdded), wall.Seconds(), cpu.Seconds(), cpu.Seconds()/wall.Seconds(), out)
	self, _ := os.Executable()
	for _, args := range [][]string{{"-top", "-nodecount=30"}, {"-top", "-cum", "-nodecount=30"}} {
		c := exec.CommandContext(ctx, "go", append(append([]string{"tool", "pprof"}, args...), self, out)...)
		c.Stdout, c.Stderr = stdout, stdout
		if err := c.Run(); err != nil {
			log("go tool pprof: %v (read the profile with `go tool pprof -top %s`)", err, out)
		}
		fmt.Fprintln(stdout)
	}
	return nil
}
