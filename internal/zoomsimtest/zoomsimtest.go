// Package zoomsimtest builds and runs the real zoomsim binary for tests in
// any package: Build compiles it once per test binary, Start runs
// `zoomsim run` and returns when its control socket accepts (it reads the
// "ready" line from the process's stdout, no sleeping), and Cleanup stops it
// with SIGTERM.
package zoomsimtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Build compiles cmd/zoomsim (once per test process) and returns the path of
// the binary. It fails the test when the go tool is missing or the build fails.
func Build(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "zoomsim-bin")
		if buildErr != nil {
			return
		}
		goTool := filepath.Join(runtime.GOROOT(), "bin", "go") //nolint:staticcheck // the toolchain running this test
		if _, err := os.Stat(goTool); err != nil {
			goTool = "go"
		}
		cmd := exec.Command(goTool, "build", "-o", filepath.Join(buildDir, "zoomsim"), "github.com/stasisbackup/stasis/cmd/zoomsim")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build zoomsim: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "zoomsim")
}

// Service is a running `zoomsim run`.
type Service struct {
	Bin, DB string
	Cmd     *exec.Cmd
	Stderr  *bytes.Buffer
	done    chan struct{}
	waitErr error
}

// Start runs `zoomsim run --db db args...` and returns once it is ready. The
// test's cleanup sends SIGTERM and waits for it if it is still running.
func Start(t testing.TB, bin, db string, args ...string) *Service {
	t.Helper()
	s := &Service{Bin: bin, DB: db, Stderr: new(bytes.Buffer), done: make(chan struct{})}
	s.Cmd = exec.Command(bin, append([]string{"run", "--db", db}, args...)...)
	s.Cmd.Stderr = s.Stderr
	out, err := s.Cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Cmd.Start(); err != nil {
		t.Fatalf("start zoomsim: %v", err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	go func() {
		s.waitErr = s.Cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		_ = s.Cmd.Process.Signal(syscall.SIGTERM)
		<-s.done
	})
	if err != nil || !strings.HasPrefix(line, "ready ") {
		<-s.done
		t.Fatalf("zoomsim run did not get ready (line %q, %v): %v\n%s", line, err, s.waitErr, s.Stderr)
	}
	return s
}

// Stop sends sig and waits for the process to exit, returning its wait error.
func (s *Service) Stop(sig os.Signal) error {
	_ = s.Cmd.Process.Signal(sig)
	<-s.done
	return s.waitErr
}

// Ctl runs `zoomsim CMD --db DB` (pause, resume or status) and returns its
// trimmed output and error.
func (s *Service) Ctl(cmd string) (string, error) {
	return Ctl(s.Bin, s.DB, cmd)
}

// Ctl runs `bin CMD --db db` with a one-minute bound.
func Ctl(bin, db, cmd string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, cmd, "--db", db).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// State returns "running" or "paused" (the first word of status) and the
// number of committed transactions, failing the test when no service answers.
func (s *Service) State(t testing.TB) (string, uint64) {
	t.Helper()
	out, err := s.Ctl("status")
	if err != nil {
		t.Fatalf("zoomsim status: %v: %s", err, out)
	}
	var state string
	var n, last uint64
	if _, err := fmt.Sscanf(out, "%s transactions=%d last_tx=%d", &state, &n, &last); err != nil {
		t.Fatalf("zoomsim status output %q: %v", out, err)
	}
	return state, n
}
