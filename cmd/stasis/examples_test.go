package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stasisbackup/stasis/cmd/stasis/internal/profile"
	"github.com/stasisbackup/stasis/engine/quiesce"
)

const examplesDir = "../../docs/examples"

// exampleProfiles returns the profiles in docs/examples, by name (file name
// without .toml: the instance of stasis-backup@NAME.service).
func exampleProfiles(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(examplesDir, "*.toml"))
	if err != nil || len(files) < 5 {
		t.Fatalf("docs/examples holds %d profiles (%v), want zoomserv, openldap, postgresql, sqlite and files", len(files), err)
	}
	m := map[string]string{}
	for _, f := range files {
		m[strings.TrimSuffix(filepath.Base(f), ".toml")] = f
	}
	return m
}

// TestExampleProfiles loads every profile in docs/examples with the real
// profile parser, runs it through `stasis backup --profile` (with --repo
// pointed at a missing repository, so that everything is checked but
// nothing runs: exit 10, not 2), and checks that every command its hooks
// run is a valid shell command line whose programs are installed here.
func TestExampleProfiles(t *testing.T) {
	t.Setenv("STASIS_PASSWORD", "x")
	for name, file := range exampleProfiles(t) {
		t.Run(name, func(t *testing.T) {
			p, err := profile.Load(file)
			if err != nil {
				t.Fatal(err)
			}
			for _, path := range p.Paths {
				if !filepath.IsAbs(path) {
					t.Errorf("path %q is not absolute: a timer's working directory is /", path)
				}
			}
			code, out, errs := runStasis(context.Background(), nil, "backup", "--profile", file, "--repo", filepath.Join(t.TempDir(), "none"))
			if code != exitNoRepo {
				t.Errorf("stasis backup --profile %s: exit %d, want %d (no repository; everything before it checked)\n%s%s", file, code, exitNoRepo, out, errs)
			}
			for _, hook := range []string{p.Quiesce, p.Resume} {
				if hook != "" {
					checkShellCommand(t, hook)
				}
			}
		})
	}
}

var (
	shellSeparators = regexp.MustCompile(`&&|\|\||[;|&]`)
	shellAssignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
	shellBuiltins   = map[string]bool{"echo": true, "test": true, "[": true, "true": true, "false": true, "exit": true, "cd": true, ":": true, "printf": true}
)

// checkShellCommand fails unless /bin/sh parses cmd and the first word of
// each of its simple commands is a builtin or an installed program.
func checkShellCommand(t *testing.T, cmd string) {
	t.Helper()
	if out, err := exec.Command("/bin/sh", "-n", "-c", cmd).CombinedOutput(); err != nil {
		t.Errorf("hook %q: /bin/sh cannot parse it: %v: %s", cmd, err, out)
		return
	}
	for _, part := range shellSeparators.Split(cmd, -1) {
		words := strings.Fields(part)
		for len(words) > 0 && shellAssignment.MatchString(words[0]) {
			words = words[1:]
		}
		if len(words) == 0 || shellBuiltins[words[0]] {
			continue
		}
		if _, err := exec.LookPath(words[0]); err != nil {
			t.Errorf("hook %q runs %s, which is not installed here: %v", cmd, words[0], err)
		}
	}
}

// TestExampleUnits runs systemd-analyze verify on stasis-backup@NAME.service
// (the template with the profile's drop-in directory, when it has one) and
// its timer for every example profile, and checks that the unit's
// TimeoutStopSec= leaves the resume hook its time: above the profile's
// hook_timeout plus two kill graces (a hook killed, then resume), as
// docs/quiesce.md says.
func TestExampleUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("needs systemd-analyze (Debian package systemd) to verify the example units")
	}
	// verify finds a template and its drop-ins beside the unit it is
	// given; the examples are copied so that a unit named for the
	// instance can be put there.
	dir := t.TempDir()
	if out, err := exec.Command("cp", "-r", examplesDir+"/.", dir).CombinedOutput(); err != nil {
		t.Fatalf("copy the examples: %v: %s", err, out)
	}
	template, err := os.ReadFile(filepath.Join(dir, "stasis-backup@.service"))
	if err != nil {
		t.Fatal(err)
	}
	for name, file := range exampleProfiles(t) {
		t.Run(name, func(t *testing.T) {
			unit := filepath.Join(dir, "stasis-backup@"+name+".service")
			if err := os.WriteFile(unit, template, 0o644); err != nil {
				t.Fatal(err)
			}
			out, _ := exec.Command(analyze, "verify", "--man=no", unit, filepath.Join(dir, "stasis-backup@.timer")).CombinedOutput()
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				// stasis is not installed in /usr/bin where the tests run.
				if line != "" && !strings.HasSuffix(line, "Command /usr/bin/stasis is not executable: No such file or directory") {
					t.Errorf("systemd-analyze verify %s: %s", filepath.Base(unit), line)
				}
			}
			stop := unitSetting(t, string(template), "TimeoutStopSec")
			dropins, _ := filepath.Glob(filepath.Join(dir, "stasis-backup@"+name+".service.d", "*.conf"))
			for _, d := range dropins {
				b, err := os.ReadFile(d)
				if err != nil {
					t.Fatal(err)
				}
				if v := unitSetting(t, string(b), "TimeoutStopSec"); v != "" {
					stop = v
				}
			}
			p, err := profile.Load(file)
			if err != nil {
				t.Fatal(err)
			}
			if p.Quiesce == "" {
				return
			}
			hook := p.HookTimeout.Duration
			if hook == 0 {
				hook = quiesce.DefaultHookTimeout
			}
			if need := hook + 2*quiesce.DefaultKillGrace; systemdSpan(t, stop) <= need {
				t.Errorf("TimeoutStopSec=%s (with the drop-ins %v) does not exceed hook_timeout %s + 2 kill graces (%s)", stop, dropins, hook, need)
			}
		})
	}
}

// unitSetting returns the last value of key in a unit file's text.
func unitSetting(t *testing.T, text, key string) string {
	t.Helper()
	var v string
	for _, line := range strings.Split(text, "\n") {
		if s, ok := strings.CutPrefix(strings.TrimSpace(line), key+"="); ok {
			v = s
		}
	}
	return v
}
