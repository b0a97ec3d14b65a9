package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Sample is what one run of a child process cost.
type Sample struct {
	Wall      time.Duration
	CPU       time.Duration // user + sys of the child (rusage)
	MaxRSS    int64         // peak resident set in bytes (rusage ru_maxrss)
	RChar     int64         // bytes through read(2)-family calls, cached or not (/proc/<pid>/io rchar)
	ReadBytes int64         // bytes fetched from the block layer (/proc/<pid>/io read_bytes)
	Growth    int64         // repository growth in bytes (du), when the scenario writes one
	Size      int64         // repository size in bytes after the command (s3), -1 when not taken
}

// measure runs cmd to completion and returns its cost. The child's
// /proc/<pid>/io is read after it exited but before it is reaped (waitid
// with WNOWAIT), so the counters are final. Output goes to a buffer that is
// quoted in the error when the command fails.
func measure(cmd *exec.Cmd) (Sample, error) {
	var out bytes.Buffer
	if cmd.Stdout == nil {
		cmd.Stdout = &out
	}
	if cmd.Stderr == nil {
		cmd.Stderr = &out
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Sample{}, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	pid := cmd.Process.Pid
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			if err != nil {
				cmd.Process.Kill()
				cmd.Wait()
				return Sample{}, fmt.Errorf("wait for %s: %w", cmd.Path, err)
			}
			break
		}
	}
	wall := time.Since(start)
	ioc, ioErr := procIO(pid)
	err := cmd.Wait()
	if err != nil {
		return Sample{}, fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, tail(out.String(), 2000))
	}
	if ioErr != nil {
		return Sample{}, ioErr
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return Sample{
		Wall:      wall,
		CPU:       time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
		MaxRSS:    ru.Maxrss << 10,
		RChar:     ioc["rchar"],
		ReadBytes: ioc["read_bytes"],
	}, nil
}

// procIO parses /proc/<pid>/io.
func procIO(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return nil, fmt.Errorf("read I/O counters of pid %d: %w (the harness must run as root or as the children's owner)", pid, err)
	}
	m := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err == nil {
			m[k] = n
		}
	}
	return m, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// diskUsage is `du -s` in bytes: the allocated blocks of everything below dir.
func diskUsage(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			total += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("disk usage of %s: %w", dir, err)
	}
	return total, nil
}

// measureCold is measure after emptying the page cache when --cold asks
// for it.
func measureCold(o options, cmd *exec.Cmd) (Sample, error) {
	if o.cold {
		if err := dropCaches(); err != nil {
			return Sample{}, err
		}
	}
	return measure(cmd)
}

// freshTarget makes dir an empty directory to restore into. It lets the
// file system finish deleting what dir held (journal, discard) before the
// clock starts, so that no tool pays for another's cleanup.
func freshTarget(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	syncFS()
	return nil
}

// syncFS is sync(2); tests that must not flush the whole machine's dirty
// pages replace it.
var syncFS = syscall.Sync

// dropCaches writes dirty pages and empties the page cache (root only).
func dropCaches() error {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
		return fmt.Errorf("drop page cache: %w (--cold needs root)", err)
	}
	return nil
}

// median returns the median of samples field by field (each field's own
// median, so the figures of one row may come from different runs).
func median(ss []Sample) Sample {
	pick := func(f func(Sample) int64) int64 {
		v := make([]int64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
		if len(v) == 0 {
			return 0
		}
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return Sample{
		Wall:      time.Duration(pick(func(s Sample) int64 { return int64(s.Wall) })),
		CPU:       time.Duration(pick(func(s Sample) int64 { return int64(s.CPU) })),
		MaxRSS:    pick(func(s Sample) int64 { return s.MaxRSS }),
		RChar:     pick(func(s Sample) int64 { return s.RChar }),
		ReadBytes: pick(func(s Sample) int64 { return s.ReadBytes }),
		Growth:    pick(func(s Sample) int64 { return s.Growth }),
		Size:      pick(func(s Sample) int64 { return s.Size }),
	}
}
