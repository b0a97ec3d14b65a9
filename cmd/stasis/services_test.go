package main

// Real services, started by the tests, written to while the built stasis
// binary backs them up, restored, and checked with the service's own tools:
// OpenLDAP slapd (Debian slapd + ldap-utils; helper in slapd_test.go),
// PostgreSQL (postgresql; postgres_test.go) and SQLite (sqlite3). What the
// tests share (event log, writer, capture window) is in servicelog_test.go.
//
//	go test ./cmd/stasis/ -run 'Service|Slapd' -count=1 -v

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stasisbackup/stasis/cmd/stasis/internal/profile"
	"github.com/stasisbackup/stasis/internal/loopfs"
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

// restore restores the latest snapshot of repoDir into target ("" = a
// fresh temp dir) and returns target.
func (e *serviceEnv) restore(t *testing.T, repoDir, target string) string {
	t.Helper()
	if target == "" {
		target = t.TempDir()
	}
	if code, out, errs := e.stasis(t, "restore", "latest", "--repo", repoDir, "--target", target); code != 0 {
		t.Fatalf("stasis restore: exit %d\n%s%s", code, out, errs)
	}
	return target
}

// serviceRun is one backup of a live service: a writer adding numbered
// records to it (logged to log) and a fresh repository.
type serviceRun struct {
	env     *serviceEnv
	log     *eventLog
	w       *seqWriter
	repoDir string
}

// startRun starts a writer of add on a fresh event log, waits until acks
// writes are acknowledged and makes the repository.
func (env *serviceEnv) startRun(t *testing.T, acks int, add func(ctx context.Context, n int) error) *serviceRun {
	t.Helper()
	log := newEventLog(t)
	w := startWriter(t, log, add)
	w.waitAck(t, acks)
	return &serviceRun{env: env, log: log, w: w, repoDir: env.initRepo(t)}
}

// backup runs the built binary with args between the events "backup"
// (logged before it starts) and "done" (logged after it exited), fails t
// unless it exits 0, waits until the service takes a write started after
// stasis exited, stops the writer and returns stasis's output.
func (r *serviceRun) backup(t *testing.T, args ...string) string {
	t.Helper()
	if err := r.log.add("backup"); err != nil {
		t.Fatal(err)
	}
	code, out, errs := r.env.stasis(t, args...)
	if err := r.log.add("done"); err != nil {
		t.Fatal(err)
	}
	if code != exitOK {
		t.Fatalf("backup: exit %d\n%s%s", code, out, errs)
	}
	r.w.waitAck(t, r.w.nextSeq()) // the service runs again, or was never stopped
	r.w.stop(t)
	return out
}

// backupLive is backup of a service that nothing stops (a dump taken while
// it runs); it returns the output and the capture window: from "backup" to
// "done".
func (r *serviceRun) backupLive(t *testing.T, args ...string) (string, window) {
	t.Helper()
	out := r.backup(t, args...)
	return out, readWindow(t, r.log.lines(t), "backup", "done")
}

// backupQuiesced is backup with hooks of log.stopStartHooks: it checks that
// the report's freeze mode is freeze, without warnings, and returns the
// report and the capture window from "quiesce" to "resume".
func (r *serviceRun) backupQuiesced(t *testing.T, freeze string, args ...string) (map[string]any, window) {
	t.Helper()
	out := r.backup(t, args...)
	q, _ := summary(t, out)["quiesce"].(map[string]any)
	if q["freeze"] != freeze {
		t.Errorf("quiesce report %v, want freeze %s", q, freeze)
	}
	if ws, _ := q["warnings"].([]any); len(ws) != 0 {
		t.Errorf("warnings: %v", ws)
	}
	return q, readWindow(t, r.log.lines(t), "quiesce", "resume")
}

// checkNoStagingLeft fails t when a staging directory of copy or reflink
// mode is left in base/.stasis-staging or base/*/.stasis-staging.
func checkNoStagingLeft(t *testing.T, base string) {
	t.Helper()
	left, _ := filepath.Glob(filepath.Join(base, ".stasis-staging", "stasis-stage-*"))
	left2, _ := filepath.Glob(filepath.Join(base, "*", ".stasis-staging", "stasis-stage-*"))
	if left = append(left, left2...); len(left) != 0 {
		t.Errorf("staging directories left behind: %v", left)
	}
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
	for _, freeze := range []string{"stop", "copy", "reflink", "snapshot"} {
		t.Run(freeze, func(t *testing.T) {
			base := t.TempDir()
			switch freeze { // mounted before slapd starts: unmounted after it stops
			case "reflink":
				base = loopfs.Reflink(t, "service test", 320<<20)
			case "snapshot":
				_, base = snapLoopBtrfs(t, 320<<20) // a subvolume
			}
			env.slapdBackup(t, base, freeze, func(s *slapd, h serviceHooks, repoDir string) []string {
				return h.backupArgs(repoDir, "--freeze", freeze, "--quiesce-path", "*.mdb", "--on-open", "fail", "--hook-timeout", "1m", s.dir)
			})
		})
	}
	// docs/examples/openldap.toml as written, but for the repository, the
	// paths and the hooks (systemctl and /var/lib/ldap are not this test's).
	t.Run("profile", func(t *testing.T) {
		env.slapdBackup(t, t.TempDir(), "copy", func(s *slapd, h serviceHooks, repoDir string) []string {
			return []string{"backup", "--json", "--profile", exampleProfile(t, "openldap.toml", map[string]string{
				"repository": strconv.Quote(repoDir),
				"paths":      "[" + strconv.Quote(s.dir) + "]",
				"quiesce":    strconv.Quote(h.quiesce),
				"resume":     strconv.Quote(h.resume),
			}, nil)}
		})
	})
}

// TestServiceSlapdDump backs up slapd's own dump (stasis backup
// --stdin-from-command -- slapcat -n 1, no service stopped) with slapd.conf
// beside it in one snapshot, while ldapadd processes write. The restored
// dump holds every add acknowledged before stasis started and none started
// after it exited, and slapadd loads it into a fresh database that a slapd
// serves.
func TestServiceSlapdDump(t *testing.T) {
	needSlapd(t)
	env := newServiceEnv(t)
	s := newSlapd(t, filepath.Join(t.TempDir(), "slapd"), "")
	run := env.startRun(t, 20, s.addEntry)
	const dumpName = "/dumps/directory.ldif"
	out, win := run.backupLive(t, "backup", "--json", "--repo", run.repoDir, "--stdin-filename", dumpName, s.conf,
		"--stdin-from-command", "--", slapcatBin, "-f", s.conf, "-n", "1", "-o", "ldif-wrap=no")
	if q := summary(t, out)["quiesce"]; q != nil {
		t.Errorf("quiesce report %v in a backup without hooks", q)
	}
	list := snapshots(t, run.repoDir)
	if len(list) != 1 {
		t.Fatalf("%d snapshots, want 1", len(list))
	}
	if src, _ := list[0]["stdin"].(map[string]any); src == nil || src["exit_status"] != 0.0 || !strings.Contains(fmt.Sprint(src["command"]), "slapcat") {
		t.Errorf("snapshot's stdin record %v, want slapcat with exit status 0", list[0]["stdin"])
	}

	target := env.restore(t, run.repoDir, "")
	if got, err := os.ReadFile(filepath.Join(target, s.conf)); err != nil || string(got) != slapdConf(s.dbDir, s.runDir) {
		t.Errorf("restored slapd.conf differs from the original (%v)", err)
	}
	dump, err := os.ReadFile(filepath.Join(target, dumpName))
	if err != nil {
		t.Fatal(err)
	}
	win.check(t, entrySeqs(dump))
	// slapadd loads the dump into a new database, as a restore would.
	dir := t.TempDir()
	db := filepath.Join(dir, "db")
	if err := os.Mkdir(db, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := s.tool(slapaddBin, string(dump), "-q", "-f", offlineConf(t, db), "-n", "1"); err != nil {
		t.Fatalf("slapadd the restored dump: %v\n%s", err, out)
	}
	if served := newSlapd(t, dir, db).search(t); !maps.Equal(served, entrySeqs(dump)) {
		t.Errorf("slapd on the reloaded dump serves %d entries, the dump holds %d", len(served), len(entrySeqs(dump)))
	}
}

// exampleProfile writes docs/examples/NAME as written but for the lines
// of the keys in lines (replaced by key = value) and the strings in replace
// (old → new: paths of a real installation, such as /var/lib/postgresql),
// and returns the file.
func exampleProfile(t *testing.T, name string, lines, replace map[string]string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(examplesDir, name))
	if err != nil {
		t.Fatal(err)
	}
	prof := string(b)
	for key, value := range lines {
		re := regexp.MustCompile(`(?m)^` + key + ` *=.*$`)
		if !re.MatchString(prof) {
			t.Fatalf("%s has no %s line", name, key)
		}
		prof = re.ReplaceAllLiteralString(prof, key+" = "+value)
	}
	for old, new := range replace {
		if !strings.Contains(prof, old) {
			t.Fatalf("%s does not name %s", name, old)
		}
		prof = strings.ReplaceAll(prof, old, new)
	}
	file := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(file, []byte(prof), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// slapdBackup starts a slapd in base/slapd and a writer, runs the built
// binary with args(...) (a quiesced backup with the hooks h, which stop and
// start slapd), and checks the result: exit 0, the service takes adds
// again, the report's mode is freeze, and the restore (checkRestoredSlapd).
func (env *serviceEnv) slapdBackup(t *testing.T, base, freeze string, args func(s *slapd, h serviceHooks, repoDir string) []string) {
	t.Helper()
	s := newSlapd(t, filepath.Join(base, "slapd"), "")
	run := env.startRun(t, 20, s.addEntry)
	q, win := run.backupQuiesced(t, freeze, args(s, run.log.stopStartHooks(s.ctl), run.repoDir)...)
	if q["quiesced_files"] != 2.0 { // data.mdb, lock.mdb
		t.Errorf("quiesce report %v, want freeze %s with 2 files", q, freeze)
	}
	win.checkLive(t, s.search(t), "the live server", "add")
	target := env.restore(t, run.repoDir, "")
	checkRestoredSlapd(t, s, filepath.Join(target, s.dir), win)
	checkNoStagingLeft(t, base)
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
	dumped := entrySeqs(slapcat(t, offlineConf(t, db))) // the restored database, offline
	win.check(t, dumped)
	served := newSlapd(t, restored, db).search(t)
	if !maps.Equal(served, dumped) {
		t.Errorf("slapd on the restored database serves %d entries, slapcat dumped %d", len(served), len(dumped))
	}
}

// TestServicePostgres backs up a running PostgreSQL cluster, written to by
// psql processes (one INSERT each) all along: the hooks stop (fast
// shutdown) and start the cluster with pg_ctl. stop holds every file of the
// data directory still (the default); copy uses the quiesce paths of
// docs/examples/postgresql.toml, and reflink is that profile as written but
// for repository, paths and hooks, on an XFS image; snapshot holds every
// file still on a btrfs subvolume. Each restore passes
// pg_checksums --check and is served by a second postgres: every INSERT
// acknowledged before the quiesce hook started is there, none started after
// the resume hook started is, and the live cluster takes INSERTs again after
// the backup.
func TestServicePostgres(t *testing.T) {
	bin := needPostgres(t)
	env := newServiceEnv(t)
	t.Run("stop", func(t *testing.T) {
		env.postgresBackup(t, bin, "", "stop", func(pg *postgres, h serviceHooks, repoDir string) []string {
			return h.backupArgs(repoDir, "--freeze", "stop", "--on-open", "fail", "--hook-timeout", "2m",
				// The running server's lock file (as in docs/examples/postgresql.toml):
				// stop removes it, start makes a new one that a restore must not hold.
				"--exclude", "postmaster.pid", pg.data)
		})
	})
	t.Run("copy", func(t *testing.T) {
		p, err := profile.Load(filepath.Join(examplesDir, "postgresql.toml"))
		if err != nil {
			t.Fatal(err)
		}
		env.postgresBackup(t, bin, "", "copy", func(pg *postgres, h serviceHooks, repoDir string) []string {
			args := h.backupArgs(repoDir, "--freeze", "copy", "--on-open", "fail")
			for _, g := range p.Excludes {
				args = append(args, "--exclude", g)
			}
			for _, g := range p.QuiescePaths {
				args = append(args, "--quiesce-path", strings.ReplaceAll(g, "/var/lib/postgresql", filepath.Dir(filepath.Dir(pg.data))))
			}
			return append(args, pg.data)
		})
	})
	t.Run("reflink", func(t *testing.T) {
		mnt := loopfs.Reflink(t, "service test", 320<<20) // mounted before postgres starts: unmounted after it stops
		env.postgresBackup(t, bin, mnt, "reflink", func(pg *postgres, h serviceHooks, repoDir string) []string {
			return []string{"backup", "--json", "--profile", exampleProfile(t, "postgresql.toml", map[string]string{
				"repository": strconv.Quote(repoDir),
				"paths":      "[" + strconv.Quote(pg.data) + "]",
				"quiesce":    strconv.Quote(h.quiesce),
				"resume":     strconv.Quote(h.resume),
			}, map[string]string{"/var/lib/postgresql": filepath.Dir(filepath.Dir(pg.data))})}
		})
	})
	t.Run("snapshot", func(t *testing.T) {
		_, svc := snapLoopBtrfs(t, 320<<20) // a subvolume; mounted before postgres starts
		env.postgresBackup(t, bin, svc, "snapshot", func(pg *postgres, h serviceHooks, repoDir string) []string {
			return h.backupArgs(repoDir, "--freeze", "snapshot", "--on-open", "fail", "--exclude", "postmaster.pid", pg.data)
		})
	})
}

// TestServicePostgresDump backs up PostgreSQL's own dump (stasis backup
// --stdin-from-command -- pg_dump --format=custom, nothing stopped) while
// psql processes INSERT. The restored dump passes pg_restore --list and,
// restored by pg_restore into a fresh cluster, holds every INSERT
// acknowledged before stasis started and none started after it exited.
func TestServicePostgresDump(t *testing.T) {
	bin := needPostgres(t)
	if _, err := exec.LookPath("pg_dump"); err != nil {
		t.Skip("needs pg_dump and pg_restore (Debian package postgresql-client)")
	}
	env := newServiceEnv(t)
	pg := newPostgresW(t, bin, filepath.Join(sharedDir(t, "", "stasis-pg-"), "main"))
	run := env.startRun(t, 10, pg.insert)
	const dumpName = "/dumps/postgres.dump"
	_, win := run.backupLive(t, "backup", "--json", "--repo", run.repoDir, "--stdin-filename", dumpName,
		"--stdin-from-command", "--", "pg_dump", "-h", pg.sockDir, "-U", "postgres", "--format=custom", "postgres")

	target := env.restore(t, run.repoDir, "")
	dump := filepath.Join(target, dumpName)
	if out, err := exec.Command("pg_restore", "--list", dump).CombinedOutput(); err != nil || !strings.Contains(string(out), "TABLE public w") {
		t.Fatalf("pg_restore --list of the restored dump: %v\n%s", err, out)
	}
	fresh := newPostgres(t, bin, filepath.Join(sharedDir(t, "", "stasis-pg-"), "main"), true)
	if out, err := exec.Command("pg_restore", "-h", fresh.sockDir, "-U", "postgres", "-d", "postgres", "--exit-on-error", dump).CombinedOutput(); err != nil {
		t.Fatalf("pg_restore into a fresh cluster: %v\n%s", err, out)
	}
	win.check(t, fresh.rows(t))
}

// TestServiceSQLite runs docs/examples/sqlite.toml as written (but for the
// repository and /srv/notes) against a SQLite database in WAL mode that
// sqlite3 processes INSERT into all along: the snapshot holds the dump of
// `sqlite3 -readonly notes.db .dump` and the application's other files, not
// the live database files. The dump, loaded into a new database, passes
// PRAGMA integrity_check and holds every INSERT acknowledged before stasis
// started and none started after it exited.
func TestServiceSQLite(t *testing.T) {
	if _, err := exec.LookPath("sqlite3"); err != nil {
		t.Skip("needs the sqlite3 shell (Debian package sqlite3)")
	}
	env := newServiceEnv(t)
	dir := filepath.Join(t.TempDir(), "notes")
	db := filepath.Join(dir, "notes.db")
	for _, d := range []string{dir, filepath.Join(dir, "cache")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range map[string]string{"notes.conf": "listen = 127.0.0.1:8080\n", "cache/page-1": "cached\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sqlite := func(ctx context.Context, db string, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "sqlite3", append([]string{"-bail", "-cmd", ".timeout 10000", db}, args...)...)
		out, err := runClient(cmd)
		if err != nil {
			return string(out), fmt.Errorf("sqlite3 %s %v: %w", db, args, err)
		}
		return string(out), nil
	}
	if out, err := sqlite(context.Background(), db, "PRAGMA journal_mode=WAL; "+createTableW+";"); err != nil || strings.TrimSpace(out) != "wal" {
		t.Fatalf("create %s in WAL mode: %q, %v", db, out, err)
	}
	run := env.startRun(t, 20, func(ctx context.Context, n int) error {
		_, err := sqlite(ctx, db, insertSQL(n))
		return err
	})
	prof := exampleProfile(t, "sqlite.toml", map[string]string{"repository": strconv.Quote(run.repoDir)}, map[string]string{"/srv/notes": dir})
	_, win := run.backupLive(t, "backup", "--json", "--profile", prof)
	if list := snapshots(t, run.repoDir); len(list) != 1 || fmt.Sprint(list[0]["stdin"].(map[string]any)["exit_status"]) != "0" {
		t.Fatalf("snapshots %v: want one with the dump's exit status 0", list)
	}

	target := env.restore(t, run.repoDir, "")
	if b, err := os.ReadFile(filepath.Join(target, dir, "notes.conf")); err != nil || string(b) != "listen = 127.0.0.1:8080\n" {
		t.Errorf("restored notes.conf: %q, %v", b, err)
	}
	for _, p := range []string{db, db + "-wal", db + "-shm", filepath.Join(dir, "cache")} {
		if _, err := os.Lstat(filepath.Join(target, p)); err == nil {
			t.Errorf("%s is in the snapshot: the profile excludes it", p)
		}
	}
	dump, err := os.ReadFile(filepath.Join(target, "dumps", "notes.sql"))
	if err != nil {
		t.Fatal(err)
	}
	loaded := filepath.Join(t.TempDir(), "loaded.db")
	if _, err := sqlite(context.Background(), loaded, ".read "+filepath.Join(target, "dumps", "notes.sql")); err != nil {
		t.Fatalf("load the restored dump (%d bytes): %v", len(dump), err)
	}
	if out, err := sqlite(context.Background(), loaded, "PRAGMA integrity_check"); err != nil || strings.TrimSpace(out) != "ok" {
		t.Fatalf("PRAGMA integrity_check of the loaded dump: %q, %v", out, err)
	}
	rows, err := sqlite(context.Background(), loaded, "SELECT n FROM w")
	if err != nil {
		t.Fatal(err)
	}
	win.check(t, seqs(t, rows))
}

// postgresBackup makes a cluster in parent/stasis-pg-*/15/main (parent ""
// = the temp dir), creates table w and starts a writer, runs the built
// binary with args(...) (a quiesced backup with the hooks h, which stop and
// start the cluster), and checks the result: exit 0, the cluster takes
// INSERTs again, the report's mode is freeze, and the restore.
func (env *serviceEnv) postgresBackup(t *testing.T, bin, parent, freeze string, args func(pg *postgres, h serviceHooks, repoDir string) []string) {
	t.Helper()
	base := sharedDir(t, parent, "stasis-pg-")
	if err := os.MkdirAll(filepath.Join(base, "15"), 0o755); err != nil {
		t.Fatal(err)
	}
	pg := newPostgresW(t, bin, filepath.Join(base, "15", "main"))
	run := env.startRun(t, 10, pg.insert)
	_, win := run.backupQuiesced(t, freeze, args(pg, run.log.stopStartHooks(pg.ctl), run.repoDir)...)
	win.checkLive(t, pg.rows(t), "the live cluster", "INSERT")

	target := env.restore(t, run.repoDir, sharedDir(t, "", "stasis-pgrestore-"))
	restored := filepath.Join(target, pg.data)
	openDirsBelow(filepath.Dir(restored), target) // the restored parents of the data directory
	if _, err := os.Stat(filepath.Join(restored, "postmaster.pid")); err == nil {
		t.Fatal("the restore holds postmaster.pid: a server would take it for a running one")
	}
	if out, err := pg.cmd("pg_checksums", "--check", "-D", restored).CombinedOutput(); err != nil {
		t.Fatalf("pg_checksums --check on the restored data directory: %v\n%s", err, out)
	}
	win.check(t, newPostgres(t, bin, restored, false).rows(t))
	checkNoStagingLeft(t, base)
}

// TestSlapdDumpDailyDedup measures what a day's dump of a directory adds to
// the repository: a slapd database of STASIS_DEDUP_ENTRIES entries (default
// 2,000; docs/examples/README.md gives the figure for 20,000) backed up as
// its dump (backup --stdin-from-command -- slapcat -n 1), then 1% of the
// entries modified through the running server (ldapmodify) and the dump
// backed up again. It logs the bytes the second backup added (new chunks,
// before compression, and stored) against the bytes of the dump that
// changed, for the default chunk profile and the small "db" profile
// (--db-glob for the dump's name), and fails when the second backup adds
// more than a whole dump or the db profile does not beat the default.
//
//	STASIS_DEDUP_ENTRIES=20000 go test ./cmd/stasis/ -run SlapdDumpDailyDedup -count=1 -v
func TestSlapdDumpDailyDedup(t *testing.T) {
	needSlapd(t)
	env := newServiceEnv(t)
	entries := 2000
	if v := os.Getenv("STASIS_DEDUP_ENTRIES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 {
			t.Fatalf("STASIS_DEDUP_ENTRIES=%q: want a number of at least 100", v)
		}
		entries = n
	}
	dir := filepath.Join(t.TempDir(), "slapd")
	s := newSlapd(t, dir, "")
	var ldif strings.Builder
	for i := 1; i <= entries; i++ {
		ldif.WriteString(personLDIF(i))
	}
	// Loaded offline, as a migration would: stop, slapadd, start.
	if out, err := exec.Command(s.ctl, "stop").CombinedOutput(); err != nil {
		t.Fatalf("stop slapd: %v\n%s", err, out)
	}
	if out, err := s.tool(slapaddBin, ldif.String(), "-q", "-f", s.conf, "-b", ldapSuffix); err != nil {
		t.Fatalf("slapadd %d entries: %v\n%s", entries, err, out)
	}
	s.start(t)

	repos := map[string]string{"default": env.initRepo(t), "db": env.initRepo(t)}
	backup := func(profile string) map[string]any {
		t.Helper()
		args := []string{"backup", "--json", "--repo", repos[profile], "--stdin-filename", "/dumps/directory.ldif"}
		if profile == "db" {
			args = append(args, "--db-glob", "*.ldif")
		}
		code, out, errs := env.stasis(t, append(args, "--stdin-from-command", "--", slapcatBin, "-f", s.conf, "-n", "1")...)
		if code != exitOK {
			t.Fatalf("backup (%s profile): exit %d\n%s%s", profile, code, out, errs)
		}
		return summary(t, out)
	}
	day1 := slapcat(t, s.conf) // what the backups store, to compare with day 2's
	storedDay1 := map[string]float64{}
	for p := range repos {
		sum := backup(p)
		if sum["total_bytes"].(float64) != float64(len(day1)) {
			t.Fatalf("day 1 (%s profile): %v bytes backed up, the dump has %d", p, sum["total_bytes"], len(day1))
		}
		storedDay1[p] = sum["stored_added"].(float64)
	}

	// A day's changes: every 100th entry gets a new telephone number and
	// description, through the running server.
	var mods strings.Builder
	changed := 0
	for i := 100; i <= entries; i += 100 {
		fmt.Fprintf(&mods, "dn: cn=p%06d,%s\nchangetype: modify\nreplace: telephoneNumber\ntelephoneNumber: +49 30 %07d\n-\nreplace: description\ndescription: moved to building %d, floor %d, day 2\n\n",
			i, ldapSuffix, 9000000+i, i%37, i%7)
		changed++
	}
	if out, err := s.ldap(context.Background(), "ldapmodify", mods.String()); err != nil {
		t.Fatalf("ldapmodify %d entries: %v\n%s", changed, err, out)
	}
	day2 := slapcat(t, s.conf)
	changedLines, changedEntries := ldifChange(day1, day2)
	if changedEntries == 0 {
		t.Fatal("the second dump has no changed entry")
	}
	added := map[string]float64{}
	for _, p := range []string{"default", "db"} {
		sum := backup(p)
		if sum["total_bytes"].(float64) != float64(len(day2)) {
			t.Fatalf("day 2 (%s profile): %v bytes backed up, the dump has %d", p, sum["total_bytes"], len(day2))
		}
		added[p] = sum["bytes_added"].(float64)
		stored := sum["stored_added"].(float64)
		t.Logf("%s profile: dump of %d bytes, %d entries changed (%d bytes of changed lines, %d bytes of changed entries); day 2 added %d bytes of new chunks (%.1f%% of the dump, %.0fx the changed lines), %d bytes stored (day 1 stored %d)",
			p, len(day2), changed, changedLines, changedEntries, int64(added[p]), 100*added[p]/float64(len(day2)),
			added[p]/float64(changedLines), int64(stored), int64(storedDay1[p]))
	}
	if added["default"] > float64(len(day2)) || added["db"] > float64(len(day2)) {
		t.Errorf("the second backup added more than a whole dump (%d bytes): %v", len(day2), added)
	}
	if added["db"] >= added["default"] {
		t.Errorf("the db chunk profile added %v bytes, the default %v: small chunks should dedup a dump better", added["db"], added["default"])
	}
}

// personLDIF is directory entry number i of the dedup measurement: a person
// with the attributes a company directory holds.
func personLDIF(i int) string {
	first := []string{"Anna", "Ben", "Carla", "David", "Eva", "Felix", "Greta", "Hans", "Ines", "Jonas"}[i%10]
	last := []string{"Schmidt", "Meyer", "Weber", "Fischer", "Wagner", "Becker", "Hoffmann", "Koch"}[i%8]
	return fmt.Sprintf(`dn: cn=p%06d,%s
objectClass: inetOrgPerson
cn: p%06d
sn: %s
givenName: %s
displayName: %s %s
uid: %s.%s.%d
mail: %s.%s.%d@example.com
telephoneNumber: +49 30 %07d
title: %s
ou: department %d
employeeNumber: %d
description: works in building %d, floor %d, room %d

`, i, ldapSuffix, i, last, first, first, last, strings.ToLower(first), strings.ToLower(last), i,
		strings.ToLower(first), strings.ToLower(last), i, 1000000+i*7%8999999,
		[]string{"engineer", "manager", "accountant", "designer", "operator"}[i%5], i%23, 100000+i, i%37, i%7, i%211)
}

// ldifChange compares two slapcat dumps entry by entry (by dn) and returns
// the bytes of the lines of the second that are not in the first's entry of
// the same dn, and the bytes of the second's entries that differ at all.
func ldifChange(a, b []byte) (lines, entries int) {
	split := func(d []byte) map[string]string {
		m := map[string]string{}
		for _, e := range strings.Split(string(d), "\n\n") {
			if dn, _, ok := strings.Cut(e, "\n"); ok {
				m[dn] = e
			}
		}
		return m
	}
	old := split(a)
	for dn, e := range split(b) {
		if old[dn] == e {
			continue
		}
		entries += len(e) + 2
		have := map[string]bool{}
		for _, l := range strings.Split(old[dn], "\n") {
			have[l] = true
		}
		for _, l := range strings.Split(e, "\n") {
			if !have[l] {
				lines += len(l) + 1
			}
		}
	}
	return lines, entries
}
