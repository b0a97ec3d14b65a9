package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// stasis runs the CLI in-process and returns exit code, stdout and stderr.
func stasis(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errs := stasis(t, args...)
	if code != 0 {
		t.Fatalf("stasis %v: exit %d\n%s%s", args, code, out, errs)
	}
	return out
}

func sampleTree(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "zoomserv")
	os.MkdirAll(filepath.Join(dir, "ldif"), 0o755)
	os.WriteFile(filepath.Join(dir, "X500.db"), bytes.Repeat([]byte("page of records\n"), 4096), 0o600)
	os.WriteFile(filepath.Join(dir, "ldif", "people.ldif"), []byte("dn: cn=alice,o=Zoomserv\n"), 0o644)
	// Files modified in the second a backup starts are always re-read by the
	// next one; date them an hour back so that "unchanged" is deterministic.
	old := time.Now().Add(-time.Hour)
	for _, f := range []string{"X500.db", "ldif/people.ldif"} {
		os.Chtimes(filepath.Join(dir, f), old, old)
	}
	return dir
}

func setupEnv(t *testing.T) {
	t.Setenv("STASIS_PASSWORD", "correct horse battery staple")
	t.Setenv("STASIS_REPO", "")
}

func TestCLIMainJob(t *testing.T) {
	setupEnv(t)
	src := sampleTree(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	out := mustRun(t, "backup", "--init", "--repo", repoDir, "--tag", "daily", "--host", "zoom1", src)
	if !strings.Contains(out, "snapshot ") || !strings.Contains(out, "2 new") {
		t.Errorf("backup output:\n%s", out)
	}
	// STASIS_REPO works instead of --repo.
	t.Setenv("STASIS_REPO", repoDir)
	mustRun(t, "backup", "--host", "zoom1", src)

	var snaps []map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, "snapshots", "--json")), &snaps); err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 2 {
		t.Fatalf("%d snapshots, want 2", len(snaps))
	}
	for _, k := range []string{"id", "time", "host", "paths", "tags", "summary"} {
		if _, ok := snaps[0][k]; !ok {
			t.Errorf("snapshot JSON lacks %q: %v", k, snaps[0])
		}
	}
	if snaps[0]["host"] != "zoom1" || snaps[0]["tags"].([]any)[0] != "daily" {
		t.Errorf("host/tags: %v %v", snaps[0]["host"], snaps[0]["tags"])
	}
	if sum := snaps[1]["summary"].(map[string]any); sum["files_unchanged"].(float64) != 2 || sum["bytes_read"].(float64) != 0 {
		t.Errorf("second snapshot summary: %v", sum)
	}

	target := t.TempDir()
	mustRun(t, "restore", "latest", "--target", target)
	got, _ := os.ReadFile(filepath.Join(target, src, "X500.db"))
	want, _ := os.ReadFile(filepath.Join(src, "X500.db"))
	if !bytes.Equal(got, want) {
		t.Error("restored X500.db differs")
	}
	// A single file at a point in time.
	one := t.TempDir()
	mustRun(t, "restore", "--at", "2100-01-01 00:00", "--target", one, "--include", filepath.Join(src, "ldif", "people.ldif"))
	if _, err := os.Stat(filepath.Join(one, src, "X500.db")); err == nil {
		t.Error("--include restored more than asked")
	}
	if b, _ := os.ReadFile(filepath.Join(one, src, "ldif", "people.ldif")); !strings.Contains(string(b), "alice") {
		t.Error("--include did not restore the file")
	}
	if code, _, errs := stasis(t, "restore", "--at", "1999-01-01 00:00", "--target", t.TempDir()); code != 1 || !strings.Contains(errs, "no snapshot at or before") {
		t.Errorf("--at before every snapshot: exit %d, %s", code, errs)
	}
	if out := mustRun(t, "ls", "latest"); !strings.Contains(out, "/ldif/people.ldif") {
		t.Errorf("ls:\n%s", out)
	}
	if out := mustRun(t, "check", "--read-data"); !strings.Contains(out, "no errors") {
		t.Errorf("check:\n%s", out)
	}
	if out := mustRun(t, "stats"); !strings.Contains(out, "dedup ratio") {
		t.Errorf("stats:\n%s", out)
	}
	if out := mustRun(t, "version"); !strings.HasPrefix(out, "stasis ") {
		t.Errorf("version: %s", out)
	}
}

func TestCLIExitCodes(t *testing.T) {
	setupEnv(t)
	src := sampleTree(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no repository", []string{"snapshots", "--repo", repoDir}, 10, "stasis init"},
		{"no repo flag", []string{"snapshots"}, 2, "--repo"},
		{"unknown flag", []string{"backup", "--bogus", src}, 2, "bogus"},
		{"no paths", []string{"backup", "--repo", repoDir}, 2, "PATH"},
		{"restore needs one of", []string{"restore", "--repo", repoDir, "--target", "x"}, 2, "latest"},
	}
	for _, c := range cases {
		code, _, errs := stasis(t, c.args...)
		if code != c.code || !strings.Contains(errs, c.msg) {
			t.Errorf("%s: exit %d (want %d), stderr %q (want %q)", c.name, code, c.code, errs, c.msg)
		}
	}
	mustRun(t, "init", "--repo", repoDir)
	code, _, errs := stasis(t, "backup", "--repo", repoDir, filepath.Join(src, "missing"))
	if code != 1 || !strings.Contains(errs, filepath.Join(src, "missing")) {
		t.Errorf("missing path: exit %d, %s", code, errs)
	}
	code, _, errs = stasis(t, "init", "--repo", repoDir)
	if code != 1 || !strings.Contains(errs, "already exists") {
		t.Errorf("second init: exit %d, %s", code, errs)
	}
	mustRun(t, "backup", "--repo", repoDir, src)
	target := t.TempDir()
	os.WriteFile(filepath.Join(target, "occupied"), nil, 0o644)
	code, _, errs = stasis(t, "restore", "--repo", repoDir, "latest", "--target", target)
	if code != 1 || !strings.Contains(errs, "--overwrite") {
		t.Errorf("non-empty target: exit %d, %s", code, errs)
	}
}

// TestCLIBackupJSONLines checks --json backup output is JSON lines ending in a summary.
func TestCLIBackupJSONLines(t *testing.T) {
	setupEnv(t)
	src := sampleTree(t)
	out := mustRun(t, "backup", "--init", "--json", "--repo", filepath.Join(t.TempDir(), "r"), src)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var last map[string]any
	for _, l := range lines {
		if err := json.Unmarshal([]byte(l), &last); err != nil {
			t.Fatalf("not a JSON line: %q", l)
		}
	}
	if last["message_type"] != "summary" || len(last["snapshot_id"].(string)) != 64 {
		t.Errorf("last line: %v", last)
	}
}

// buildStasis compiles the real binary once per test that needs it.
func buildStasis(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "stasis")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestBinaryEndToEnd runs the built program, and as an unprivileged user
// shows that an unreadable file is listed and gives exit 3.
func TestBinaryEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	setupEnv(t)
	bin := buildStasis(t)
	src := sampleTree(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	out, err := exec.Command(bin, "backup", "--init", "--repo", repoDir, src).CombinedOutput()
	if err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	target := t.TempDir()
	if out, err := exec.Command(bin, "restore", "--repo", repoDir, "latest", "--target", target).CombinedOutput(); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(target, src, "X500.db")); err != nil {
		t.Fatal(err)
	}

	if os.Geteuid() != 0 {
		t.Skip("the unreadable-file case runs the binary as user nobody and needs root to switch user")
	}
	base := t.TempDir()
	os.Chmod(base, 0o777)
	for d := filepath.Dir(base); d != "/"; d = filepath.Dir(d) {
		// The test's temp dirs must be traversable by nobody; their modes
		// (/tmp's sticky 1777 among them) are put back afterwards.
		if fi, err := os.Stat(d); err == nil {
			mode := fi.Mode() & (fs.ModePerm | fs.ModeSticky | fs.ModeSetgid | fs.ModeSetuid)
			t.Cleanup(func() { os.Chmod(d, mode) })
			os.Chmod(d, mode|0o755)
		}
	}
	tree := filepath.Join(base, "tree")
	os.MkdirAll(tree, 0o777)
	os.WriteFile(filepath.Join(tree, "readable"), []byte("ok"), 0o644)
	os.WriteFile(filepath.Join(tree, "secret"), []byte("no"), 0o000)
	cmd := exec.Command(bin, "backup", "--init", "--repo", filepath.Join(base, "repo"), tree)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Env = append(os.Environ(), "HOME="+base, "STASIS_CACHE_DIR=") // nobody's cache under its HOME
	out, err = cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("backup with an unreadable file: %v (want exit 3)\n%s", err, out)
	}
	if !strings.Contains(string(out), filepath.Join(tree, "secret")) || !strings.Contains(string(out), "permission denied") {
		t.Errorf("unreadable file not named with its error:\n%s", out)
	}
}

func TestCLIDiff(t *testing.T) {
	setupEnv(t)
	src := sampleTree(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "backup", "--init", "--repo", repoDir, src)
	os.WriteFile(filepath.Join(src, "ldif", "new.ldif"), []byte("dn: cn=carol\n"), 0o644)
	mustRun(t, "backup", "--repo", repoDir, src)
	var snaps []map[string]any
	json.Unmarshal([]byte(mustRun(t, "snapshots", "--json", "--repo", repoDir)), &snaps)
	out := mustRun(t, "diff", "--repo", repoDir, snaps[0]["id"].(string), "latest")
	if !strings.Contains(out, "+  "+filepath.Join(src, "ldif", "new.ldif")) || !strings.Contains(out, "1 added, 0 removed") {
		t.Errorf("diff output:\n%s", out)
	}
}

// init --compression-level applies to every later backup: a higher level
// stores the same tree in fewer bytes; a level zstd does not have is a usage
// error that creates nothing.
func TestInitCompressionLevel(t *testing.T) {
	setupEnv(t)
	src := t.TempDir()
	var b bytes.Buffer
	rng := rand.New(rand.NewSource(5))
	words := []string{"alice", "bob", "carol", "dave", "people", "sales", "Zoomserv", "example", "org", "mail", "uid", "cn"}
	for i := 0; b.Len() < 4<<20; i++ {
		fmt.Fprintf(&b, "dn: uid=%s%d,ou=%s,o=Zoomserv\nmail: %s.%s@%s.org\nuidNumber: %d\n\n", words[rng.Intn(len(words))], rng.Intn(100000),
			words[rng.Intn(len(words))], words[rng.Intn(len(words))], words[rng.Intn(len(words))], words[rng.Intn(len(words))], rng.Intn(1<<20))
	}
	os.WriteFile(filepath.Join(src, "people.ldif"), b.Bytes(), 0o600)
	size := func(level string) int64 {
		dir := filepath.Join(t.TempDir(), "repo")
		mustRun(t, "init", "--repo", dir, "--compression-level", level)
		mustRun(t, "backup", "--repo", dir, src)
		var n int64
		filepath.WalkDir(filepath.Join(dir, "packs"), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				fi, _ := d.Info()
				n += fi.Size()
			}
			return err
		})
		return n
	}
	fast, better := size("2"), size("9")
	if better >= fast {
		t.Errorf("packs at level 9: %d bytes, at level 2: %d; want fewer", better, fast)
	}
	dir := filepath.Join(t.TempDir(), "repo")
	if code, _, errs := stasis(t, "init", "--repo", dir, "--compression-level", "23"); code != exitUsage || !strings.Contains(errs, "--compression-level 23") {
		t.Errorf("init --compression-level 23: exit %d, %s", code, errs)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("a refused init left %s behind (%v)", dir, err)
	}
}
