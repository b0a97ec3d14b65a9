package main

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/internal/enginetest"
)

// crashEnv drives the built binary against one repository.
type crashEnv struct {
	t        *testing.T
	bin, dir string
	src      string
	rng      *rand.Rand
}

func (e *crashEnv) cmd(args ...string) *exec.Cmd {
	c := exec.Command(e.bin, append([]string{"--repo", e.dir}, args...)...)
	c.Env = append(os.Environ(), "STASIS_REPO=")
	return c
}

// must runs a command to completion and fails the test on a non-zero exit.
func (e *crashEnv) must(args ...string) []byte {
	e.t.Helper()
	out, err := e.cmd(args...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("stasis %v: %v\n%s", args, err, out)
	}
	return out
}

// killed starts a command and SIGKILLs it after a delay drawn from the
// seeded RNG (the delay decides *when* it dies; nothing waits on it). It
// reports whether the command finished before the kill.
func (e *crashEnv) killed(maxDelay time.Duration, args ...string) bool {
	e.t.Helper()
	c := e.cmd(args...)
	if err := c.Start(); err != nil {
		e.t.Fatal(err)
	}
	delay := time.Duration(e.rng.Int63n(int64(maxDelay)))
	timer := time.AfterFunc(delay, func() { c.Process.Signal(syscall.SIGKILL) })
	err := c.Wait()
	timer.Stop()
	if err == nil {
		return true
	}
	if ws, ok := c.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		return false
	}
	e.t.Fatalf("stasis %v failed on its own: %v", args, err)
	return false
}

// mutate writes, rewrites and removes files of the source tree.
func (e *crashEnv) mutate(step int) {
	for i := 0; i < 4; i++ {
		data := make([]byte, 64<<10+e.rng.Intn(700<<10))
		e.rng.Read(data)
		name := filepath.Join(e.src, fmt.Sprintf("d%d", e.rng.Intn(3)), fmt.Sprintf("f%d", e.rng.Intn(12)))
		os.MkdirAll(filepath.Dir(name), 0o755)
		if err := os.WriteFile(name, data, 0o644); err != nil {
			e.t.Fatal(err)
		}
	}
}

// TestCrashSafety SIGKILLs `stasis backup` and `stasis prune` (separate
// processes of the built binary) at random moments from a fixed seed. After
// every kill the next command runs with no manual step (the dead process's
// lock is stale and removed); at the end `check --read-data` passes and every
// remaining snapshot restores byte for byte.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs it many times")
	}
	setupEnv(t)
	e := &crashEnv{t: t, bin: buildStasis(t), dir: filepath.Join(t.TempDir(), "repo"),
		src: filepath.Join(t.TempDir(), "src"), rng: rand.New(rand.NewSource(42))}
	e.must("init", "--insecure-no-password")
	model := map[string]map[string]string{} // tag → content
	// Calibrate: kill delays are drawn below the time an uninterrupted
	// backup takes on this machine, so most commands die mid-way whatever
	// the machine's speed.
	e.mutate(-1)
	began := time.Now()
	e.must("backup", "--tag", "calibration", e.src)
	model["calibration"] = enginetest.FileHashes(t, e.src)
	span := time.Since(began)
	kills := 0
	for step := 0; step < 16; step++ {
		e.mutate(step)
		tag := fmt.Sprintf("step%d", step)
		want := enginetest.FileHashes(t, e.src)
		// A killed backup may have written its snapshot just before it
		// died; the listing at the end decides which snapshots exist.
		if !e.killed(span, "backup", "--tag", tag, e.src) {
			kills++
		}
		model[tag] = want
		if step%3 == 2 {
			e.must("forget", "--keep-last", "3")
			if !e.killed(span, "prune", "--max-unused", "5") {
				kills++
			}
		}
	}
	if kills < 5 {
		t.Fatalf("only %d of the commands were killed; the test proves little", kills)
	}
	// The next backup and prune succeed with no manual step.
	e.mutate(99)
	e.must("backup", "--tag", "final", e.src)
	model["final"] = enginetest.FileHashes(t, e.src)
	e.must("prune")
	if out, err := e.cmd("check", "--read-data").CombinedOutput(); err != nil {
		t.Fatalf("check --read-data after %d kills: %v\n%s", kills, err, out)
	}
	var snaps []struct {
		ID   string   `json:"id"`
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(e.must("snapshots", "--json"), &snaps); err != nil {
		t.Fatal(err)
	}
	if len(snaps) < 2 {
		t.Fatalf("%d snapshots left", len(snaps))
	}
	for _, sn := range snaps {
		want := model[sn.Tags[0]]
		target := filepath.Join(t.TempDir(), "r")
		e.must("restore", sn.ID, "--target", target)
		got := enginetest.FileHashes(t, filepath.Join(target, e.src))
		if len(got) != len(want) {
			t.Fatalf("snapshot %s (%s): %d files restored, want %d", sn.ID[:8], sn.Tags[0], len(got), len(want))
		}
		for p, h := range want {
			if got[p] != h {
				t.Fatalf("snapshot %s (%s): %s differs", sn.ID[:8], sn.Tags[0], p)
			}
		}
	}
	t.Logf("%d kills, %d snapshots verified", kills, len(snaps))
}
