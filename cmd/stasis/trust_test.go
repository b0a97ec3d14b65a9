package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/cmd/stasis/internal/profile"
	"github.com/stasisbackup/stasis/engine/quiesce"
	"github.com/stasisbackup/stasis/internal/backendtest"
)

// TestMain keeps the pending-resume records of quiesced backups (written to
// $STASIS_STATE_DIR, else /var/lib/stasis as root) out of this machine's
// state directory.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "stasis-state-")
	if err != nil {
		panic(err)
	}
	os.Setenv("STASIS_STATE_DIR", dir)
	// Client caches of the tests' repositories go to a temp dir, not to
	// ~/.cache (tests that need their own set --cache-dir).
	if os.Getenv("STASIS_CACHE_DIR") == "" {
		os.Setenv("STASIS_CACHE_DIR", filepath.Join(dir, "cache"))
	}
	code := m.Run()
	backendtest.StopSeaweed()
	os.RemoveAll(dir)
	os.Exit(code)
}

// `--quiesce 'echo $STASIS_PASSWORD'` must not print the password: hooks
// get the documented STASIS_* variables, never secrets.
func TestHooksDoNotSeeThePassword(t *testing.T) {
	setupEnv(t)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-4711")
	src := sampleTree(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "init", "--repo", repoDir)
	show := `echo "$STASIS_PHASE: pw=[$STASIS_PASSWORD] aws=[$AWS_SECRET_ACCESS_KEY] repo=[$STASIS_REPO]"`
	code, out, errs := stasis(t, "backup", "--repo", repoDir, "--quiesce", show, "--resume", show, src)
	if code != 0 {
		t.Fatalf("backup: exit %d\n%s%s", code, out, errs)
	}
	for _, phase := range []string{"quiesce", "resume"} {
		if want := phase + ": pw=[] aws=[] repo=[" + repoDir + "]"; !strings.Contains(errs, want) {
			t.Errorf("hook output lacks %q:\n%s", want, errs)
		}
	}
	if strings.Contains(errs+out, "correct horse") || strings.Contains(errs+out, "aws-secret-4711") {
		t.Errorf("a hook printed a secret:\n%s%s", out, errs)
	}
}

// Everything that can fail early fails before the quiesce hook: a --staging
// directory that does not exist is created, and a bad --exclude glob is a
// usage error while the service still runs.
func TestQuiescedBackupChecksBeforeQuiesce(t *testing.T) {
	e := startZoom(t, "", 256, "--close-on-pause")
	staging := filepath.Join(t.TempDir(), "srv", ".stasis-staging")
	code, out, errs := e.backup(context.Background(), nil, append(e.hooks(""), "--freeze", "copy", "--staging", staging)...)
	if code != exitOK {
		t.Fatalf("backup with a --staging that does not exist: exit %d\n%s%s", code, out, errs)
	}
	if fi, err := os.Stat(staging); err != nil || !fi.IsDir() {
		t.Errorf("staging directory not created: %v", err)
	}
	e.wantRunning(t)

	code, out, errs = e.backup(context.Background(), nil, append(e.hooks(""), "--exclude", "[")...)
	if code != exitUsage || strings.Contains(errs, "quiesce hook:") {
		t.Fatalf("bad --exclude glob: exit %d, want 2 before any hook\n%s%s", code, out, errs)
	}
}

// A backup SIGKILLed in its window (here by its own resume hook, after the
// copies were staged and before the service was resumed) leaves the service
// stopped, a pending-resume record and its plaintext copies. `stasis
// resume-pending` resumes the service; the next backup removes the copies
// and says so.
func TestKilledInWindowResumePendingAndLeftovers(t *testing.T) {
	e := startZoom(t, "", 1024, "--close-on-pause")
	state := t.TempDir()
	t.Setenv("STASIS_STATE_DIR", state)
	bin := filepath.Join(t.TempDir(), "stasis")
	if out, err := exec.Command(goTool(), "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	flag := filepath.Join(t.TempDir(), "kill-once")
	os.WriteFile(flag, nil, 0o600)
	resume := fmt.Sprintf(`if [ -e %[1]s ]; then rm %[1]s; kill -KILL $PPID; exit 1; fi; %[2]s resume --db %[3]s`, flag, e.bin, e.db)
	cmd := exec.Command(bin, "backup", "--repo", e.repo, "--quiesce", fmt.Sprintf("%s pause --db %s", e.bin, e.db),
		"--resume", resume, "--freeze", "copy", e.dir)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("backup: %v, want killed by SIGKILL\n%s", err, out)
	}
	if st, _ := e.svc.State(t); st != "paused" {
		t.Fatalf("zoomsim is %s after the kill, want paused (nothing resumed it)", st)
	}
	if recs, _ := filepath.Glob(filepath.Join(state, quiesce.PendingDirName, "*.json")); len(recs) != 1 {
		t.Fatalf("pending-resume records: %v, want one", recs)
	}
	staging := filepath.Join(filepath.Dir(e.dir), quiesce.StagingDirName)
	left, _ := filepath.Glob(filepath.Join(staging, "stasis-stage-*"))
	if len(left) != 1 {
		t.Fatalf("staging %s holds %v, want the dead run's copies", staging, left)
	}

	out, err = exec.Command(bin, "resume-pending").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "1 resumed, 0 failed") || !strings.Contains(string(out), "died in its quiesced window") {
		t.Fatalf("resume-pending: %v\n%s", err, out)
	}
	e.wantRunning(t)
	out, err = exec.Command(bin, "resume-pending").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "0 resumed, 0 failed") || strings.Contains(string(out), "resume hook:") {
		t.Fatalf("second resume-pending: %v\n%s; want nothing to do", err, out)
	}

	code, sout, errs := e.backup(context.Background(), nil, append(e.hooks(""), "--freeze", "copy")...)
	if code != exitOK {
		t.Fatalf("next backup: exit %d\n%s%s", code, sout, errs)
	}
	if !strings.Contains(errs, "removed "+left[0]) || !strings.Contains(errs, "died") {
		t.Errorf("next backup does not say it removed %s:\n%s", left[0], errs)
	}
	if _, err := os.Stat(left[0]); !os.IsNotExist(err) {
		t.Errorf("dead run's copies still in %s: %v", left[0], err)
	}
	e.wantRunning(t)
}

// systemdSpan parses a systemd time span such as "5min", "90", "2min 30s".
func systemdSpan(t *testing.T, s string) time.Duration {
	t.Helper()
	units := map[string]time.Duration{"": time.Second, "s": time.Second, "sec": time.Second, "second": time.Second,
		"seconds": time.Second, "m": time.Minute, "min": time.Minute, "minute": time.Minute, "minutes": time.Minute,
		"h": time.Hour, "hr": time.Hour, "hour": time.Hour, "hours": time.Hour, "ms": time.Millisecond}
	var total time.Duration
	for _, f := range strings.Fields(s) {
		i := strings.IndexFunc(f, func(r rune) bool { return r < '0' || r > '9' })
		if i < 0 {
			i = len(f)
		}
		n, err := strconv.Atoi(f[:i])
		u, ok := units[f[i:]]
		if err != nil || !ok {
			t.Fatalf("time span %q: cannot parse %q", s, f)
		}
		total += time.Duration(n) * u
	}
	return total
}

// The example unit runs resume-pending after every run, and gives the
// resume hook time to finish when stasis is stopped (a hook killed, then
// the resume hook) and again in ExecStopPost=.
func TestExampleUnitTimeoutsMatchHooks(t *testing.T) {
	unit, err := os.ReadFile("../../docs/examples/stasis-backup@.service")
	if err != nil {
		t.Fatal(err)
	}
	var stop time.Duration
	var stopPost string
	for _, line := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(line, "TimeoutStopSec="); ok {
			stop = systemdSpan(t, v)
		}
		if v, ok := strings.CutPrefix(line, "ExecStopPost="); ok {
			stopPost = v
		}
	}
	if !strings.Contains(stopPost, "stasis resume-pending") {
		t.Errorf("the unit has no ExecStopPost= running `stasis resume-pending` (got %q)", stopPost)
	}
	p, err := profile.Load("../../docs/examples/zoomserv.toml")
	if err != nil {
		t.Fatal(err)
	}
	hook := p.HookTimeout.Duration
	if hook == 0 {
		hook = quiesce.DefaultHookTimeout
	}
	if need := hook + 2*quiesce.DefaultKillGrace; stop <= need {
		t.Errorf("TimeoutStopSec=%s does not exceed hook_timeout %s + 2 kill graces (%s): systemd would SIGKILL the resume hook", stop, hook, need)
	}
}
