package lock

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// process identifies the running process and its host.
type process struct {
	host      string
	machineID string // /etc/machine-id, "" if unknown
	bootID    string // /proc/sys/kernel/random/boot_id, "" if unknown
	pidNS     string // /proc/self/ns/pid link, e.g. "pid:[4026531836]", "" if unknown
	start     uint64 // start time in clock ticks after boot, 0 if unknown
}

var (
	selfOnce sync.Once
	self     process
)

// selfProcess returns the identity of this process, computed once.
func selfProcess() process {
	selfOnce.Do(func() {
		self.host, _ = os.Hostname()
		if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
			self.bootID = strings.TrimSpace(string(b))
		}
		if b, err := os.ReadFile("/etc/machine-id"); err == nil {
			self.machineID = strings.TrimSpace(string(b))
		}
		self.pidNS, _ = os.Readlink("/proc/self/ns/pid")
		_, self.start = procStat(os.Getpid())
	})
	return self
}

// processAlive reports whether pid is a live process on this host and, if
// known, its start time. kill(pid, 0) failing with ESRCH means gone; EPERM
// means it exists. A zombie (state Z or X in /proc/<pid>/stat) has exited.
func processAlive(pid int) (alive bool, start uint64) {
	if pid <= 0 {
		return false, 0
	}
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false, 0
	}
	state, start := procStat(pid)
	if state == 'Z' || state == 'X' {
		return false, 0
	}
	return true, start
}

// procStat returns the state (field 3) and start time in clock ticks after
// boot (field 22) of /proc/<pid>/stat; 0, 0 if unknown. The command name
// (field 2) may contain spaces and parentheses, so fields are counted after
// its last ')'.
func procStat(pid int) (state byte, start uint64) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0
	}
	return parseStat(b)
}

func parseStat(b []byte) (state byte, start uint64) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0
	}
	fields := strings.Fields(string(b[i+1:])) // fields[0] is field 3
	if len(fields) < 20 || len(fields[0]) != 1 {
		return 0, 0
	}
	n, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return fields[0][0], 0
	}
	return fields[0][0], n
}
