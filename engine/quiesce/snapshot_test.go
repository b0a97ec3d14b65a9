package quiesce

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stasisbackup/stasis/cmd/zoomsim/zdb"
	"github.com/stasisbackup/stasis/internal/loopfs"
	"github.com/stasisbackup/stasis/internal/zoomsimtest"
)

// btrfsCmd runs the btrfs tool with args and returns its output; it fails t
// when the tool fails.
func btrfsCmd(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("btrfs", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("btrfs %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// stasisSnapshots lists the subvolumes of the filesystem at mnt that are
// stasis snapshots (btrfs subvolume list), and the entries of every
// .stasis-snapshots directory under mnt.
func stasisSnapshots(t testing.TB, mnt string) []string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(btrfsCmd(t, "subvolume", "list", mnt), "\n") {
		if strings.Contains(line, snapshotPrefix) {
			out = append(out, line)
		}
	}
	err := filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if filepath.Base(filepath.Dir(p)) == SnapshotDirName {
			out = append(out, p)
			if d.IsDir() {
				return filepath.SkipDir // a snapshot: not its contents
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// txService is a zoomsim whose quiesce hook output tells the last
// transaction committed before the quiesce.
type txService struct {
	*env
	log    *syncBuf
	logPth string
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuf) Write(p []byte) (int, error) { w.mu.Lock(); defer w.mu.Unlock(); return w.b.Write(p) }
func (w *syncBuf) String() string              { w.mu.Lock(); defer w.mu.Unlock(); return w.b.String() }

var pausedRe = regexp.MustCompile(`paused transactions=\d+ last_tx=(\d+)`)

// quiescedTx is the last transaction zoomsim had committed when the quiesce
// hook paused it (from the hook's output).
func (s *txService) quiescedTx(t testing.TB) uint64 {
	t.Helper()
	m := pausedRe.FindStringSubmatch(s.log.String())
	if m == nil {
		t.Fatalf("no pause reply in the hook output:\n%s", s.log)
	}
	n, _ := strconv.ParseUint(m[1], 10, 64)
	return n
}

// lastTx returns the transaction id of the live service (zoomsim status).
func lastTx(t testing.TB, svc *zoomsimtest.Service) uint64 {
	t.Helper()
	out, err := svc.Ctl("status")
	if err != nil {
		t.Fatalf("zoomsim status: %v: %s", err, out)
	}
	var state string
	var n, last uint64
	if _, err := fmt.Sscanf(out, "%s transactions=%d last_tx=%d", &state, &n, &last); err != nil {
		t.Fatalf("zoomsim status %q: %v", out, err)
	}
	return last
}

// logLastTx returns the tx= of the last line of a zoomsim log.
func logLastTx(t testing.TB, path string) uint64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var last uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if _, rest, ok := strings.Cut(sc.Text(), " tx="); ok {
			id, _, _ := strings.Cut(rest, " ")
			last, _ = strconv.ParseUint(id, 10, 64)
		}
	}
	return last
}

// snapshotTree is a service tree on btrfs: subvolume mnt/svc holding
// zoomserv/X500.db (zoomsim, written continuously), logs/X500.log and a
// nested subvolume etc/ with the config; the backup path is mnt/svc.
func snapshotTree(t *testing.T, args ...string) (*txService, string) {
	mnt := loopfs.Btrfs(t, "freeze snapshot test", 512<<20)
	svc := filepath.Join(mnt, "svc")
	btrfsCmd(t, "subvolume", "create", svc)
	btrfsCmd(t, "subvolume", "create", filepath.Join(svc, "etc"))
	for _, d := range []string{"zoomserv", "logs"} {
		if err := os.Mkdir(filepath.Join(svc, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(svc, "etc", "zoomserv.conf"), []byte("suffix = o=Zoomserv\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(svc, "logs", "X500.log")
	e := setup(t, filepath.Join(svc, "zoomserv"), append([]string{"--log", logPath}, args...)...)
	e.opts.Paths = []string{svc}
	e.opts.Freeze = FreezeSnapshot
	s := &txService{env: e, log: &syncBuf{}, logPth: logPath}
	e.opts.Log = s.log
	return s, mnt
}

// The state read from the snapshot is the service's at the quiesce point:
// every transaction committed before the pause, none of those the running
// service committed after the resume, although the backup reads after them.
func TestSnapshotModeReadsTheQuiescePoint(t *testing.T) {
	s, mnt := snapshotTree(t, "--close-on-pause")
	svc := s.opts.Paths[0]
	conf := filepath.Join(svc, "etc", "zoomserv.conf")
	rep, err := Run(context.Background(), s.opts, func(ctx context.Context, st *Stage) error {
		s.wantState(t, "running") // resumed before the capture
		T := s.quiescedTx(t)
		for lastTx(t, s.svc) <= T {
			// The service writes continuously once resumed: wait for one
			// transaction after the quiesce point.
		}
		if st.Freeze != FreezeSnapshot || !st.Quiesced(s.db) || !st.Quiesced(conf) {
			t.Errorf("stage %s, quiesced db %v conf %v", st.Freeze, st.Quiesced(s.db), st.Quiesced(conf))
		}
		for _, f := range []string{s.db, s.logPth, conf} {
			if p := st.Path(f); !strings.Contains(p, "/"+SnapshotDirName+"/"+snapshotPrefix) {
				t.Errorf("%s is read from %s, not from a snapshot", f, p)
			}
		}
		stats, err := zdb.Scan(st.Path(s.db))
		if err != nil {
			return err
		}
		if stats.MaxTxID != T {
			t.Errorf("snapshot's X500.db holds transactions up to %d, want %d (the last before the quiesce)", stats.MaxTxID, T)
		}
		if got := logLastTx(t, st.Path(s.logPth)); got != T {
			t.Errorf("snapshot's X500.log ends at tx %d, want %d", got, T)
		}
		if live := logLastTx(t, s.logPth); live <= T {
			t.Errorf("live log ends at tx %d, want after %d", live, T)
		}
		if b, err := os.ReadFile(st.Path(conf)); err != nil || string(b) != "suffix = o=Zoomserv\n" {
			t.Errorf("config in the snapshot: %q, %v", b, err)
		}
		if n := len(stasisSnapshots(t, mnt)); n != 6 { // two subvolumes, each listed, and each with its lock file
			t.Errorf("%d snapshot entries while capturing, want 6: %v", n, stasisSnapshots(t, mnt))
		}
		if r := st.Report(); r.Snapshot == nil || r.DowntimeSeconds <= 0 {
			t.Errorf("report for the snapshot: %+v", r)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, s.log)
	}
	s.wantState(t, "running")
	if rep.Freeze != FreezeSnapshot || rep.Snapshot == nil || rep.Snapshot.Backend != "btrfs" ||
		len(rep.Snapshot.Volumes) != 2 || rep.Snapshot.Volumes[0] != svc || rep.Snapshot.Volumes[1] != filepath.Join(svc, "etc") ||
		rep.Snapshot.CreateSeconds <= 0 || rep.Snapshot.CreateSeconds > rep.DowntimeSeconds || len(rep.Warnings) != 0 {
		t.Fatalf("report %+v, snapshot %+v", rep, rep.Snapshot)
	}
	if left := stasisSnapshots(t, mnt); len(left) != 0 {
		t.Fatalf("snapshots left after Run: %v", left)
	}
}

// The snapshot is removed when the capture fails, when the context is
// cancelled in it (Ctrl-C, SIGTERM), and when it panics.
func TestSnapshotRemovedOnFailure(t *testing.T) {
	s, mnt := snapshotTree(t, "--close-on-pause")
	for _, tc := range []struct {
		name    string
		capture func(ctx context.Context, cancel context.CancelFunc) error
		want    string
	}{
		{"capture error", func(context.Context, context.CancelFunc) error { return errors.New("repository broke") }, "repository broke"},
		{"cancelled", func(ctx context.Context, cancel context.CancelFunc) error { cancel(); return ctx.Err() }, "context canceled"},
		{"panic", func(context.Context, context.CancelFunc) error { panic("a bug in capture") }, "a bug in capture"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var during []string
			err := func() (err error) {
				defer func() {
					if p := recover(); p != nil {
						err = fmt.Errorf("panic: %v", p)
					}
				}()
				_, err = Run(ctx, s.opts, func(ctx context.Context, st *Stage) error {
					during = stasisSnapshots(t, mnt)
					return tc.capture(ctx, cancel)
				})
				return err
			}()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run: %v, want %q", err, tc.want)
			}
			if len(during) == 0 {
				t.Fatal("no snapshot existed during the capture")
			}
			if left := stasisSnapshots(t, mnt); len(left) != 0 {
				t.Fatalf("snapshots left after %s: %v", tc.name, left)
			}
			s.wantState(t, "running")
		})
	}
}

// A snapshot and lock file left by a run that died are removed by the next
// run, which says so; a live run's snapshot (its lock held) is left alone.
func TestSnapshotLeftoversOfDeadRunsRemoved(t *testing.T) {
	s, mnt := snapshotTree(t, "--close-on-pause")
	svc := s.opts.Paths[0]
	dir := filepath.Join(svc, SnapshotDirName)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(dir, snapshotPrefix+"999999-20260101T000000")
	alive := filepath.Join(dir, snapshotPrefix+"999998-20260101T000000")
	for _, p := range []string{dead, alive} {
		if _, err := (btrfs{}).Create(context.Background(), svc, p); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(dead+".lock", nil, 0o600) // its run died: nobody holds it
	lock, err := os.Create(alive + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), s.opts, func(ctx context.Context, st *Stage) error {
		if st.Quiesced(filepath.Join(alive, "zoomserv", "X500.db")) {
			t.Error("a live run's snapshot is among the quiesced files")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "removed btrfs snapshot "+dead) ||
		!strings.Contains(s.log.String(), "removed btrfs snapshot "+dead) {
		t.Fatalf("warnings %q, want one about %s", rep.Warnings, dead)
	}
	if fileExists(dead) || fileExists(dead+".lock") || !fileExists(alive) {
		t.Fatalf("dead snapshot there: %v, live one there: %v", fileExists(dead), fileExists(alive))
	}
	lock.Close()
	if err := (btrfs{}).Remove(context.Background(), svc, alive); err != nil {
		t.Fatal(err)
	}
	os.Remove(alive + ".lock")
	if left := stasisSnapshots(t, mnt); len(left) != 0 {
		t.Fatalf("snapshots left: %v", left)
	}
}

// On a filesystem no backend can snapshot, Run fails before the quiesce
// hook: the service was never stopped.
func TestSnapshotNoBackendFailsBeforeQuiesce(t *testing.T) {
	dir := t.TempDir()
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		t.Fatal(err)
	}
	if sfs.Type == unix.BTRFS_SUPER_MAGIC {
		t.Skipf("%s is on btrfs; this test needs another filesystem", dir)
	}
	db := filepath.Join(dir, "X500.db")
	os.WriteFile(db, []byte("data"), 0o600)
	marker := filepath.Join(t.TempDir(), "quiesced")
	for _, backend := range []string{"", "btrfs"} {
		rep, err := Run(context.Background(), Options{Paths: []string{dir}, Freeze: FreezeSnapshot, SnapshotBackend: backend,
			Quiesce: "touch " + marker, Resume: "rm -f " + marker}, func(context.Context, *Stage) error {
			t.Error("capture ran")
			return nil
		})
		if !errors.Is(err, ErrNoSnapshotBackend) || !strings.Contains(err.Error(), db) ||
			!strings.Contains(err.Error(), FSName(sfs.Type)) || !strings.Contains(err.Error(), "--freeze reflink, copy or stop") {
			t.Fatalf("backend %q: error %v: want one naming %s, %s and the other modes", backend, err, db, FSName(sfs.Type))
		}
		if fileExists(marker) || len(rep.Hooks) != 0 {
			t.Fatalf("the quiesce hook ran (hooks %v)", rep.Hooks)
		}
	}
	if _, err := Run(context.Background(), Options{Paths: []string{dir}, Freeze: FreezeSnapshot, SnapshotBackend: "lvm"}, nil); err == nil ||
		!strings.Contains(err.Error(), `snapshot backend "lvm": want one of btrfs`) {
		t.Fatalf("unknown backend: %v", err)
	}
}

// Another filesystem mounted inside the snapshotted subvolume is not in the
// snapshot: it is read live, and Run says so.
func TestSnapshotOtherMountInsideIsReadLive(t *testing.T) {
	s, _ := snapshotTree(t, "--close-on-pause")
	svc := s.opts.Paths[0]
	inner := filepath.Join(svc, "cache")
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "tmpfs", inner).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", inner).Run() })
	f := filepath.Join(inner, "state")
	os.WriteFile(f, []byte("cached"), 0o644)
	s.opts.QuiescePaths = []string{"X500.db"}
	rep, err := Run(context.Background(), s.opts, func(ctx context.Context, st *Stage) error {
		if st.Path(f) != f || st.Roots()[inner] != inner {
			t.Errorf("%s read from %s (roots %v), want live", f, st.Path(f), st.Roots())
		}
		if st.Path(s.db) == s.db {
			t.Errorf("%s read live", s.db)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], inner+" is another filesystem mounted inside "+svc) {
		t.Fatalf("warnings %q", rep.Warnings)
	}
}
