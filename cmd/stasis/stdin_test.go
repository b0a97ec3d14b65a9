package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// stdinRepo makes a repository with one snapshot of a sample tree and
// returns the repository and the tree.
func stdinRepo(t *testing.T) (repoDir, src string) {
	t.Helper()
	setupEnv(t)
	src = sampleTree(t)
	repoDir = filepath.Join(t.TempDir(), "repo")
	mustRun(t, "backup", "--init", "--repo", repoDir, src)
	return repoDir, src
}

func snapshotList(t *testing.T, repoDir string) []snapshotJSON {
	t.Helper()
	var list []snapshotJSON
	if err := json.Unmarshal([]byte(mustRun(t, "snapshots", "--json", "--repo", repoDir)), &list); err != nil {
		t.Fatal(err)
	}
	return list
}

// A dump command's output and the service's config files: one snapshot,
// both restored; the command, exit status and duration are recorded.
func TestStdinFromCommandWithPaths(t *testing.T) {
	repoDir, src := stdinRepo(t)
	dump := filepath.Join(t.TempDir(), "export.ldif")
	data := bytes.Repeat([]byte("dn: cn=alice,o=Zoomserv\ncn: alice\n\n"), 20000)
	os.WriteFile(dump, data, 0o644)
	code, out, errs := stasis(t, "backup", "--repo", repoDir, src, "--stdin-filename", "/dumps/ldap.ldif", "--stdin-from-command", "--", "/bin/cat", dump)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
	if !strings.Contains(errs, "stasis: stdin command: /bin/cat "+dump) {
		t.Errorf("stderr does not announce the command:\n%s", errs)
	}
	list := snapshotList(t, repoDir)
	sn := list[len(list)-1]
	if sn.Stdin == nil || strings.Join(sn.Stdin.Command, " ") != "/bin/cat "+dump || sn.Stdin.ExitStatus != 0 || sn.Stdin.Bytes != int64(len(data)) ||
		sn.Stdin.Path != "/dumps/ldap.ldif" || sn.Stdin.Duration <= 0 || sn.Stdin.Started.IsZero() {
		t.Fatalf("stdin record %+v", sn.Stdin)
	}
	if strings.Join(sn.Paths, " ") != "/dumps/ldap.ldif "+src {
		t.Errorf("paths %v", sn.Paths)
	}
	target := t.TempDir()
	mustRun(t, "restore", "--repo", repoDir, "latest", "--target", target)
	got, _ := os.ReadFile(filepath.Join(target, "dumps", "ldap.ldif"))
	if !bytes.Equal(got, data) {
		t.Errorf("restored dump: %d bytes, want %d", len(got), len(data))
	}
	if fi, err := os.Stat(filepath.Join(target, "dumps", "ldap.ldif")); err != nil || fi.Mode().Perm() != 0o600 || !fi.ModTime().Equal(sn.Stdin.Started) {
		t.Errorf("restored dump: %v %v; want mode 0600 and mtime %v (the command's start)", fi.Mode(), fi.ModTime(), sn.Stdin.Started)
	}
	if b, _ := os.ReadFile(filepath.Join(target, src, "ldif", "people.ldif")); !strings.Contains(string(b), "alice") {
		t.Error("the config files are not in the same snapshot")
	}
}

func TestStdinCommandFailureWritesNoSnapshot(t *testing.T) {
	repoDir, src := stdinRepo(t)
	before := len(snapshotList(t, repoDir))
	script := "echo 'partial dump'; for i in $(seq 1 40); do echo \"progress $i\" >&2; done; echo 'pg_dump: error: connection to server failed' >&2; exit 2"
	code, out, errs := stasis(t, "backup", "--repo", repoDir, src, "--stdin-filename", "db.dump", "--stdin-from-command", "--", "sh", "-c", script)
	if code != exitFatal {
		t.Fatalf("exit %d, want 1\n%s%s", code, out, errs)
	}
	for _, want := range []string{"no snapshot written", "exited with status 2", "pg_dump: error: connection to server failed", "progress 40", "sh -c "} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
	// The message's tail holds the last 20 lines only (the live copy above has them all).
	msg := errs[strings.LastIndex(errs, "stasis: "):]
	if strings.Contains(msg, "progress 21\n") || !strings.Contains(msg, "progress 22\n") {
		t.Errorf("the message's stderr tail is not the last 20 lines:\n%s", msg)
	}
	if strings.Contains(out, "saved") {
		t.Errorf("stdout says a snapshot was saved:\n%s", out)
	}
	if n := len(snapshotList(t, repoDir)); n != before {
		t.Fatalf("%d snapshots after a failed dump, want %d", n, before)
	}
	if out := mustRun(t, "check", "--repo", repoDir); !strings.Contains(out, "no errors") {
		t.Errorf("check after a failed dump:\n%s", out)
	}
}

func TestStdinCommandKilledBySignal(t *testing.T) {
	repoDir, _ := stdinRepo(t)
	before := len(snapshotList(t, repoDir))
	code, _, errs := stasis(t, "backup", "--repo", repoDir, "--stdin-from-command", "--", "sh", "-c", "echo half; echo 'out of memory' >&2; kill -KILL $$")
	if code != exitFatal || !strings.Contains(errs, "killed by signal SIGKILL") || !strings.Contains(errs, "out of memory") {
		t.Fatalf("exit %d\n%s", code, errs)
	}
	if n := len(snapshotList(t, repoDir)); n != before {
		t.Fatalf("%d snapshots, want %d", n, before)
	}
}

// The timeout kills the command's whole process group: here a grandchild
// (sleep, in the background of the shell) that holds the output open.
func TestStdinCommandTimeoutKillsGroup(t *testing.T) {
	repoDir, _ := stdinRepo(t)
	before := len(snapshotList(t, repoDir))
	pidFile := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	code, _, errs := stasis(t, "backup", "--repo", repoDir, "--hook-timeout", "1s", "--stdin-from-command", "--",
		"sh", "-c", "sleep 1000 & echo $! > "+pidFile+"; echo started; wait")
	took := time.Since(start)
	if code != exitFatal || !strings.Contains(errs, "timed out after 1s") || !strings.Contains(errs, "no snapshot written") {
		t.Fatalf("exit %d\n%s", code, errs)
	}
	if took > 30*time.Second {
		t.Errorf("took %s with a 1s timeout", took)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if s := string(stat); !strings.Contains(s[strings.LastIndexByte(s, ')'):], ") Z") {
			t.Errorf("grandchild %d still runs: %s", pid, s)
		}
	}
	if n := len(snapshotList(t, repoDir)); n != before {
		t.Fatalf("%d snapshots, want %d", n, before)
	}
}

func TestStdinEmptyOutputIsSnapshotWithWarning(t *testing.T) {
	repoDir, _ := stdinRepo(t)
	before := len(snapshotList(t, repoDir))
	code, out, errs := stasis(t, "backup", "--repo", repoDir, "--stdin-filename", "empty.ldif", "--stdin-from-command", "--", "/bin/true")
	if code != exitIncomplete || !strings.Contains(errs, "warning: /empty.ldif") || !strings.Contains(errs, "empty") || !strings.Contains(out, "saved") {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
	list := snapshotList(t, repoDir)
	if len(list) != before+1 || list[len(list)-1].Stdin == nil || list[len(list)-1].Stdin.Bytes != 0 || !list[len(list)-1].Complete {
		t.Fatalf("snapshots: %d (want %d), last %+v", len(list), before+1, list[len(list)-1])
	}
}

func TestStdinUsageErrors(t *testing.T) {
	repoDir, src := stdinRepo(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{src, "--stdin-from-command", "--", "slapcat", "-n", "1", "--stdin-filename", "/dumps/x"}, "give stasis's flags before --"},
		{[]string{src, "--stdin-from-command"}, "needs the command after --"},
		{[]string{"--stdin-in-window", "--stdin-from-command", "--", "/bin/true"}, "--stdin-in-window needs --quiesce"},
		{[]string{"--stdin", "--stdin-from-command", "--", "/bin/true"}, "exclude each other"},
		{[]string{src, "--stdin-filename", "x"}, "--stdin-filename only applies"},
		{[]string{src, "--stdin-filename", filepath.Join(src, "dump"), "--stdin-from-command", "--", "/bin/true"}, "inside the backup path"},
		{[]string{"--stdin-from-command", "--", "no-such-dump-tool-xyz"}, "no-such-dump-tool-xyz"},
		{[]string{"--quiesce", "true", "--freeze", "copy", "--stdin-in-window", "--stdin-from-command", "--", "/bin/true"}, "needs --freeze stop"},
	} {
		code, _, errs := stasis(t, append([]string{"backup", "--repo", repoDir}, c.args...)...)
		if code != exitUsage || !strings.Contains(errs, c.want) {
			t.Errorf("backup %v: exit %d, want 2 and %q:\n%s", c.args, code, c.want, errs)
		}
	}
}

// With --quiesce, the dump runs after the resume hook unless
// --stdin-in-window asks for it inside the window.
func TestStdinQuiesceWindow(t *testing.T) {
	repoDir, _ := stdinRepo(t)
	dir := t.TempDir()
	q, r := filepath.Join(dir, "quiesced"), filepath.Join(dir, "resumed")
	hooks := []string{"--quiesce", "touch " + q, "--resume", "touch " + r}
	where := fmt.Sprintf("if test -e %s && ! test -e %s; then echo inside; else echo outside; fi", q, r)
	for _, c := range []struct {
		extra []string
		want  string
	}{{nil, "outside\n"}, {[]string{"--stdin-in-window"}, "inside\n"}} {
		os.Remove(q)
		os.Remove(r)
		args := append(append(append([]string{"backup", "--repo", repoDir}, hooks...), c.extra...), "--stdin-from-command", "--", "sh", "-c", where)
		mustRun(t, args...)
		target := t.TempDir()
		mustRun(t, "restore", "--repo", repoDir, "latest", "--target", target)
		if b, _ := os.ReadFile(filepath.Join(target, "stdin")); string(b) != c.want {
			t.Errorf("%v: the dump ran %q, want %q", c.extra, b, c.want)
		}
		list := snapshotList(t, repoDir)
		if sn := list[len(list)-1]; sn.Stdin == nil || sn.Stdin.InWindow != (c.extra != nil) {
			t.Errorf("%v: stdin record %+v", c.extra, sn.Stdin)
		}
	}
}

// The built binary: a real pipe into --stdin, and --stdin-from-command.
func TestStdinBinaryPipe(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	setupEnv(t)
	bin := buildStasis(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	dump := filepath.Join(t.TempDir(), "db.dump")
	var data bytes.Buffer
	for i := 0; i < 50000; i++ {
		fmt.Fprintf(&data, "INSERT INTO t VALUES (%d, 'row %d');\n", i, i*7)
	}
	os.WriteFile(dump, data.Bytes(), 0o644)
	out, err := exec.Command("sh", "-c", fmt.Sprintf("cat %s | %s backup --init --repo %s --stdin --stdin-filename db.dump", dump, bin, repoDir)).CombinedOutput()
	if err != nil {
		t.Fatalf("pipe into backup --stdin: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "backup", "--repo", repoDir, "--stdin-filename", "again.dump", "--stdin-from-command", "--", "/bin/cat", dump).CombinedOutput()
	if err != nil {
		t.Fatalf("backup --stdin-from-command: %v\n%s", err, out)
	}
	for _, name := range []string{"db.dump", "again.dump"} {
		target := t.TempDir()
		if out, err := exec.Command(bin, "restore", "--repo", repoDir, "latest", "--target", target, "--path", "/"+name).CombinedOutput(); err != nil {
			t.Fatalf("restore: %v\n%s", err, out)
		}
		if got, _ := os.ReadFile(filepath.Join(target, name)); !bytes.Equal(got, data.Bytes()) {
			t.Errorf("%s restored: %d bytes, want %d", name, len(got), data.Len())
		}
	}
	// A failing producer in the binary: exit 1 and no third snapshot.
	cmd := exec.Command(bin, "backup", "--repo", repoDir, "--stdin-from-command", "--", "sh", "-c", "echo oops >&2; exit 5")
	out, err = cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "exited with status 5") {
		t.Fatalf("failing dump: %v\n%s", err, out)
	}
	out, _ = exec.Command(bin, "snapshots", "--repo", repoDir).CombinedOutput()
	if !strings.Contains(string(out), "2 snapshots") {
		t.Errorf("snapshots after a failed dump:\n%s", out)
	}
}

// With --stdin, standard input is the data: a --password-command does not
// inherit it (it would eat the start of the dump).
func TestStdinPipeNotReadByPasswordCommand(t *testing.T) {
	repoDir, _ := stdinRepo(t)
	data := bytes.Repeat([]byte("COPY t FROM stdin;\n1\tone\n\\.\n"), 1000)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() { w.Write(data); w.Close() }()
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"backup", "--repo", repoDir, "--password-command", "head -c 100 >/dev/null; echo \"$STASIS_PASSWORD\"",
		"--stdin", "--stdin-filename", "db.sql"}, r, &out, &errb)
	r.Close()
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errb.String())
	}
	target := t.TempDir()
	mustRun(t, "restore", "--repo", repoDir, "latest", "--target", target)
	if got, _ := os.ReadFile(filepath.Join(target, "db.sql")); !bytes.Equal(got, data) {
		t.Fatalf("restored %d bytes, want %d (the password command read the data?)", len(got), len(data))
	}
}

// An interrupted backup does not wait for a --stdin writer that stalls:
// the read is unblocked, and there is no snapshot.
func TestStdinPipeStalledWriterInterrupted(t *testing.T) {
	repoDir, _ := stdinRepo(t)
	before := len(snapshotList(t, repoDir))
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	defer r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var errb bytes.Buffer
	go func() {
		done <- run(ctx, []string{"backup", "--repo", repoDir, "--stdin"}, r, io.Discard, &errb)
	}()
	// Once this returns, stasis has read all but a pipe buffer of it: it is reading.
	if _, err := w.Write(make([]byte, 4<<20)); err != nil {
		t.Fatal(err)
	}
	cancel() // as SIGTERM does; the writer neither writes nor closes
	select {
	case code := <-done:
		if code != exitFatal {
			t.Errorf("exit %d, want 1\n%s", code, errb.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("backup --stdin still waits for a stalled writer a minute after it was interrupted")
	}
	if n := len(snapshotList(t, repoDir)); n != before {
		t.Fatalf("%d snapshots, want %d", n, before)
	}
}
