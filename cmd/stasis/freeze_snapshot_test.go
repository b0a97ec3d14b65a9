package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/cmd/zoomsim/zdb"
	"github.com/stasisbackup/stasis/internal/loopfs"
)

// snapLoopBtrfs mounts a fresh btrfs image of size bytes on a loop device,
// creates the subvolume svc in it, and returns the mount point and the
// subvolume; it skips, saying why, without root, btrfs-progs or loop devices.
func snapLoopBtrfs(t testing.TB, size int64) (mnt, svc string) {
	t.Helper()
	mnt = loopfs.Btrfs(t, "freeze snapshot test", size)
	svc = filepath.Join(mnt, "svc")
	if out, err := exec.Command("btrfs", "subvolume", "create", svc).CombinedOutput(); err != nil {
		t.Fatalf("btrfs subvolume create: %v: %s", err, out)
	}
	return mnt, svc
}

// snapLeft lists the stasis snapshots among the subvolumes of mnt.
func snapLeft(t testing.TB, mnt string) []string {
	t.Helper()
	out, err := exec.Command("btrfs", "subvolume", "list", mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("btrfs subvolume list: %v: %s", err, out)
	}
	var left []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "stasis-snap-") {
			left = append(left, line)
		}
	}
	return left
}

// snapEnv is zoomsim in svc/zoomserv writing svc/logs/X500.log, with the
// config in svc/etc, all in one btrfs subvolume, and a repository.
type snapEnv struct {
	*zoomEnv
	mnt, svc, log, conf string
}

// startSnapEnv makes the tree; with nested, etc/ is a subvolume of its own.
func startSnapEnv(t *testing.T, size int64, nested bool) *snapEnv {
	t.Helper()
	mnt, svc := snapLoopBtrfs(t, size)
	t.Setenv("STASIS_STATE_DIR", t.TempDir())
	log := filepath.Join(svc, "logs", "X500.log")
	conf := filepath.Join(svc, "etc", "zoomserv.conf")
	if nested {
		if out, err := exec.Command("btrfs", "subvolume", "create", filepath.Dir(conf)).CombinedOutput(); err != nil {
			t.Fatalf("btrfs subvolume create: %v: %s", err, out)
		}
	}
	for _, d := range []string{filepath.Dir(log), filepath.Dir(conf)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(conf, []byte("suffix = o=Zoomserv\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(conf, old, old); err != nil { // not re-read for being new
		t.Fatal(err)
	}
	// Started after the mount, so that its cleanup (stop) runs before the unmount.
	e := startZoom(t, filepath.Join(svc, "zoomserv"), 4096, "--close-on-pause", "--log", log)
	return &snapEnv{zoomEnv: e, mnt: mnt, svc: svc, log: log, conf: conf}
}

func (e *snapEnv) backup(ctx context.Context, args ...string) (int, string, string) {
	return runStasis(ctx, nil, append(append([]string{"backup", "--repo", e.repo}, args...), e.svc)...)
}

var snapPausedRe = regexp.MustCompile(`paused transactions=\d+ last_tx=(\d+)`)

// pausedAt is the last transaction committed before the quiesce hook
// paused zoomsim, from the hook's output on stderr.
func pausedAt(t *testing.T, stderr string) uint64 {
	t.Helper()
	m := snapPausedRe.FindAllStringSubmatch(stderr, -1)
	if len(m) != 1 {
		t.Fatalf("want one pause reply in stderr:\n%s", stderr)
	}
	n, _ := strconv.ParseUint(m[0][1], 10, 64)
	return n
}

func lastLogTx(t *testing.T, path string) uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if _, rest, ok := strings.Cut(sc.Text(), " tx="); ok {
			id, _, _ := strings.Cut(rest, " ")
			last, _ = strconv.ParseUint(id, 10, 64)
		}
	}
	return last
}

var unchangedRe = regexp.MustCompile(`(\d+) unchanged`)

// A backup with --freeze snapshot restores the tree as it was at the quiesce
// point: the database and its log end at the last transaction committed
// before the pause, although zoomsim kept writing while the backup read; a
// file the service removed after the resume is there, one it created is
// not; the config (in a nested subvolume, snapshotted too although no
// quiesced file is in it) is there; the snapshots are gone; the quiesce
// object names btrfs. A second backup reuses the unchanged files.
func TestFreezeSnapshotBackup(t *testing.T) {
	e := startSnapEnv(t, 512<<20, true)
	rotated, created := filepath.Join(e.svc, "logs", "X500.log.1"), filepath.Join(e.svc, "logs", "X500.log.2")
	if err := os.WriteFile(rotated, []byte("yesterday\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hooks := e.hooks("")
	hooks[3] += fmt.Sprintf(" && rm %s && echo today > %s", rotated, created) // the service moves on after the resume
	args := append(hooks, "--freeze", "snapshot", "--quiesce-path", "X500.db", "--quiesce-path", "X500.log")
	code, out, errs := e.backup(context.Background(), args...)
	if code != exitOK {
		t.Fatalf("backup: exit %d\n%s%s", code, out, errs)
	}
	if !strings.Contains(out, "quiesce: snapshot, 2 files held still, downtime ") || !strings.Contains(out, "(btrfs snapshot of 2 volumes: ") ||
		!strings.Contains(out, "hooks ok, 0 warnings") {
		t.Errorf("summary line:\n%s", out)
	}
	e.wantRunning(t)
	T := pausedAt(t, errs)
	q := quiesceOf(t, e.repo)
	snap, _ := q["snapshot"].(map[string]any)
	vols, _ := snap["volumes"].([]any)
	if q["freeze"] != "snapshot" || q["freeze_requested"] != "snapshot" || snap["backend"] != "btrfs" ||
		len(vols) != 2 || vols[0] != e.svc || vols[1] != filepath.Dir(e.conf) {
		t.Errorf("quiesce object %v", q)
	}
	took, _ := snap["create_seconds"].(float64)
	if down, _ := q["downtime_seconds"].(float64); took <= 0 || down < took {
		t.Errorf("create_seconds %v, downtime_seconds %v", snap["create_seconds"], q["downtime_seconds"])
	}
	if left := snapLeft(t, e.mnt); len(left) != 0 {
		t.Errorf("snapshots left: %v", left)
	}
	target := t.TempDir()
	if code, out, errs := runStasis(context.Background(), nil, "restore", "latest", "--repo", e.repo, "--target", target); code != 0 {
		t.Fatalf("restore: exit %d\n%s%s", code, out, errs)
	}
	st, err := zdb.Scan(filepath.Join(target, e.db))
	if err != nil {
		t.Fatalf("restored X500.db: %v", err)
	}
	if st.MaxTxID != T {
		t.Errorf("restored X500.db holds transactions up to %d, want %d (the last before the quiesce)", st.MaxTxID, T)
	}
	if got := lastLogTx(t, filepath.Join(target, e.log)); got != T {
		t.Errorf("restored X500.log ends at tx %d, want %d", got, T)
	}
	if live, err := zdb.Scan(e.db); err == nil && live.MaxTxID <= T {
		// zoomsim writes continuously once resumed; the stop after the test
		// happens later still, so this only fails if it stopped writing.
		t.Errorf("live X500.db at tx %d: zoomsim did not write after the resume", live.MaxTxID)
	}
	if b, err := os.ReadFile(filepath.Join(target, e.conf)); err != nil || string(b) != "suffix = o=Zoomserv\n" {
		t.Errorf("restored config: %q, %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(target, e.svc, ".stasis-snapshots")); err == nil {
		t.Error("the snapshot directory was backed up")
	}
	if b, err := os.ReadFile(filepath.Join(target, rotated)); err != nil || string(b) != "yesterday\n" {
		t.Errorf("restored %s (removed after the resume): %q, %v", rotated, b, err)
	}
	if _, err := os.Lstat(filepath.Join(target, created)); err == nil {
		t.Errorf("restored %s, created after the resume", created)
	}

	os.WriteFile(rotated, []byte("yesterday\n"), 0o644)
	code, out, errs = e.backup(context.Background(), args...)
	if code != exitOK {
		t.Fatalf("second backup: exit %d\n%s%s", code, out, errs)
	}
	// zoomserv/zoomserv.conf, X500.db.pid (dated back) and etc/zoomserv.conf
	if m := unchangedRe.FindStringSubmatch(out); m == nil || m[1] != "3" {
		t.Errorf("second backup did not reuse the 3 unchanged files from the first:\n%s", out)
	}
	if left := snapLeft(t, e.mnt); len(left) != 0 {
		t.Errorf("snapshots left: %v", left)
	}
}

// A backup that fails after the snapshot was made (the repository breaks in
// the window) writes no snapshot, removes the btrfs snapshot and resumes.
func TestFreezeSnapshotBackupErrorRemovesSnapshot(t *testing.T) {
	e := startSnapEnv(t, 512<<20, false)
	if code, out, errs := e.backup(context.Background(), append(e.hooks(""), "--freeze", "snapshot")...); code != exitOK {
		t.Fatalf("first backup: exit %d\n%s%s", code, out, errs) // makes packs/
	}
	args := append(e.hooks(` && mv "$STASIS_REPO/packs" "$STASIS_REPO/packs.moved" && touch "$STASIS_REPO/packs"`), "--freeze", "snapshot")
	code, out, errs := e.backup(context.Background(), args...)
	if code != exitFatal || !strings.Contains(errs, "packs") || !strings.Contains(errs, "stasis: snapshotting "+e.svc+" (btrfs; ") {
		t.Fatalf("exit %d, want 1 after the snapshot was made, naming packs\n%s%s", code, out, errs)
	}
	if !strings.Contains(errs, "stasis: resume hook: ") {
		t.Errorf("resume hook did not run:\n%s", errs)
	}
	e.wantRunning(t)
	if left := snapLeft(t, e.mnt); len(left) != 0 {
		t.Errorf("snapshots left after the failed backup: %v", left)
	}
	os.Remove(filepath.Join(e.repo, "packs"))
	os.Rename(filepath.Join(e.repo, "packs.moved"), filepath.Join(e.repo, "packs"))
	if n := len(snapshots(t, e.repo)); n != 1 {
		t.Errorf("%d snapshots in the repository, want only the first backup's", n)
	}
}

// The built binary is SIGKILLed while it reads a file from the snapshot:
// the snapshot stays behind, and the next backup removes it and says so.
func TestFreezeSnapshotKilledRunLeftoverRemoved(t *testing.T) {
	e := startSnapEnv(t, 768<<20, false)
	// 128 MiB of incompressible data: reading it from the snapshot takes a
	// while, long enough to see the binary holding it open.
	big := filepath.Join(e.svc, "data", "blob.bin")
	if err := os.Mkdir(filepath.Dir(big), 0o755); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 128<<20)
	rng := rand.NewChaCha8([32]byte{14})
	rng.Read(buf)
	if err := os.WriteFile(big, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "stasis")
	if out, err := exec.Command(goTool(), "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, append(append([]string{"backup", "--repo", e.repo}, e.hooks("")...), "--freeze", "snapshot", e.svc)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	fdDir := fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid)
	deadline := time.Now().Add(2 * time.Minute)
	var reading string
	for reading == "" {
		select {
		case err := <-done:
			t.Fatalf("stasis ended (%v) before it was seen reading from the snapshot\n%s", err, &stderr)
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("stasis was not seen reading from a snapshot in 2 minutes\n%s", &stderr)
		}
		ents, _ := os.ReadDir(fdDir)
		for _, ent := range ents {
			if l, err := os.Readlink(filepath.Join(fdDir, ent.Name())); err == nil &&
				strings.Contains(l, "/.stasis-snapshots/stasis-snap-") && !strings.HasSuffix(l, ".lock") && strings.HasSuffix(l, "/data/blob.bin") {
				reading = l
			}
		}
		time.Sleep(time.Millisecond) // polling /proc, not waiting for time to pass
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("stasis: %v, want killed", err)
	}
	left := snapLeft(t, e.mnt)
	if len(left) != 1 {
		t.Fatalf("after SIGKILL while reading %s: snapshots %v, want one left behind", reading, left)
	}
	e.wantRunning(t) // resumed before the backup read the snapshot
	leftover := reading[:strings.Index(reading, "/data/blob.bin")]

	code, out, errs := e.backup(context.Background(), append(e.hooks(""), "--freeze", "snapshot")...)
	if code != exitOK {
		t.Fatalf("next backup: exit %d\n%s%s", code, out, errs)
	}
	want := "removed btrfs snapshot " + leftover + ", left by a stasis run that died"
	if !strings.Contains(errs, "stasis: "+want) || !strings.Contains(errs, "warning: "+want) || !strings.Contains(out, "1 warning") {
		t.Errorf("next backup did not report removing %s:\n%s%s", leftover, out, errs)
	}
	if w, _ := quiesceOf(t, e.repo)["warnings"].([]any); len(w) != 1 || !strings.Contains(fmt.Sprint(w[0]), want) {
		t.Errorf("snapshot's warnings %v, want the removal", w)
	}
	if left := snapLeft(t, e.mnt); len(left) != 0 {
		t.Errorf("snapshots left: %v", left)
	}
	if locks, _ := filepath.Glob(filepath.Join(e.svc, ".stasis-snapshots", "*")); len(locks) != 0 {
		t.Errorf("left in the snapshot directory: %v", locks)
	}
	e.wantRunning(t)
}

// SIGTERM (systemctl stop) reaching the built binary after the snapshot was
// made cancels the backup: no snapshot in the repository, the btrfs
// snapshot removed, the service running.
func TestFreezeSnapshotSIGTERMRemovesSnapshot(t *testing.T) {
	e := startSnapEnv(t, 512<<20, false)
	bin := filepath.Join(t.TempDir(), "stasis")
	if out, err := exec.Command(goTool(), "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	hooks := e.hooks("")
	hooks[3] += " && kill -TERM $PPID" // the resume hook runs once the snapshot exists
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(append([]string{"backup", "--repo", e.repo}, hooks...), "--freeze", "snapshot", e.svc)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitFatal {
		t.Fatalf("stasis: %v, want exit 1\n%s", err, &stderr)
	}
	if !strings.Contains(stderr.String(), "stasis: snapshotting "+e.svc+" (btrfs; ") || !strings.Contains(stderr.String(), "terminated signal received") {
		t.Errorf("not cancelled after the snapshot was made:\n%s", &stderr)
	}
	e.wantRunning(t)
	if left := snapLeft(t, e.mnt); len(left) != 0 {
		t.Errorf("snapshots left after SIGTERM: %v", left)
	}
	if n := len(snapshots(t, e.repo)); n != 0 {
		t.Errorf("%d snapshots written, want none", n)
	}
}

// Where no snapshot backend applies (here the test's temporary directory,
// not btrfs), the backup fails before the quiesce hook runs.
func TestFreezeSnapshotNotBtrfsFailsBeforeQuiesce(t *testing.T) {
	t.Setenv("STASIS_STATE_DIR", t.TempDir())
	e := startZoom(t, "", 64)
	var fs syscall.Statfs_t
	if err := syscall.Statfs(e.dir, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type == 0x9123683e {
		t.Skipf("%s is on btrfs: this test needs another filesystem", e.dir)
	}
	marker := filepath.Join(t.TempDir(), "quiesce-ran")
	for _, extra := range [][]string{nil, {"--snapshot-backend", "btrfs"}} {
		args := append([]string{"--quiesce", "touch " + marker, "--resume", "true", "--freeze", "snapshot"}, extra...)
		code, out, errs := e.backup(context.Background(), nil, args...)
		if code != exitFatal || !strings.Contains(errs, e.dir+"/") || !strings.Contains(errs, "not btrfs") ||
			!strings.Contains(errs, "use --freeze reflink, copy or stop") {
			t.Fatalf("%v: exit %d, want 1 naming the path, its filesystem and the other modes\n%s%s", extra, code, out, errs)
		}
		if fileExists(marker) || strings.Contains(errs, "quiesce hook:") {
			t.Fatalf("%v: the quiesce hook ran:\n%s", extra, errs)
		}
	}
	e.wantRunning(t)
}

func TestFreezeSnapshotUsageErrors(t *testing.T) {
	repoDir := filepath.Join(t.TempDir(), "repo")
	dir := t.TempDir()
	for _, args := range [][]string{
		{"--quiesce", "true", "--snapshot-backend", "btrfs"},
		{"--quiesce", "true", "--freeze", "reflink", "--snapshot-backend", "btrfs"},
		{"--quiesce", "true", "--freeze", "snapshot", "--snapshot-backend", "lvm"},
		{"--quiesce", "true", "--freeze", "snapshot", "--staging", dir},
		{"--snapshot-backend", "btrfs"},
	} {
		code, _, errs := runStasis(context.Background(), nil, append(append([]string{"backup", "--repo", repoDir}, args...), dir)...)
		if code != exitUsage || !strings.Contains(errs, "--s") {
			t.Errorf("%v: exit %d, want 2\n%s", args, code, errs)
		}
	}
}
