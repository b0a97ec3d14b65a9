package quiesce

import (
	"bytes"
	"context"
	"errors"
	"golang.org/x/sys/unix"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestHookEnvAndOutput(t *testing.T) {
	var log bytes.Buffer
	h := Hook{Phase: PhaseQuiesce, Repo: "/r", Paths: []string{"/a", "/b"},
		Command: `echo "phase=$STASIS_PHASE repo=$STASIS_REPO"; printf 'paths=%s\n' "$STASIS_PATHS"; echo oops >&2`}
	res, err := RunHook(context.Background(), h, &log)
	if err != nil || !res.OK() || res.Exit != 0 || res.TimedOut {
		t.Fatalf("RunHook = %+v, %v", res, err)
	}
	for _, want := range []string{"phase=quiesce repo=/r", "paths=/a\n/b\n", "oops\n"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log %q lacks %q", log.String(), want)
		}
	}
}

func TestHookExitStatus(t *testing.T) {
	res, err := RunHook(context.Background(), Hook{Phase: PhaseResume, Command: "exit 3"}, nil)
	if err == nil || res.Exit != 3 || res.OK() || !strings.Contains(err.Error(), `resume hook "exit 3" failed`) {
		t.Fatalf("RunHook = %+v, %v; want exit 3 and an error naming the hook", res, err)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// A hook that ignores SIGTERM is SIGKILLed with its whole process group,
// including a background child.
func TestHookTimeoutKillsGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child")
	h := Hook{Phase: PhaseQuiesce, Timeout: time.Second, Grace: 200 * time.Millisecond,
		Command: "trap '' TERM; sleep 60 & echo $! > " + pidFile + "; wait"}
	res, err := RunHook(context.Background(), h, nil)
	if !errors.Is(err, ErrHookTimeout) || !res.TimedOut || res.Exit != -1 {
		t.Fatalf("RunHook = %+v, %v; want a timeout", res, err)
	}
	b, rerr := os.ReadFile(pidFile)
	if rerr != nil {
		t.Fatal(rerr)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 0 {
		t.Fatalf("bad child pid %q", b)
	}
	// SIGKILL was sent to the group before RunHook returned; the child may
	// still be exiting. Wait for its exit on a pidfd (readable once the
	// process has terminated), bounded, instead of a sleep.
	if fd, err := unix.PidfdOpen(pid, 0); err == nil {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, _ := unix.Poll(fds, 10000)
		unix.Close(fd)
		if n != 1 {
			t.Fatalf("background child %d of the hook survived (still running 10 s after the kill)", pid)
		}
	} else if alive(pid) {
		t.Fatalf("background child %d of the hook survived", pid)
	}
}

func TestHookCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r, w, _ := os.Pipe()
	defer r.Close()
	go func() {
		// The hook writes a line once it runs; then cancel.
		buf := make([]byte, 1)
		r.Read(buf)
		cancel()
	}()
	h := Hook{Phase: PhaseQuiesce, Timeout: time.Minute, Grace: time.Second}
	h.Command = "echo x > /proc/" + strconv.Itoa(os.Getpid()) + "/fd/" + strconv.Itoa(int(w.Fd())) + "; exec sleep 60"
	res, err := RunHook(ctx, h, nil)
	w.Close()
	if !errors.Is(err, context.Canceled) || res.TimedOut || res.Exit != -1 {
		t.Fatalf("RunHook = %+v, %v; want cancellation", res, err)
	}
}
