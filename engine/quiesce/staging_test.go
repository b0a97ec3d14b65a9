package quiesce

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// By default copies go to a private directory on the data's own
// filesystem, beside the backup path, never beside the repository.
func TestDefaultStagingIsPrivateOnTheDataFilesystem(t *testing.T) {
	data := filepath.Join(t.TempDir(), "srv")
	if os.Geteuid() == 0 {
		// Data on a filesystem of its own, so that "the data's filesystem"
		// and the repository's differ.
		if err := os.Mkdir(data, 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", data).CombinedOutput(); err != nil {
			t.Logf("cannot mount a tmpfs (%v: %s): data and repository share a filesystem", err, out)
		} else {
			t.Cleanup(func() { exec.Command("umount", data).Run() })
		}
	}
	svc := filepath.Join(data, "zoomserv")
	os.MkdirAll(svc, 0o755)
	db := filepath.Join(svc, "X500.db")
	os.WriteFile(db, []byte("the database"), 0o644)
	repoParent := t.TempDir()
	opts := Options{Repository: filepath.Join(repoParent, "repo"), Paths: []string{svc}, Freeze: FreezeCopy}
	var staged string
	rep, err := Run(context.Background(), opts, func(ctx context.Context, s *Stage) error {
		staged = s.Path(db)
		want := filepath.Join(data, StagingDirName)
		if s.StagingDir != want || !strings.HasPrefix(staged, want+"/") {
			t.Errorf("staged at %s (staging %s), want under %s", staged, s.StagingDir, want)
		}
		var a, b syscall.Stat_t
		syscall.Stat(db, &a)
		syscall.Stat(staged, &b)
		if a.Dev != b.Dev {
			t.Errorf("staged copy on device %d, the data on %d", b.Dev, a.Dev)
		}
		// staged is STAGING/stasis-stage-*/N/X500.db
		for _, p := range []string{filepath.Dir(staged), filepath.Dir(filepath.Dir(staged)), filepath.Dir(filepath.Dir(filepath.Dir(staged)))} {
			if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s: mode %v, %v; want private", p, fi.Mode(), err)
			}
		}
		if left, _ := os.ReadDir(repoParent); len(left) != 0 {
			t.Errorf("something was staged beside the repository: %v", left)
		}
		return nil
	})
	if err != nil || len(rep.Warnings) != 0 {
		t.Fatalf("Run = %+v, %v", rep, err)
	}
	if _, err := os.Stat(filepath.Dir(filepath.Dir(staged))); !os.IsNotExist(err) {
		t.Errorf("the run's staging directory was not removed: %v", err)
	}
}

// helperEnv carries the Options of a helper process that dies in its
// window (TestHelperDiesInWindow).
const helperEnv = "STASIS_QUIESCE_TEST_DIE_IN_WINDOW"

// TestHelperDiesInWindow is not a test: run by dieInWindow in a child
// process, it runs Run with the Options in $STASIS_QUIESCE_TEST_DIE_IN_WINDOW
// and SIGKILLs itself in capture, as the OOM killer would.
func TestHelperDiesInWindow(t *testing.T) {
	env := os.Getenv(helperEnv)
	if env == "" {
		t.Skip("helper process")
	}
	var opts Options
	if err := json.Unmarshal([]byte(env), &opts); err != nil {
		t.Fatal(err)
	}
	opts.Log = os.Stderr
	Run(context.Background(), opts, func(context.Context, *Stage) error {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		<-make(chan struct{})
		return nil
	})
	t.Fatal("Run returned after SIGKILL")
}

// dieInWindow runs Run with opts in a child process that is SIGKILLed in
// capture.
func dieInWindow(t *testing.T, opts Options) {
	t.Helper()
	opts.Log = nil
	b, err := json.Marshal(opts)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperDiesInWindow$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(b))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper: %v, want killed by SIGKILL\n%s", err, out)
	}
}

// The copies of a run killed after staging stay behind; the next run
// removes them and says so, but leaves a live run's directory alone.
func TestLeftoversOfDeadRunRemoved(t *testing.T) {
	data := filepath.Join(t.TempDir(), "zoomserv")
	os.MkdirAll(data, 0o755)
	db := filepath.Join(data, "X500.db")
	os.WriteFile(db, []byte("plaintext secrets"), 0o600)
	staging := filepath.Join(t.TempDir(), "staging")
	opts := Options{Paths: []string{data}, Freeze: FreezeCopy, Staging: staging}
	dieInWindow(t, opts)
	left, _ := filepath.Glob(filepath.Join(staging, "stasis-stage-*"))
	if len(left) != 1 {
		t.Fatalf("after the kill, staging holds %v; want the dead run's directory", left)
	}
	// A live run's directory: it holds the lock, as Run does.
	live := filepath.Join(staging, "stasis-stage-live")
	os.Mkdir(live, 0o700)
	lf, err := os.Open(live)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}

	var log bytes.Buffer
	opts.Log = &log
	rep, err := Run(context.Background(), opts, func(ctx context.Context, s *Stage) error {
		if _, err := os.Stat(left[0]); !os.IsNotExist(err) {
			t.Errorf("dead run's staging directory %s is still there: %v", left[0], err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "removed "+left[0]) || !strings.Contains(rep.Warnings[0], "died") {
		t.Errorf("warnings %q: want one saying the dead run's directory was removed", rep.Warnings)
	}
	if !strings.Contains(log.String(), "removed "+left[0]) {
		t.Errorf("log does not say it removed the leftover:\n%s", &log)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("a live run's staging directory was removed: %v", err)
	}
}

// A --staging directory that does not exist is created (private), before
// the quiesce hook runs.
func TestMissingStagingDirIsCreated(t *testing.T) {
	e := setup(t, "", "--close-on-pause")
	staging := filepath.Join(t.TempDir(), "not", "yet")
	e.opts.Freeze, e.opts.Staging = FreezeCopy, staging
	e.opts.Quiesce = "test -d " + staging + " && " + e.opts.Quiesce
	_, err := Run(context.Background(), e.opts, func(ctx context.Context, s *Stage) error {
		if !strings.HasPrefix(s.Path(e.db), staging+"/") {
			t.Errorf("db staged at %s, want under %s", s.Path(e.db), staging)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(staging); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("staging %s: %v, %v; want a 0700 directory", staging, fi, err)
	}
	e.wantState(t, "running")
}

// A staging filesystem without room for the copies fails the backup before
// the quiesce hook runs: the service is never stopped.
func TestStagingWithoutRoomFailsBeforeQuiesce(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs as the staging filesystem")
	}
	e := setup(t, "", "--close-on-pause") // 256 pages: 1 MiB
	small := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", small).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", small).Run() })
	marker := filepath.Join(t.TempDir(), "quiesced")
	e.opts.Freeze, e.opts.Staging = FreezeCopy, small
	e.opts.Quiesce = "touch " + marker + " && " + e.opts.Quiesce
	rep, err := Run(context.Background(), e.opts, func(context.Context, *Stage) error {
		t.Error("capture called")
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "free") || len(rep.Hooks) != 0 {
		t.Fatalf("Run = %+v, %v; want a staging error before any hook", rep, err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the quiesce hook ran")
	}
	e.wantState(t, "running")
}

// The default staging directory holds plaintext copies: one that exists
// must be a directory of ours (not a symlink, not another user's); one with
// wider permissions is made private. All checked before the quiesce hook.
func TestDefaultStagingMustBeOurs(t *testing.T) {
	base := t.TempDir()
	data := filepath.Join(base, "zoomserv")
	os.MkdirAll(data, 0o755)
	os.WriteFile(filepath.Join(data, "X500.db"), []byte("the database"), 0o644)
	staging := filepath.Join(base, StagingDirName)
	marker := filepath.Join(t.TempDir(), "quiesced")
	opts := Options{Paths: []string{data}, Freeze: FreezeCopy, Quiesce: "touch " + marker}
	capture := func(context.Context, *Stage) error { return nil }

	elsewhere := t.TempDir()
	if err := os.Symlink(elsewhere, staging); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(context.Background(), opts, capture); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("Run with %s a symlink = %v, want a refusal", staging, err)
	}
	os.Remove(staging)

	if os.Geteuid() == 0 {
		os.Mkdir(staging, 0o700)
		os.Chown(staging, 65534, 65534)
		if _, err := Run(context.Background(), opts, capture); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Errorf("Run with %s owned by nobody = %v, want a refusal", staging, err)
		}
		os.Remove(staging)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the quiesce hook ran although staging was refused")
	}

	os.Mkdir(staging, 0o755)
	os.Chmod(staging, 0o755)
	if _, err := Run(context.Background(), opts, capture); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(staging); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: %v, %v; want it made 0700", staging, fi.Mode(), err)
	}
}
