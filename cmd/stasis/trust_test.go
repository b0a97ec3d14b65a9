package main

import (
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
