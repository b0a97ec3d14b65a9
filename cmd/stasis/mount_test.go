package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/internal/enginetest"
	"golang.org/x/sys/unix"
)

// requireFUSE skips, saying why, where a FUSE file system cannot be mounted.
func requireFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("mount tests need FUSE: %v (install fuse3, modprobe fuse; in a container pass --device /dev/fuse)", err)
	}
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			t.Skip("mount tests need root (a direct mount) or fusermount3 (Debian package fuse3)")
		}
	}
}

// mountProc is a `stasis mount` process of the built binary.
type mountProc struct {
	cmd    *exec.Cmd
	out    string // file with its stdout and stderr
	exited chan error
}

func (m *mountProc) output(t *testing.T) string {
	t.Helper()
	b, _ := os.ReadFile(m.out)
	return string(b)
}

// startMount runs `stasis mount` and returns once MOUNTPOINT/snapshots
// can be stat'ed (polled, with a deadline), or fails the test when the
// process exits first.
func startMount(t *testing.T, bin, repoDir, mnt string) *mountProc {
	t.Helper()
	out, err := os.CreateTemp(t.TempDir(), "mount-output-")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	m := &mountProc{cmd: exec.Command(bin, "mount", "--repo", repoDir, mnt), out: out.Name(), exited: make(chan error, 1)}
	m.cmd.Stdout, m.cmd.Stderr = out, out
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { m.exited <- m.cmd.Wait() }()
	t.Cleanup(func() {
		// A failed test must not leave a mount behind (nor let TempDir's
		// cleanup walk into one).
		m.cmd.Process.Kill()
		unix.Unmount(mnt, unix.MNT_DETACH)
	})
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(filepath.Join(mnt, "snapshots")); err == nil {
			return m
		}
		select {
		case err := <-m.exited:
			t.Fatalf("stasis mount exited before the file system appeared: %v\n%s", err, m.output(t))
		case <-time.After(10 * time.Millisecond): // poll interval
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s/snapshots a minute after starting stasis mount:\n%s", mnt, m.output(t))
		}
	}
}

// mounted reports whether dir is a mountpoint (in /proc/self/mountinfo).
func mounted(t *testing.T, dir string) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// TestMountKilledAndRecovered runs the built binary's mount, reads part
// of a file through it, kills the process with SIGKILL in the middle of
// that, and shows that the stale mountpoint is named as such, that
// fusermount -u (or umount -l) recovers it, that a new mount serves every
// file equal to the source, that SIGTERM unmounts cleanly with exit 0, and
// that SIGINT with a file still open detaches the busy mount lazily (exit
// 0 too), and that the repository still passes check --read-data.
func TestMountKilledAndRecovered(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	requireFUSE(t)
	setupEnv(t)
	t.Setenv("STASIS_CACHE_DIR", t.TempDir())
	bin := buildStasis(t)
	src := sampleTree(t)
	big := make([]byte, 4<<20+333)
	rand.New(rand.NewSource(7)).Read(big)
	if err := os.WriteFile(filepath.Join(src, "big.db"), big, 0o600); err != nil {
		t.Fatal(err)
	}
	repoDir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "backup", "--init", "--repo", repoDir, src)
	mnt := t.TempDir()

	m := startMount(t, bin, repoDir, mnt)
	if locks, _ := os.ReadDir(filepath.Join(repoDir, "locks")); len(locks) == 0 {
		t.Error("the mount holds no repository lock")
	}
	f, err := os.Open(filepath.Join(mnt, "latest", src, "big.db"))
	if err != nil {
		t.Fatal(err)
	}
	part := make([]byte, 100<<10)
	if _, err := io.ReadFull(f, part); err != nil || !bytes.Equal(part, big[:len(part)]) {
		t.Fatalf("first 100 KiB through the mount: %v, equal %v", err, bytes.Equal(part, big[:len(part)]))
	}
	if err := m.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-m.exited
	if _, err := f.ReadAt(part, 3<<20); err == nil {
		t.Error("a read from the mount of a killed process succeeded")
	}
	f.Close()
	if _, err := os.Stat(mnt); !errors.Is(err, syscall.ENOTCONN) {
		t.Errorf("stat of the mountpoint after kill -9: %v, want ENOTCONN", err)
	}

	// Mounting on it again says what it is and what to do.
	code, _, errs := stasis(t, "mount", "--repo", repoDir, mnt)
	if code != exitFatal || !strings.Contains(errs, "stale FUSE mount") || !strings.Contains(errs, "fusermount -u "+mnt) {
		t.Errorf("mount on the stale mountpoint: exit %d\n%s", code, errs)
	}

	// Recover it as a user would.
	recoverCmd := exec.Command("umount", "-l", mnt)
	if p, err := exec.LookPath("fusermount3"); err == nil {
		recoverCmd = exec.Command(p, "-u", mnt)
	}
	if out, err := recoverCmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", recoverCmd.Args, err, out)
	}
	if _, err := os.Stat(filepath.Join(mnt, "snapshots")); !errors.Is(err, fs.ErrNotExist) || mounted(t, mnt) {
		t.Fatalf("after %v: %s/snapshots: %v, mounted %v", recoverCmd.Args, mnt, err, mounted(t, mnt))
	}

	// A new mount works and serves every file as it was backed up.
	m = startMount(t, bin, repoDir, mnt)
	want, got := enginetest.FileHashes(t, src), enginetest.FileHashes(t, filepath.Join(mnt, "latest", src))
	if len(got) != len(want) || len(want) != 3 {
		t.Errorf("files through the new mount: %d, source %d", len(got), len(want))
	}
	for p, h := range want {
		if got[p] != h {
			t.Errorf("%s differs through the new mount", p)
		}
	}

	// SIGTERM: unmounted, exit 0.
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-m.exited:
		if err != nil {
			t.Errorf("stasis mount after SIGTERM: %v (want exit 0)\n%s", err, m.output(t))
		}
	case <-time.After(time.Minute):
		t.Fatalf("stasis mount still running a minute after SIGTERM:\n%s", m.output(t))
	}
	if !strings.Contains(m.output(t), "unmounted "+mnt) || mounted(t, mnt) {
		t.Errorf("after SIGTERM: mounted %v, output:\n%s", mounted(t, mnt), m.output(t))
	}

	// SIGINT (Ctrl-C) while a file is open below the mountpoint: the mount
	// is busy, so it is detached lazily; exit 0 all the same.
	m = startMount(t, bin, repoDir, mnt)
	f, err = os.Open(filepath.Join(mnt, "latest", src, "big.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := m.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-m.exited:
		if err != nil {
			t.Errorf("stasis mount after SIGINT with a file open: %v (want exit 0)\n%s", err, m.output(t))
		}
	case <-time.After(time.Minute):
		t.Fatalf("stasis mount still running a minute after SIGINT:\n%s", m.output(t))
	}
	if !strings.Contains(m.output(t), "detached it lazily") || mounted(t, mnt) {
		t.Errorf("after SIGINT with a file open: mounted %v, output:\n%s", mounted(t, mnt), m.output(t))
	}
	if _, err := f.ReadAt(part, 0); err == nil {
		t.Error("a file opened in the detached mount still reads after its process exited")
	}

	mustRun(t, "check", "--read-data", "--repo", repoDir)
}

// TestMountInProcessJSON runs mount in-process with --json and --host and
// stops it the way Ctrl-C does (the command's context ends): exit 0, a
// "mounted" and an "unmounted" line, only the selected host's snapshots.
func TestMountInProcessJSON(t *testing.T) {
	requireFUSE(t)
	setupEnv(t)
	t.Setenv("STASIS_CACHE_DIR", t.TempDir())
	src := sampleTree(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "backup", "--init", "--repo", repoDir, "--host", "zoom1", src)
	mustRun(t, "backup", "--repo", repoDir, "--host", "zoom2", src)
	mnt := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"mount", "--json", "--repo", repoDir, "--host", "zoom2", mnt}, strings.NewReader(""), &out, &errb)
	}()
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(filepath.Join(mnt, "snapshots")); err == nil {
			break
		}
		select {
		case code := <-done:
			t.Fatalf("mount ended with exit %d before the file system appeared:\n%s", code, errb.String())
		case <-time.After(10 * time.Millisecond): // poll interval
		}
		if time.Now().After(deadline) {
			t.Fatal("no mount a minute after starting it")
		}
	}
	hosts, err := os.ReadDir(filepath.Join(mnt, "hosts"))
	if err != nil || len(hosts) != 1 || hosts[0].Name() != "zoom2" {
		t.Errorf("hosts/ with --host zoom2: %v (%v)", hosts, err)
	}
	data, err := os.ReadFile(filepath.Join(mnt, "hosts", "zoom2", "latest", src, "ldif", "people.ldif"))
	if err != nil || string(data) != "dn: cn=alice,o=Zoomserv\n" {
		t.Errorf("people.ldif through the mount: %q, %v", data, err)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("mount after its context ended: exit %d\n%s", code, errb.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("mount still running a minute after its context ended")
	}
	var types []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON line: %q", line)
		}
		types = append(types, fmt.Sprint(m["message_type"]))
		if m["mountpoint"] != mnt {
			t.Errorf("line %q: mountpoint is not %s", line, mnt)
		}
	}
	if strings.Join(types, " ") != "mounted unmounted" || mounted(t, mnt) {
		t.Errorf("JSON lines %v, mounted %v:\n%s", types, mounted(t, mnt), out.String())
	}
}
