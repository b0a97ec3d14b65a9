package quiesce

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Holder is a process that holds a file open for writing.
type Holder struct {
	PID     int    `json:"pid"`
	Command string `json:"command"` // from /proc/PID/comm
	Path    string `json:"path"`    // the file, as it was asked about
	FD      int    `json:"fd"`
}

// String gives "PATH open for writing by pid N (COMMAND)".
func (h Holder) String() string {
	return fmt.Sprintf("%s open for writing by pid %d (%s)", h.Path, h.PID, h.Command)
}

type fileKey struct{ dev, ino uint64 }

// OpenWriters lists the processes that hold any of paths open for writing
// (O_WRONLY or O_RDWR), found through /proc/PID/fd and /proc/PID/fdinfo.
// Files are matched by device and inode, so hard links and renamed paths
// count. Processes that vanish or whose fds are unreadable (other users when
// not root) are skipped. The result is sorted by path, then pid and fd.
func OpenWriters(ctx context.Context, paths []string) ([]Holder, error) {
	want := make(map[fileKey]string, len(paths))
	for _, p := range paths {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			continue // a file that is gone cannot be held
		}
		want[fileKey{st.Dev, st.Ino}] = p
	}
	if len(want) == 0 {
		return nil, nil
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes in /proc: %w", err)
	}
	var out []Holder
	for _, pe := range procs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		pid, err := strconv.Atoi(pe.Name())
		if err != nil {
			continue
		}
		fdDir := filepath.Join("/proc", pe.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fe := range fds {
			var st syscall.Stat_t
			if syscall.Stat(filepath.Join(fdDir, fe.Name()), &st) != nil {
				continue
			}
			p, ok := want[fileKey{st.Dev, st.Ino}]
			if !ok {
				continue
			}
			flags, err := fdFlags(pe.Name(), fe.Name())
			if err != nil || flags&syscall.O_ACCMODE == syscall.O_RDONLY {
				continue
			}
			fd, _ := strconv.Atoi(fe.Name())
			out = append(out, Holder{PID: pid, Command: comm(pe.Name()), Path: p, FD: fd})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		if a.PID != b.PID {
			return a.PID < b.PID
		}
		return a.FD < b.FD
	})
	return out, nil
}

// fdFlags reads the octal "flags:" line of /proc/PID/fdinfo/FD.
func fdFlags(pid, fd string) (int, error) {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "fdinfo", fd))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			return int(n), err
		}
	}
	return 0, fmt.Errorf("no flags in /proc/%s/fdinfo/%s", pid, fd)
}

func comm(pid string) string {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "comm"))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}
