package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stasisbackup/stasis/cmd/zoomsim/zdb"
	"github.com/stasisbackup/stasis/internal/loopfs"
	"github.com/stasisbackup/stasis/internal/zoomsimtest"
	"github.com/stasisbackup/stasis/repo/crypto"
	"golang.org/x/sys/unix"
)

// lockedBuf is an io.Writer safe for hook output copied from other
// goroutines; onLine, when set, sees every complete line as it is written.
type lockedBuf struct {
	mu     sync.Mutex
	b      bytes.Buffer
	part   string
	onLine func(string)
}

func (w *lockedBuf) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b.Write(p)
	if w.onLine != nil {
		w.part += string(p)
		for {
			i := strings.IndexByte(w.part, '\n')
			if i < 0 {
				break
			}
			w.onLine(w.part[:i])
			w.part = w.part[i+1:]
		}
	}
	return len(p), nil
}

func (w *lockedBuf) String() string { w.mu.Lock(); defer w.mu.Unlock(); return w.b.String() }

// zoomEnv is a running zoomsim on dir/X500.db, a conf file beside it, and an
// initialised (encrypted) repository.
type zoomEnv struct {
	bin, dir, db, repo string
	svc                *zoomsimtest.Service
}

// startZoom runs zoomsim with pages pages of 4 KiB in dir (a temp dir when
// ""), and inits a repository.
func startZoom(t testing.TB, dir string, pages int, args ...string) *zoomEnv {
	t.Helper()
	t.Setenv("STASIS_PASSWORD", "quiesce test password")
	t.Setenv("STASIS_REPO", "")
	kdf := newKDF
	newKDF = func() crypto.KDFParams { return crypto.TestKDFParams } // key files that open fast
	t.Cleanup(func() { newKDF = kdf })
	bin := zoomsimtest.Build(t)
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "zoomserv")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "zoomserv.conf"), []byte("suffix = o=Zoomserv\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := &zoomEnv{bin: bin, dir: dir, db: filepath.Join(dir, "X500.db"), repo: filepath.Join(t.TempDir(), "repo")}
	e.svc = zoomsimtest.Start(t, bin, e.db, append([]string{"--pages", fmt.Sprint(pages)}, args...)...)
	// Files written in the first backup's start second are re-read by the
	// next one (by design); these two are static, so date them back.
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, p := range []string{filepath.Join(dir, "zoomserv.conf"), e.db + ".pid"} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if code, out, errs := runStasis(context.Background(), nil, "init", "--repo", e.repo); code != 0 {
		t.Fatalf("stasis init: exit %d\n%s%s", code, out, errs)
	}
	return e
}

// hooks returns --quiesce and --resume flags that pause and resume zoomsim;
// extra is appended to the quiesce command (e.g. " && false").
func (e *zoomEnv) hooks(extra string) []string {
	return []string{"--quiesce", fmt.Sprintf("%s pause --db %s%s", e.bin, e.db, extra),
		"--resume", fmt.Sprintf("%s resume --db %s", e.bin, e.db)}
}

func (e *zoomEnv) wantRunning(t testing.TB) {
	t.Helper()
	if state, _ := e.svc.State(t); state != "running" {
		t.Fatalf("zoomsim is %s after the backup, want running", state)
	}
}

// backup runs `stasis backup --repo REPO args... DIR` in-process.
func (e *zoomEnv) backup(ctx context.Context, stderr *lockedBuf, args ...string) (int, string, string) {
	return runStasis(ctx, stderr, append(append([]string{"backup", "--repo", e.repo}, args...), e.dir)...)
}

func runStasis(ctx context.Context, stderr *lockedBuf, args ...string) (int, string, string) {
	if stderr == nil {
		stderr = &lockedBuf{}
	}
	var out bytes.Buffer
	code := run(ctx, args, strings.NewReader(""), &out, stderr)
	return code, out.String(), stderr.String()
}

// snapshots returns `stasis snapshots --json` of repoDir.
func snapshots(t testing.TB, repoDir string) []map[string]any {
	t.Helper()
	code, out, errs := runStasis(context.Background(), nil, "snapshots", "--json", "--repo", repoDir)
	if code != 0 {
		t.Fatalf("stasis snapshots: exit %d: %s", code, errs)
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("snapshots --json: %v\n%s", err, out)
	}
	return list
}

// quiesceOf returns the latest snapshot's quiesce object.
func quiesceOf(t testing.TB, repoDir string) map[string]any {
	t.Helper()
	list := snapshots(t, repoDir)
	if len(list) == 0 {
		t.Fatal("no snapshot")
	}
	q, ok := list[len(list)-1]["quiesce"].(map[string]any)
	if !ok {
		t.Fatalf("snapshot has no quiesce object: %v", list[len(list)-1])
	}
	return q
}

func TestLiveDBWithoutQuiesceExits3(t *testing.T) {
	e := startZoom(t, "", 8192) // 32 MiB: reading it overlaps many transactions
	for attempt := 1; ; attempt++ {
		repoDir := filepath.Join(t.TempDir(), "repo")
		runStasis(context.Background(), nil, "init", "--repo", repoDir)
		code, out, errs := runStasis(context.Background(), nil, "backup", "--repo", repoDir, "--retries", "0", e.dir)
		if code == exitIncomplete {
			if !strings.Contains(errs, e.db) || !strings.Contains(errs, "changed") {
				t.Fatalf("exit 3 without naming %s as changed:\n%s", e.db, errs)
			}
			sn := snapshots(t, repoDir)
			if len(sn) != 1 || sn[0]["complete"] != false || sn[0]["quiesce"] != nil {
				t.Fatalf("snapshot: %v, want one incomplete snapshot without a quiesce object", sn)
			}
			return
		}
		if code != exitOK || attempt == 5 {
			t.Fatalf("attempt %d: exit %d, want 3 (X500.db changed while read)\n%s%s", attempt, code, out, errs)
		}
		// Not a single transaction overlapped the read this time: try again.
	}
}

// checkQuiescedSnapshot asserts a clean quiesced backup of e: exit 0, the
// snapshot's quiesce object, a consistent restored X500.db, zoomsim running.
func checkQuiescedSnapshot(t *testing.T, e *zoomEnv, freeze string, code int, out, errs string) {
	t.Helper()
	if code != exitOK {
		t.Fatalf("backup: exit %d\n%s%s", code, out, errs)
	}
	if !strings.Contains(out, "quiesce: "+freeze+",") || !strings.Contains(out, "0 warnings") {
		t.Errorf("no quiesce summary line for %s in:\n%s", freeze, out)
	}
	if !strings.Contains(errs, "stasis: quiesce hook: ") || !strings.Contains(errs, "stasis: resume hook: ") {
		t.Errorf("hooks not logged on stderr:\n%s", errs)
	}
	e.wantRunning(t)
	q := quiesceOf(t, e.repo)
	if q["freeze"] != freeze || q["freeze_requested"] != freeze {
		t.Errorf("quiesce.freeze %v (requested %v), want %s", q["freeze"], q["freeze_requested"], freeze)
	}
	if d, _ := q["downtime_seconds"].(float64); d <= 0 || d > 60 {
		t.Errorf("quiesce.downtime_seconds = %v", q["downtime_seconds"])
	}
	if w, ok := q["warnings"].([]any); !ok || len(w) != 0 {
		t.Errorf("quiesce.warnings = %v, want []", q["warnings"])
	}
	if n, _ := q["quiesced_files"].(float64); n != 2 { // X500.db and X500.log
		t.Errorf("quiesce.quiesced_files = %v, want 2", q["quiesced_files"])
	}
	hooks, _ := q["hooks"].([]any)
	if len(hooks) != 2 {
		t.Fatalf("quiesce.hooks = %v, want quiesce and resume", q["hooks"])
	}
	for _, h := range hooks {
		if h.(map[string]any)["exit_status"] != 0.0 {
			t.Errorf("hook %v did not exit 0", h)
		}
	}
	target := t.TempDir()
	if code, out, errs := runStasis(context.Background(), nil, "restore", "latest", "--repo", e.repo, "--target", target); code != 0 {
		t.Fatalf("restore: exit %d\n%s%s", code, out, errs)
	}
	if err := zdb.Check(filepath.Join(target, e.db)); err != nil {
		t.Fatalf("restored X500.db: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(target, e.dir, "zoomserv.conf")); err != nil || string(b) != "suffix = o=Zoomserv\n" {
		t.Errorf("restored zoomserv.conf: %q, %v", b, err)
	}
}

func TestQuiescedBackupStopAndCopy(t *testing.T) {
	for _, freeze := range []string{"stop", "copy"} {
		t.Run(freeze, func(t *testing.T) {
			e := startZoom(t, "", 4096, "--close-on-pause") // 16 MiB
			args := append(e.hooks(""), "--freeze", freeze, "--quiesce-path", "X500.db", "--quiesce-path", "X500.log", "--retries", "0")
			if freeze == "copy" {
				args = append(args, "--staging", t.TempDir())
			}
			code, out, errs := e.backup(context.Background(), nil, args...)
			checkQuiescedSnapshot(t, e, freeze, code, out, errs)
			// A second, incremental run: the db changed, the conf did not.
			code, out, errs = e.backup(context.Background(), nil, args...)
			checkQuiescedSnapshot(t, e, freeze, code, out, errs)
			if !strings.Contains(out, "2 changed, 2 unchanged") { // the conf and the pid file
				t.Errorf("second backup re-read zoomserv.conf:\n%s", out)
			}
		})
	}
}

func TestQuiescedBackupReflink(t *testing.T) {
	mnt := loopfs.Reflink(t, "reflink test", 320<<20)
	// Started first so that zoomsim is stopped before the unmount.
	e := startZoom(t, filepath.Join(mnt, "zoomserv"), 4096, "--close-on-pause")
	args := append(e.hooks(""), "--freeze", "reflink", "--quiesce-path", "X500.db", "--quiesce-path", "X500.log", "--staging", mnt)
	code, out, errs := e.backup(context.Background(), nil, args...)
	checkQuiescedSnapshot(t, e, "reflink", code, out, errs)
	if left, _ := filepath.Glob(filepath.Join(mnt, "stasis-stage-*")); len(left) != 0 {
		t.Errorf("staging directories left behind: %v", left)
	}
}

func TestQuiescedBackupFailuresResume(t *testing.T) {
	e := startZoom(t, "", 1024) // keeps X500.db open while paused
	notDir := filepath.Join(t.TempDir(), "not-a-dir")
	os.WriteFile(notDir, nil, 0o600)
	for _, tc := range []struct {
		name   string
		args   []string
		want   string // in stderr
		hooked bool   // the quiesce hook ran (so resume must have)
	}{
		{"failing quiesce hook", e.hooks(" && false"), "quiesce hook failed", true},
		{"hung quiesce hook", append(e.hooks(" && exec sleep 60"), "--hook-timeout", "300ms"), "timed out", true},
		{"open writer with --on-open fail", append(e.hooks(""), "--on-open", "fail"), "still open for writing", true},
		// Checked before the service is stopped: the hooks never run.
		{"staging fails", append(e.hooks(""), "--freeze", "copy", "--staging", notDir), "staging directory", false},
		{"repository breaks in the window", e.hooks(` && mv "$STASIS_REPO/packs" "$STASIS_REPO/packs.moved" && touch "$STASIS_REPO/packs"`), "packs", true},
		{"missing path", append(e.hooks(""), filepath.Join(e.dir, "missing")), "does not exist", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(snapshots(t, e.repo))
			code, out, errs := e.backup(context.Background(), nil, tc.args...)
			if code != exitFatal || !strings.Contains(errs, tc.want) {
				t.Fatalf("exit %d, want 1 with %q in stderr\n%s%s", code, tc.want, out, errs)
			}
			if got := strings.Contains(errs, "stasis: resume hook: "); got != tc.hooked {
				t.Errorf("resume hook ran: %v, want %v\n%s", got, tc.hooked, errs)
			}
			e.wantRunning(t)
			if after := len(snapshots(t, e.repo)); after != before {
				t.Errorf("%d snapshots written, want none", after-before)
			}
		})
		os.RemoveAll(filepath.Join(e.repo, "packs"))
		os.Rename(filepath.Join(e.repo, "packs.moved"), filepath.Join(e.repo, "packs"))
	}
}

// A signal in the window reaches run as a cancelled context (main's
// signal.NotifyContext): cancel as soon as the stop window opens.
func TestCancelInWindowResumes(t *testing.T) {
	e := startZoom(t, "", 1024, "--close-on-pause")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr := &lockedBuf{onLine: func(line string) {
		if strings.HasPrefix(line, "stasis: quiesced; capturing") {
			cancel()
		}
	}}
	code, out, errs := e.backup(ctx, stderr, e.hooks("")...)
	if code != exitFatal || !strings.Contains(errs, "context canceled") || !strings.Contains(errs, "stasis: resume hook: ") {
		t.Fatalf("exit %d, want 1 after the resume hook\n%s%s", code, out, errs)
	}
	e.wantRunning(t)
	if n := len(snapshots(t, e.repo)); n != 0 {
		t.Errorf("%d snapshots written, want none", n)
	}
}

// The real binary gets SIGTERM from its own quiesce hook, while the
// service is paused.
func TestSIGTERMInWindowResumes(t *testing.T) {
	e := startZoom(t, "", 1024, "--close-on-pause")
	bin := filepath.Join(t.TempDir(), "stasis")
	if out, err := exec.Command(goTool(), "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(append([]string{"backup", "--repo", e.repo}, e.hooks(` && kill -TERM $PPID && exec sleep 60`)...), e.dir)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitFatal {
		t.Fatalf("stasis: %v, want exit 1\n%s", err, &stderr)
	}
	if !strings.Contains(stderr.String(), "stasis: resume hook: ") {
		t.Fatalf("resume hook did not run:\n%s", &stderr)
	}
	e.wantRunning(t)
	if n := len(snapshots(t, e.repo)); n != 0 {
		t.Errorf("%d snapshots written, want none", n)
	}
}

func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestQuiesceUsageErrors(t *testing.T) {
	t.Setenv("STASIS_PASSWORD", "x")
	dir := t.TempDir()
	badProfile := filepath.Join(dir, "bad.toml")
	os.WriteFile(badProfile, []byte("repository = \"/r\"\npaths = [\"/srv\"]\nfreez = \"stop\"\n"), 0o600)
	for _, args := range [][]string{
		{"--resume", "true", dir},
		{"--freeze", "copy", dir},
		{"--on-open", "fail", dir},
		{"--quiesce-path", "*.db", dir},
		{"--hook-timeout", "1s", dir},
		{"--quiesce", "true", "--freeze", "freeze-dry", dir},
		{"--quiesce", "true", "--on-open", "ignore", dir},
		{"--quiesce", "true", "--staging", dir, dir},
		{"--quiesce", "true", "--hook-timeout", "-1s", dir},
		{"--quiesce", "true", "--quiesce-path", "[", dir},
		{"--quiesce", "true", "--hook-timeout", "soon", dir},
		{"--profile", badProfile},
		{"--profile", filepath.Join(dir, "missing.toml")},
	} {
		code, _, errs := runStasis(context.Background(), nil, append([]string{"backup", "--repo", filepath.Join(dir, "repo")}, args...)...)
		if code != exitUsage {
			t.Errorf("backup %v: exit %d, want 2\n%s", args, code, errs)
		}
	}
}

func TestBackupProfile(t *testing.T) {
	e := startZoom(t, "", 1024, "--close-on-pause")
	prof := filepath.Join(t.TempDir(), "zoomserv.toml")
	fmt.Fprintf(mustCreate(t, prof), `repository = %q
paths = [%q]
tags = ["daily"]
quiesce = "%s pause --db %s"
resume = "%s resume --db %s"
hook_timeout = "30s"
freeze = "copy"
staging = %q
quiesce_paths = ["X500.db", "X500.log"]
on_open = "fail"
`, e.repo, e.dir, e.bin, e.db, e.bin, e.db, t.TempDir())
	t.Setenv("STASIS_REPO", filepath.Join(t.TempDir(), "elsewhere")) // the profile wins
	code, out, errs := runStasis(context.Background(), nil, "backup", "--profile", prof)
	checkQuiescedSnapshot(t, e, "copy", code, out, errs)
	if tags := snapshots(t, e.repo)[0]["tags"].([]any); len(tags) != 1 || tags[0] != "daily" {
		t.Errorf("tags %v, want [daily] from the profile", tags)
	}
	// Flags win over the profile: stop mode needs no staging directory.
	code, out, errs = runStasis(context.Background(), nil, "backup", "--profile", prof, "--freeze", "stop", "--staging", "", "--tag", "manual")
	if code != exitOK {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
	list := snapshots(t, e.repo)
	if q := quiesceOf(t, e.repo); q["freeze"] != "stop" || list[1]["tags"].([]any)[0] != "manual" {
		t.Errorf("flags did not override the profile: quiesce %v, tags %v", q, list[1]["tags"])
	}
}

func mustCreate(t *testing.T, p string) *os.File {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// BenchmarkDowntime measures how long the service is held still (quiesce
// start to resume end, as recorded in the snapshot) for each freeze mode on
// a live zoomsim database of 64 and 256 MiB. reflink runs on a loop-mounted
// XFS image when root, and is skipped otherwise. Each iteration is a full
// `stasis backup` into one repository (the first is the initial backup).
//
//	go test -bench Downtime -run '^$' -benchtime 3x ./cmd/stasis/
func BenchmarkDowntime(b *testing.B) {
	for _, mib := range []int{64, 256} {
		for _, freeze := range []string{"stop", "copy", "reflink"} {
			b.Run(fmt.Sprintf("%s/%dMiB", freeze, mib), func(b *testing.B) {
				dir := ""
				if freeze == "reflink" {
					dir = filepath.Join(loopfs.Reflink(b, "reflink benchmark", int64(mib)*3<<20), "zoomserv")
				}
				e := startZoom(b, dir, mib<<20/zdb.PageSize, "--close-on-pause")
				args := append(e.hooks(""), "--freeze", freeze, "--quiesce-path", "X500.db", "--quiesce-path", "X500.log")
				if freeze != "stop" {
					args = append(args, "--staging", filepath.Dir(e.dir))
				}
				var total, hooks float64
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					code, out, errs := e.backup(context.Background(), nil, args...)
					if code != exitOK {
						b.Fatalf("backup: exit %d\n%s%s", code, out, errs)
					}
					q := quiesceOf(b, e.repo)
					if q["freeze"] != freeze {
						b.Fatalf("freeze %v, want %s: %v", q["freeze"], freeze, q["warnings"])
					}
					total += q["downtime_seconds"].(float64)
					for _, h := range q["hooks"].([]any) {
						hooks += h.(map[string]any)["duration_seconds"].(float64)
					}
				}
				b.StopTimer()
				b.ReportMetric(total/float64(b.N)*1000, "downtime-ms/op")
				b.ReportMetric(hooks/float64(b.N)*1000, "hooks-ms/op")
				if n, err := extents(e.db); err == nil {
					b.ReportMetric(float64(n), "db-extents")
				}
			})
		}
	}
}

// A file written after it was staged and before the backup walked the tree
// must not be taken as unchanged by the next backup: the snapshot records
// the staged copy's mtime, not the original's newer one. The resume hook
// plays the service: it rewrites one byte in place and dates the file back,
// so size, ctime and the parent cutoff cannot give the write away.
func TestStagedFileWrittenAfterResumeIsReRead(t *testing.T) {
	t.Setenv("STASIS_PASSWORD", "quiesce test password")
	kdf := newKDF
	newKDF = func() crypto.KDFParams { return crypto.TestKDFParams }
	t.Cleanup(func() { newKDF = kdf })
	dir := filepath.Join(t.TempDir(), "svc")
	os.Mkdir(dir, 0o755)
	state := filepath.Join(dir, "state.txt")
	os.WriteFile(state, []byte("A state of the service\n"), 0o644)
	old := time.Date(2019, 1, 1, 0, 0, 0, 0, time.UTC)
	os.Chtimes(state, old, old)
	repoDir := filepath.Join(t.TempDir(), "repo")
	if code, _, errs := runStasis(context.Background(), nil, "init", "--repo", repoDir); code != 0 {
		t.Fatal(errs)
	}
	resume := fmt.Sprintf(`printf B | dd of=%q bs=1 count=1 conv=notrunc status=none && touch -d 2020-01-01T00:00:00Z %q`, state, state)
	code, out, errs := runStasis(context.Background(), nil, "backup", "--repo", repoDir, "--quiesce", "true",
		"--resume", resume, "--freeze", "copy", "--staging", t.TempDir(), dir)
	if code != 0 {
		t.Fatalf("quiesced backup: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs = runStasis(context.Background(), nil, "backup", "--repo", repoDir, dir); code != 0 {
		t.Fatalf("plain backup: exit %d\n%s%s", code, out, errs)
	}
	for i, want := range []string{"A state of the service\n", "B state of the service\n"} {
		target := t.TempDir()
		list := snapshots(t, repoDir)
		if code, out, errs := runStasis(context.Background(), nil, "restore", list[i]["id"].(string), "--repo", repoDir, "--target", target); code != 0 {
			t.Fatalf("restore: exit %d\n%s%s", code, out, errs)
		}
		if got, _ := os.ReadFile(filepath.Join(target, state)); string(got) != want {
			t.Errorf("snapshot %d: state.txt = %q, want %q", i+1, got, want)
		}
	}
}

// extents returns how many extents the file at p has (FS_IOC_FIEMAP with no
// room for them: the kernel only counts). Cloning costs per extent.
func extents(p string) (int, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	const fsIocFiemap = 0xC020660B // _IOWR('f', 11, struct fiemap)
	var fm [32]byte                // struct fiemap without extents
	binary.LittleEndian.PutUint64(fm[8:], ^uint64(0))
	binary.LittleEndian.PutUint32(fm[16:], 1) // FIEMAP_FLAG_SYNC
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&fm[0]))); e != 0 {
		return 0, e
	}
	return int(binary.LittleEndian.Uint32(fm[20:])), nil
}
