package main

// Real services, started by the tests, written to while the built stasis
// binary backs them up, restored, and checked with the service's own tools.
// OpenLDAP slapd (Debian slapd + ldap-utils; helper in slapd_test.go).
//
//	go test ./cmd/stasis/ -run 'Service|Slapd' -count=1 -v

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stasisbackup/stasis/repo/crypto"
)

// serviceEnv is the built stasis binary and the environment it runs in:
// password, state and cache directories of the test's own.
type serviceEnv struct{ bin string }

func newServiceEnv(t *testing.T) *serviceEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary and runs a real service")
	}
	t.Setenv("STASIS_PASSWORD", "service test password")
	t.Setenv("STASIS_REPO", "")
	t.Setenv("STASIS_STATE_DIR", t.TempDir()) // pending-resume records: not /var/lib/stasis
	t.Setenv("STASIS_CACHE_DIR", t.TempDir())
	kdf := newKDF
	newKDF = func() crypto.KDFParams { return crypto.TestKDFParams } // repositories made by initRepo open fast
	t.Cleanup(func() { newKDF = kdf })
	return &serviceEnv{bin: buildStasis(t)}
}

// initRepo makes an encrypted repository (in-process, with cheap key
// derivation) and returns its directory.
func (e *serviceEnv) initRepo(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	if code, out, errs := runStasis(context.Background(), nil, "init", "--repo", dir); code != 0 {
		t.Fatalf("stasis init: exit %d\n%s%s", code, out, errs)
	}
	return dir
}

// stasis runs the binary and returns its exit code, stdout and stderr.
func (e *serviceEnv) stasis(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(e.bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String(), errb.String()
	} else if err != nil {
		t.Fatalf("run %s: %v", e.bin, err)
	}
	return 0, out.String(), errb.String()
}

// summary returns the "summary" message of backup --json output.
func summary(t *testing.T, out string) map[string]any {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &m); err != nil || m["message_type"] != "summary" {
		t.Fatalf("last line of backup --json is not a summary (%v):\n%s", err, out)
	}
	return m
}

// restore restores the latest snapshot of repoDir into a fresh directory
// and returns it.
func (e *serviceEnv) restore(t *testing.T, repoDir string) string {
	t.Helper()
	target := t.TempDir()
	if code, out, errs := e.stasis(t, "restore", "latest", "--repo", repoDir, "--target", target); code != 0 {
		t.Fatalf("stasis restore: exit %d\n%s%s", code, out, errs)
	}
	return target
}

// TestServiceSlapd backs up a running OpenLDAP server, written to by
// ldapadd processes all along, with each freeze mode: the quiesce and resume
// hooks stop and start slapd. Each restore is dumped with slapcat and served
// by a second slapd: every add acknowledged before the quiesce hook started
// is there, no add started after the resume hook started is, and the live
// server takes adds again after the backup.
func TestServiceSlapd(t *testing.T) {
	needSlapd(t)
	env := newServiceEnv(t)
	for _, freeze := range []string{"stop", "copy", "reflink"} {
		t.Run(freeze, func(t *testing.T) {
			base := t.TempDir()
			if freeze == "reflink" {
				base = loopXFS(t, 320<<20) // mounted before slapd starts: unmounted after it stops
			}
			env.slapdBackup(t, base, freeze, func(s *slapd, log *eventLog, repoDir string) []string {
				return []string{"backup", "--json", "--repo", repoDir,
					"--quiesce", log.hook("quiesce") + " && " + s.ctl + " stop",
					"--resume", log.hook("resume") + " && " + s.ctl + " start && " + log.hook("resumed"),
					"--freeze", freeze, "--quiesce-path", "*.mdb", "--on-open", "fail", "--hook-timeout", "1m",
					s.dir}
			})
		})
	}
	// docs/examples/openldap.toml as written, but for the repository, the
	// paths and the hooks (systemctl and /var/lib/ldap are not this test's).
	t.Run("profile", func(t *testing.T) {
		example, err := os.ReadFile(filepath.Join(examplesDir, "openldap.toml"))
		if err != nil {
			t.Fatal(err)
		}
		env.slapdBackup(t, t.TempDir(), "copy", func(s *slapd, log *eventLog, repoDir string) []string {
			prof := string(example)
			for key, value := range map[string]string{
				"repository": strconv.Quote(repoDir),
				"paths":      "[" + strconv.Quote(s.dir) + "]",
				"quiesce":    strconv.Quote(log.hook("quiesce") + " && " + s.ctl + " stop"),
				"resume":     strconv.Quote(log.hook("resume") + " && " + s.ctl + " start && " + log.hook("resumed")),
			} {
				re := regexp.MustCompile(`(?m)^` + key + ` *=.*$`)
				if !re.MatchString(prof) {
					t.Fatalf("openldap.toml has no %s line", key)
				}
				prof = re.ReplaceAllLiteralString(prof, key+" = "+value)
			}
			file := filepath.Join(t.TempDir(), "openldap.toml")
			if err := os.WriteFile(file, []byte(prof), 0o644); err != nil {
				t.Fatal(err)
			}
			return []string{"backup", "--json", "--profile", file}
		})
	})
}

// slapdBackup starts a slapd in base/slapd and a writer, runs the built
// binary with args(...) (a quiesced backup whose hooks log "quiesce",
// "resume" and "resumed" and stop and start slapd), and checks the result:
// exit 0, the service takes adds again, the report's mode is freeze, and
// the restore (checkRestoredSlapd).
func (env *serviceEnv) slapdBackup(t *testing.T, base, freeze string, args func(s *slapd, log *eventLog, repoDir string) []string) {
	t.Helper()
	s := newSlapd(t, filepath.Join(base, "slapd"), "")
	log := newEventLog(t)
	w := startWriter(t, s, log)
	w.waitAck(t, 20)
	repoDir := env.initRepo(t)
	code, out, errs := env.stasis(t, args(s, log, repoDir)...)
	if code != exitOK {
		t.Fatalf("backup: exit %d\n%s%s", code, out, errs)
	}
	// The service runs again: an add started after stasis exited is
	// acknowledged.
	w.waitAck(t, w.nextSeq())
	w.stop(t)
	q, _ := summary(t, out)["quiesce"].(map[string]any)
	if q["freeze"] != freeze || q["quiesced_files"] != 2.0 { // data.mdb, lock.mdb
		t.Errorf("quiesce report %v, want freeze %s with 2 files", q, freeze)
	}
	if ws, _ := q["warnings"].([]any); len(ws) != 0 {
		t.Errorf("warnings: %v", ws)
	}
	win := readWindow(t, log.lines(t), "quiesce", "resume")
	live := s.search(t)
	for _, n := range win.ackedBefore {
		if !live[n] {
			t.Fatalf("the live server lost acknowledged add %d", n)
		}
	}
	target := env.restore(t, repoDir)
	checkRestoredSlapd(t, s, filepath.Join(target, s.dir), win)
	if left, _ := filepath.Glob(filepath.Join(base, ".stasis-staging", "stasis-stage-*")); len(left) != 0 {
		t.Errorf("staging directories left behind: %v", left)
	}
}

// checkRestoredSlapd checks a restored copy of s's tree: its slapd.conf is
// the original's, slapcat reads the whole database, the entries are those
// win allows, and a second slapd serves the same entries.
func checkRestoredSlapd(t *testing.T, s *slapd, restored string, win window) {
	t.Helper()
	want, err := os.ReadFile(s.conf)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(restored, "slapd.conf")); err != nil || !bytes.Equal(got, want) {
		t.Errorf("restored slapd.conf differs from the original (%v)", err)
	}
	db := filepath.Join(restored, "db")
	conf := filepath.Join(t.TempDir(), "slapd.conf") // the restored database, offline
	if err := os.WriteFile(conf, []byte(slapdConf(db, t.TempDir())), 0o644); err != nil {
		t.Fatal(err)
	}
	dumped := entrySeqs(slapcat(t, conf))
	win.check(t, dumped)
	served := newSlapd(t, restored, db).search(t)
	if !maps.Equal(served, dumped) {
		t.Errorf("slapd on the restored database serves %d entries, slapcat dumped %d", len(served), len(dumped))
	}
}

