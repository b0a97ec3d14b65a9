package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
