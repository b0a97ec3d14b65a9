package quiesce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestCommandStreamOutputAndExit(t *testing.T) {
	c := Command{Argv: []string{"/bin/sh", "-c", "printf 'line %s\\n' a b c; echo warn >&2"}}
	var out strings.Builder
	res, err := c.Run(context.Background(), &out)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "line a\nline b\nline c\n" || res.Exit != 0 || res.StderrTail != "warn\n" {
		t.Fatalf("out %q, result %+v", out.String(), res)
	}
}

func TestCommandFailureNamesStatusAndStderrTail(t *testing.T) {
	// 30 lines of stderr: the tail holds the last 20.
	c := Command{Argv: []string{"/bin/sh", "-c", "for i in $(seq 1 30); do echo err$i >&2; done; echo out; exit 2"}}
	res, err := c.Run(context.Background(), nil)
	if !errors.Is(err, ErrCommandFailed) || res.Exit != 2 {
		t.Fatalf("exit %d, err %v", res.Exit, err)
	}
	msg := err.Error()
	for _, want := range []string{"exited with status 2", "err30", "err11", "/bin/sh -c"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "err10\n") {
		t.Errorf("message has more than the last 20 lines:\n%s", msg)
	}
}

func TestCommandKilledBySignal(t *testing.T) {
	res, err := Command{Argv: []string{"/bin/sh", "-c", "echo dying >&2; kill -KILL $$"}}.Run(context.Background(), nil)
	if !errors.Is(err, ErrCommandFailed) || res.Signal != "SIGKILL" || res.Exit != -1 {
		t.Fatalf("result %+v, err %v", res, err)
	}
	if !strings.Contains(err.Error(), "killed by signal SIGKILL") || !strings.Contains(err.Error(), "dying") {
		t.Errorf("message: %v", err)
	}
}

// TestCommandTimeoutKillsGroup: a grandchild (sleep, in the background of
// the shell) holds the output open; the timeout kills the whole group, so
// the stream ends and the grandchild is gone.
func TestCommandTimeoutKillsGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	c := Command{Argv: []string{"/bin/sh", "-c", "sleep 1000 & echo $! > " + pidFile + "; echo started; wait"},
		Timeout: 500 * time.Millisecond, Grace: time.Second}
	start := time.Now()
	s, err := c.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data, _ := io.ReadAll(s)
	res, err := s.Wait()
	took := time.Since(start)
	if !errors.Is(err, ErrCommandFailed) || !res.TimedOut || !strings.Contains(err.Error(), "timed out after 500ms") {
		t.Fatalf("result %+v, err %v", res, err)
	}
	if string(data) != "started\n" {
		t.Errorf("output %q", data)
	}
	if took > 20*time.Second {
		t.Errorf("took %s to stop a command with a 500ms timeout", took)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if alive(pid) {
		t.Errorf("grandchild %d still runs after the group was killed", pid)
	}
}

func TestCommandCancelKillsGroup(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	fifo := filepath.Join(t.TempDir(), "fifo")
	// Opening a fifo no one writes to blocks: the command runs until cancel.
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Command{Argv: []string{"/bin/sh", "-c", "echo go; read x < " + fifo}, Grace: time.Second}.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	buf := make([]byte, 3)
	if _, err := io.ReadFull(s, buf); err != nil { // the command runs
		t.Fatal(err)
	}
	cancel()
	io.Copy(io.Discard, s)
	if _, err := s.Wait(); !errors.Is(err, ErrCommandFailed) || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("err %v", err)
	}
}

func TestCommandNotFound(t *testing.T) {
	_, err := Command{Argv: []string{"/nonexistent/dump-tool", "-x"}}.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/dump-tool") {
		t.Fatalf("err %v", err)
	}
}

func TestTailBuffer(t *testing.T) {
	var tb tailBuffer
	for i := 0; i < 5000; i++ {
		fmt.Fprintf(&tb, "line %d\n", i)
	}
	got := tb.Tail(20, 4096)
	if !strings.HasSuffix(got, "line 4999\n") || !strings.Contains(got, "line 4980\n") || strings.Contains(got, "line 4979\n") ||
		!strings.HasPrefix(got, "[... earlier lines left out") {
		t.Fatalf("tail:\n%s", got)
	}
	var big tailBuffer
	big.Write([]byte(strings.Repeat("x", 10000) + "\n"))
	if got := big.Tail(20, 4096); len(got) > 4096+100 {
		t.Errorf("tail of one long line: %d bytes", len(got))
	}
}
