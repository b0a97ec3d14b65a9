package lock

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// syncBuffer is a goroutine-safe log that signals its first write.
type syncBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	first chan struct{}
	once  sync.Once
}

func newLog() *syncBuffer { return &syncBuffer{first: make(chan struct{})} }

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	defer b.once.Do(func() { close(b.first) })
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func acquire(t *testing.T, dir string, exclusive bool, opts Options) *Lock {
	t.Helper()
	l, err := Acquire(context.Background(), dir, exclusive, opts)
	if err != nil {
		t.Fatalf("Acquire(exclusive=%v): %v", exclusive, err)
	}
	t.Cleanup(func() { _ = l.Release() })
	return l
}

func wantLocked(t *testing.T, dir string, exclusive bool, opts Options) *LockedError {
	t.Helper()
	l, err := Acquire(context.Background(), dir, exclusive, opts)
	if err == nil {
		_ = l.Release()
		t.Fatalf("Acquire(exclusive=%v) succeeded, want ErrLocked", exclusive)
	}
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("Acquire(exclusive=%v) = %v, want ErrLocked", exclusive, err)
	}
	var le *LockedError
	if !errors.As(err, &le) {
		t.Fatalf("error %T is not a *LockedError", err)
	}
	return le
}

func countLocks(t *testing.T, dir string) int {
	t.Helper()
	ls, err := List(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(ls)
}

// writeLock writes a lock file as another process would have.
func writeLock(t *testing.T, dir string, i Info) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "locks"), 0o700); err != nil {
		t.Fatal(err)
	}
	if i.ID == "" {
		i.ID = fmt.Sprintf("planted-%d", i.PID)
	}
	i.Format, i.Version = Format, Version
	if i.Time.IsZero() {
		i.Time = time.Now().UTC()
	}
	if i.Refreshed.IsZero() {
		i.Refreshed = i.Time
	}
	if err := writeInfo(filepath.Join(dir, "locks"), i); err != nil {
		t.Fatal(err)
	}
}

func hostname(t *testing.T) string {
	t.Helper()
	h := selfProcess().host
	if h == "" {
		t.Skip("os.Hostname failed: cannot test same-host staleness")
	}
	return h
}

// deadPID starts `sleep`, kills it and reaps it, and returns its pid and
// start time.
func deadPID(t *testing.T) (int, uint64) {
	t.Helper()
	if _, err := exec.LookPath("sleep"); err != nil {
		t.Skip("sleep (coreutils) not found in PATH")
	}
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	_, start := procStat(pid)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if alive, _ := processAlive(pid); alive {
		t.Skipf("pid %d was reused at once", pid)
	}
	return pid, start
}

func TestSharedLocksCoexist(t *testing.T) {
	dir := t.TempDir()
	a := acquire(t, dir, false, Options{})
	acquire(t, dir, false, Options{})
	if n := countLocks(t, dir); n != 2 {
		t.Fatalf("%d locks, want 2", n)
	}
	if err := a.Release(); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if n := countLocks(t, dir); n != 1 {
		t.Fatalf("%d locks after release, want 1", n)
	}
}

func TestSharedBlocksExclusive(t *testing.T) {
	dir := t.TempDir()
	acquire(t, dir, false, Options{Command: "stasis backup /srv"})
	le := wantLocked(t, dir, true, Options{})
	msg := le.Error()
	for _, want := range []string{
		"pid " + strconv.Itoa(os.Getpid()),
		strconv.Quote(selfProcess().host),
		"stasis backup /srv",
		"shared lock",
		"since " + time.Now().Format("2006-01-02"),
		"stasis unlock",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	if n := countLocks(t, dir); n != 1 {
		t.Errorf("the failed Acquire left %d locks, want 1", n)
	}
}

func TestExclusiveBlocksEverything(t *testing.T) {
	dir := t.TempDir()
	acquire(t, dir, true, Options{Command: "stasis prune"})
	for _, ex := range []bool{false, true} {
		le := wantLocked(t, dir, ex, Options{})
		if len(le.Holders) != 1 || !le.Holders[0].Exclusive || le.Holders[0].Command != "stasis prune" {
			t.Errorf("holders = %+v", le.Holders)
		}
	}
	if n := countLocks(t, dir); n != 1 {
		t.Errorf("%d locks, want 1", n)
	}
}

func TestRetryForWaitsUntilRelease(t *testing.T) {
	dir := t.TempDir()
	holder := acquire(t, dir, true, Options{})
	log := newLog()
	type result struct {
		l   *Lock
		err error
	}
	done := make(chan result, 1)
	go func() {
		l, err := Acquire(context.Background(), dir, true, Options{RetryFor: time.Minute, Log: log})
		done <- result{l, err}
	}()
	<-log.first // the waiter saw the conflict and said it waits
	select {
	case r := <-done:
		t.Fatalf("Acquire returned while the lock was held: %v", r.err)
	default:
	}
	if err := holder.Release(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("Acquire after release: %v", r.err)
	}
	defer r.l.Release()
	if !strings.Contains(log.String(), "waiting up to 1m0s") {
		t.Errorf("log: %q", log.String())
	}
}

func TestRetryForGivesUp(t *testing.T) {
	dir := t.TempDir()
	acquire(t, dir, true, Options{})
	le := wantLocked(t, dir, false, Options{RetryFor: 50 * time.Millisecond})
	if le.Waited < 50*time.Millisecond {
		t.Errorf("waited %v, want at least 50ms", le.Waited)
	}
}

func TestAcquireHonoursContext(t *testing.T) {
	dir := t.TempDir()
	acquire(t, dir, true, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	log := newLog()
	done := make(chan error, 1)
	go func() {
		_, err := Acquire(ctx, dir, true, Options{RetryFor: time.Hour, Log: log})
		done <- err
	}()
	<-log.first
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire = %v, want context.Canceled", err)
	}
	if n := countLocks(t, dir); n != 1 {
		t.Errorf("%d locks, want 1", n)
	}
}

func TestDeadProcessLockIsBroken(t *testing.T) {
	dir := t.TempDir()
	pid, start := deadPID(t)
	writeLock(t, dir, Info{Host: hostname(t), PID: pid, PIDStart: start, Command: "stasis prune", Exclusive: true})
	log := newLog()
	acquire(t, dir, true, Options{Log: log})
	msg := log.String()
	if !strings.Contains(msg, "removed stale lock") || !strings.Contains(msg, fmt.Sprintf("process %d on this host is gone", pid)) {
		t.Errorf("log: %q", msg)
	}
	if n := countLocks(t, dir); n != 1 {
		t.Errorf("%d locks, want only ours", n)
	}
}

func TestReusedPIDIsStale(t *testing.T) {
	host := hostname(t)
	_, start := procStat(os.Getpid())
	if start == 0 {
		t.Skip("/proc/<pid>/stat is not readable: cannot detect pid reuse")
	}
	dir := t.TempDir()
	// Our own pid, but another start time: the writer is gone.
	writeLock(t, dir, Info{ID: "reused", Host: host, PID: os.Getpid(), PIDStart: start + 1, Exclusive: true})
	acquire(t, dir, true, Options{})

	// Our own pid and start time: alive, so it conflicts.
	dir2 := t.TempDir()
	writeLock(t, dir2, Info{ID: "alive", Host: host, PID: os.Getpid(), PIDStart: start, Exclusive: true})
	wantLocked(t, dir2, true, Options{})
}

func TestRebootedHostIsStale(t *testing.T) {
	host := hostname(t)
	if selfProcess().bootID == "" {
		t.Skip("/proc/sys/kernel/random/boot_id is not readable")
	}
	dir := t.TempDir()
	writeLock(t, dir, Info{Host: host, PID: os.Getpid(), BootID: "another-boot", Exclusive: true})
	log := newLog()
	acquire(t, dir, true, Options{Log: log})
	if !strings.Contains(log.String(), "rebooted") {
		t.Errorf("log: %q", log.String())
	}
}

func TestOtherHostIsNeverDeadPIDStale(t *testing.T) {
	dir := t.TempDir()
	pid, start := deadPID(t)
	writeLock(t, dir, Info{Host: "other-host.example", PID: pid, PIDStart: start, Command: "stasis prune", Exclusive: true})
	le := wantLocked(t, dir, false, Options{})
	if !strings.Contains(le.Error(), `"other-host.example"`) || !strings.Contains(le.Error(), "pid "+strconv.Itoa(pid)) {
		t.Errorf("message: %s", le.Error())
	}
	removed, err := RemoveStale(context.Background(), dir, Options{})
	if err != nil || len(removed) != 0 {
		t.Errorf("RemoveStale removed %v, %v; want nothing", removed, err)
	}
}

func TestOldRefreshIsStale(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-2 * time.Hour).UTC()
	writeLock(t, dir, Info{Host: "other-host.example", PID: 1, Time: old, Refreshed: old, Exclusive: true})
	// With a bound larger than its age the lock holds.
	wantLocked(t, dir, true, Options{StaleAfter: 3 * time.Hour})
	log := newLog()
	acquire(t, dir, true, Options{Log: log}) // default bound: 30 minutes
	if !strings.Contains(log.String(), "not refreshed for 2h0m") {
		t.Errorf("log: %q", log.String())
	}
}

func TestUnreadableLockConflictsUntilOld(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "locks"), 0o700); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "locks", "junk")
	if err := os.WriteFile(junk, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	le := wantLocked(t, dir, false, Options{})
	if !strings.Contains(le.Error(), "unreadable lock file junk") {
		t.Errorf("message: %s", le.Error())
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(junk, old, old); err != nil {
		t.Fatal(err)
	}
	removed, err := RemoveStale(context.Background(), dir, Options{})
	if err != nil || len(removed) != 1 || removed[0].ID != "junk" {
		t.Fatalf("RemoveStale = %v, %v", removed, err)
	}
}

func TestRefreshRewritesLock(t *testing.T) {
	dir := t.TempDir()
	refreshed := make(chan time.Time)
	l := acquire(t, dir, false, Options{StaleAfter: 30 * time.Millisecond, testRefreshed: refreshed})
	first := l.Info().Refreshed
	var last time.Time
	for range 2 {
		last = <-refreshed
	}
	if !last.After(first) {
		t.Errorf("refresh time %v not after %v", last, first)
	}
	got, err := readInfo(filepath.Join(dir, "locks", l.Info().ID))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Refreshed.Equal(last) || !got.Time.Equal(l.Info().Time) {
		t.Errorf("file has time %v refreshed %v; want %v, %v", got.Time, got.Refreshed, l.Info().Time, last)
	}
	go func() { // drain refreshes that race with Release
		for range refreshed {
		}
	}()
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	close(refreshed)
	if n := countLocks(t, dir); n != 0 {
		t.Errorf("%d locks after Release", n)
	}
}

func TestWith(t *testing.T) {
	dir := t.TempDir()
	boom := errors.New("boom")
	err := With(context.Background(), dir, true, Options{}, func(ctx context.Context) error {
		if n := countLocks(t, dir); n != 1 {
			t.Errorf("%d locks inside With", n)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Errorf("With = %v, want boom", err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("panic was swallowed")
			}
		}()
		_ = With(context.Background(), dir, true, Options{}, func(context.Context) error { panic("x") })
	}()
	if n := countLocks(t, dir); n != 0 {
		t.Errorf("%d locks after With", n)
	}
}

func TestWithCancelsWhenLockIsLost(t *testing.T) {
	dir := t.TempDir()
	log := newLog()
	err := With(context.Background(), dir, true, Options{StaleAfter: 30 * time.Millisecond, Log: log},
		func(ctx context.Context) error {
			if _, err := RemoveAll(ctx, dir); err != nil {
				return err
			}
			<-ctx.Done() // the next refresh notices
			return context.Cause(ctx)
		})
	if !errors.Is(err, ErrLost) {
		t.Fatalf("With = %v, want ErrLost", err)
	}
	if !strings.Contains(log.String(), "removed by another process") {
		t.Errorf("log: %q", log.String())
	}
}

func TestRemoveStaleAndRemoveAll(t *testing.T) {
	dir := t.TempDir()
	pid, _ := deadPID(t)
	held := acquire(t, dir, false, Options{})
	writeLock(t, dir, Info{ID: "dead", Host: hostname(t), PID: pid})
	writeLock(t, dir, Info{ID: "remote", Host: "other-host.example", PID: pid})
	tmp := filepath.Join(dir, "locks", tempPrefix+"crashed")
	if err := os.WriteFile(tmp, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(tmp, old, old); err != nil {
		t.Fatal(err)
	}
	log := newLog()
	removed, err := RemoveStale(context.Background(), dir, Options{Log: log})
	if err != nil || len(removed) != 1 || removed[0].ID != "dead" {
		t.Fatalf("RemoveStale = %v, %v", removed, err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("old temp file not removed: %v", err)
	}
	ls, _ := List(context.Background(), dir)
	if len(ls) != 2 {
		t.Fatalf("after RemoveStale: %v", ls)
	}
	removed, err = RemoveAll(context.Background(), dir)
	if err != nil || len(removed) != 2 {
		t.Fatalf("RemoveAll = %v, %v", removed, err)
	}
	if n := countLocks(t, dir); n != 0 {
		t.Errorf("%d locks after RemoveAll", n)
	}
	if err := held.Release(); err != nil {
		t.Errorf("Release of a removed lock: %v", err)
	}
}

func TestAcquireNeedsRepository(t *testing.T) {
	_, err := Acquire(context.Background(), filepath.Join(t.TempDir(), "missing"), false, Options{})
	if err == nil || !strings.Contains(err.Error(), "is ") || !strings.Contains(err.Error(), "stasis repository") {
		t.Fatalf("Acquire on a missing repository = %v", err)
	}
}

func TestParseStat(t *testing.T) {
	line := "4711 (we) (ird) R 1 4711 4711 0 -1 4194560 100 0 0 0 5 1 0 0 20 0 1 0 987654 1000 100\n"
	state, start := parseStat([]byte(line))
	if state != 'R' || start != 987654 {
		t.Errorf("parseStat = %c, %d", state, start)
	}
	if s, st := parseStat([]byte("12 (x) S 1 2")); s != 0 || st != 0 {
		t.Errorf("short line parsed as %c, %d", s, st)
	}
}

// Cross-process tests: the test binary re-executes itself as a helper.

const helperEnv = "STASIS_LOCK_HELPER"

// TestHelperProcess is not a test: it is the helper process. Modes:
//   - "hold-exclusive", "hold-shared": take the lock, print "locked", hold
//     it until stdin closes.
//   - "race": 20 times, take an exclusive lock and create and remove
//     <dir>/inside with O_EXCL; exit 3 if two holders were inside at once.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper process for other tests")
	}
	dir := os.Getenv(helperEnv + "_DIR")
	ctx := context.Background()
	switch mode {
	case "hold-exclusive", "hold-shared":
		l, err := Acquire(ctx, dir, mode == "hold-exclusive", Options{Command: "helper " + mode})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("locked")
		_, _ = io.Copy(io.Discard, os.Stdin)
		_ = l.Release()
	case "race":
		for range 20 {
			err := With(ctx, dir, true, Options{RetryFor: time.Minute}, func(context.Context) error {
				p := filepath.Join(dir, "inside")
				f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
				if err != nil {
					fmt.Fprintln(os.Stderr, "two holders of an exclusive lock:", err)
					os.Exit(3)
				}
				f.Close()
				return os.Remove(p)
			})
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
	}
	os.Exit(0)
}

// helper starts the helper process in mode on dir and waits until it holds
// its lock.
func helper(t *testing.T, dir, mode string) (*exec.Cmd, io.WriteCloser) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperEnv+"_DIR="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "locked\n" {
		t.Fatalf("helper %s said %q, %v", mode, line, err)
	}
	return cmd, stdin
}

func TestLockOfKilledProcessIsBroken(t *testing.T) {
	dir := t.TempDir()
	cmd, _ := helper(t, dir, "hold-exclusive")
	le := wantLocked(t, dir, false, Options{})
	if le.Holders[0].PID != cmd.Process.Pid || !strings.Contains(le.Error(), "pid "+strconv.Itoa(cmd.Process.Pid)) {
		t.Fatalf("holder %+v, helper pid %d", le.Holders[0], cmd.Process.Pid)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	log := newLog()
	acquire(t, dir, true, Options{Log: log})
	if !strings.Contains(log.String(), fmt.Sprintf("process %d on this host is gone", cmd.Process.Pid)) {
		t.Errorf("log: %q", log.String())
	}
}

func TestSharedAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	cmd, stdin := helper(t, dir, "hold-shared")
	acquire(t, dir, false, Options{})
	wantLocked(t, dir, true, Options{})
	// The helper releases when its stdin closes; then exclusive succeeds.
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	ls, err := List(context.Background(), dir)
	if err != nil || len(ls) != 1 || ls[0].PID != os.Getpid() {
		t.Fatalf("locks after the helper released: %v, %v", ls, err)
	}
}

func TestExclusiveRaceAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	var cmds []*exec.Cmd
	for range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), helperEnv+"=race", helperEnv+"_DIR="+dir)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("racer %d: %v", i, err)
		}
	}
	if n := countLocks(t, dir); n != 0 {
		t.Errorf("%d locks left", n)
	}
}

func TestExclusiveRaceInProcess(t *testing.T) {
	dir := t.TempDir()
	var inside, entries atomic.Int32
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			for range 10 {
				err := With(context.Background(), dir, true, Options{RetryFor: time.Minute}, func(context.Context) error {
					if n := inside.Add(1); n != 1 {
						t.Errorf("%d holders of an exclusive lock", n)
					}
					entries.Add(1)
					inside.Add(-1)
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if entries.Load() != 60 {
		t.Errorf("%d entries, want 60", entries.Load())
	}
}

func FuzzDecode(f *testing.F) {
	good, err := Encode(Info{Format: Format, Version: Version, Host: "h", PID: 7, Command: "stasis prune",
		User: "root", Time: time.Unix(1e9, 0).UTC(), Refreshed: time.Unix(1e9+60, 0).UTC(), Exclusive: true,
		PIDStart: 12345, BootID: "b"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"format":"stasis-lock","version":2}`))
	f.Add([]byte(`{"format":"stasis-lock","version":1,"host":"h","pid":-1}`))
	f.Add([]byte(`{} {}`))
	f.Add([]byte(`null`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		i, err := Decode(data)
		if err != nil {
			return
		}
		if i.Format != Format || i.Version != Version || i.Host == "" || i.PID <= 0 {
			t.Fatalf("Decode accepted %+v", i)
		}
		enc, err := Encode(i)
		if err != nil {
			t.Fatal(err)
		}
		j, err := Decode(enc)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		enc2, err := Encode(j)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(enc, enc2) || !i.Time.Equal(j.Time) || !i.Refreshed.Equal(j.Refreshed) {
			t.Fatalf("round trip changed %+v to %+v", i, j)
		}
	})
}
