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

	"github.com/stasisbackup/stasis/repo/backend"
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

// hookStorage calls before(op, name) ahead of every operation on the
// wrapped storage; an error from it fails the operation.
type hookStorage struct {
	backend.Storage
	mu     sync.Mutex
	before func(op, name string) error
}

func (h *hookStorage) setHook(f func(op, name string) error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.before = f
}

func (h *hookStorage) hook(op, name string) error {
	h.mu.Lock()
	f := h.before
	h.mu.Unlock()
	if f == nil {
		return nil
	}
	return f(op, name)
}

func (h *hookStorage) Put(ctx context.Context, name string, r io.ReaderAt, size int64) error {
	if err := h.hook("put", name); err != nil {
		return err
	}
	return h.Storage.Put(ctx, name, r, size)
}

func (h *hookStorage) Get(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	if err := h.hook("get", name); err != nil {
		return nil, err
	}
	return h.Storage.Get(ctx, name, off, length)
}

func (h *hookStorage) Stat(ctx context.Context, name string) (backend.ObjectInfo, error) {
	if err := h.hook("stat", name); err != nil {
		return backend.ObjectInfo{}, err
	}
	return h.Storage.Stat(ctx, name)
}

func (h *hookStorage) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	if err := h.hook("list", prefix); err != nil {
		return err
	}
	return h.Storage.List(ctx, prefix, fn)
}

func (h *hookStorage) Delete(ctx context.Context, name string) error {
	if err := h.hook("delete", name); err != nil {
		return err
	}
	return h.Storage.Delete(ctx, name)
}

func newStore(t *testing.T) *backend.Local {
	t.Helper()
	return backend.NewLocal(t.TempDir())
}

func acquire(t *testing.T, st backend.Storage, exclusive bool, opts Options) *Lock {
	t.Helper()
	l, err := Acquire(context.Background(), st, exclusive, opts)
	if err != nil {
		t.Fatalf("Acquire(exclusive=%v): %v", exclusive, err)
	}
	t.Cleanup(func() { _ = l.Release() })
	return l
}

func wantLocked(t *testing.T, st backend.Storage, exclusive bool, opts Options) *LockedError {
	t.Helper()
	l, err := Acquire(context.Background(), st, exclusive, opts)
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

func countLocks(t *testing.T, st backend.Storage) int {
	t.Helper()
	ls, err := List(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	return len(ls)
}

// objectNames returns every object under locks/, probes included.
func objectNames(t *testing.T, st backend.Storage) []string {
	t.Helper()
	names, err := backend.ListNames(context.Background(), st, Prefix)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// plant writes lock object name as another process would have, with
// storage ModTime mod unless it is zero (then: now, by the file system).
func plant(t *testing.T, st *backend.Local, name string, i Info, mod time.Time) {
	t.Helper()
	i.Format, i.Version = Format, Version
	if i.Host == "" {
		i.Host = "other-host.example"
	}
	if i.PID == 0 {
		i.PID = 4711
	}
	if i.Time.IsZero() {
		i.Time = time.Now().UTC()
	}
	if i.Refreshed.IsZero() {
		i.Refreshed = i.Time
	}
	data, err := Encode(i)
	if err != nil {
		t.Fatal(err)
	}
	plantRaw(t, st, name, data, mod)
}

func plantRaw(t *testing.T, st *backend.Local, name string, data []byte, mod time.Time) {
	t.Helper()
	if err := backend.PutBytes(context.Background(), st, name, data); err != nil {
		t.Fatal(err)
	}
	if !mod.IsZero() {
		setModTime(t, st, name, mod)
	}
}

// setModTime sets the storage ModTime of a Local object, as if it had been
// written at mod by the file system's clock.
func setModTime(t *testing.T, st *backend.Local, name string, mod time.Time) {
	t.Helper()
	if err := os.Chtimes(filepath.Join(st.Dir(), filepath.FromSlash(name)), mod, mod); err != nil {
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

// sameHost is an Info as this host would write it, for pid and pid.
func sameHost(t *testing.T, pid int, start uint64) Info {
	self := selfProcess()
	return Info{Host: hostname(t), PID: pid, PIDStart: start, BootID: self.bootID, MachineID: self.machineID,
		PIDNamespace: self.pidNS, Command: "stasis prune", Exclusive: true}
}

func TestSharedLocksCoexist(t *testing.T) {
	st := newStore(t)
	a := acquire(t, st, false, Options{})
	acquire(t, st, false, Options{})
	if n := countLocks(t, st); n != 2 {
		t.Fatalf("%d locks, want 2", n)
	}
	if err := a.Release(); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if n := countLocks(t, st); n != 1 {
		t.Fatalf("%d locks after release, want 1", n)
	}
}

func TestLockObjectNameAndContent(t *testing.T) {
	st := newStore(t)
	l := acquire(t, st, true, Options{Command: "stasis prune"})
	names := objectNames(t, st)
	want := Prefix + l.Info().ID + ".1"
	if len(names) != 1 || names[0] != want {
		t.Fatalf("objects %v, want [%s]", names, want)
	}
	data, err := backend.ReadAll(context.Background(), st, want, MaxObjectSize)
	if err != nil {
		t.Fatal(err)
	}
	i, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if !i.Exclusive || i.PID != os.Getpid() || i.Command != "stasis prune" || i.StaleAfter != DefaultStaleAfter {
		t.Errorf("decoded %+v", i)
	}
}

func TestSharedBlocksExclusive(t *testing.T) {
	st := newStore(t)
	acquire(t, st, false, Options{Command: "stasis backup /srv"})
	le := wantLocked(t, st, true, Options{})
	msg := le.Error()
	for _, want := range []string{
		"repository " + st.Dir() + " is locked",
		"pid " + strconv.Itoa(os.Getpid()),
		strconv.Quote(selfProcess().host),
		"stasis backup /srv",
		"shared lock",
		"since " + time.Now().Format("2006-01-02"),
		"ago by the storage's clock",
		"stasis unlock",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	if n := countLocks(t, st); n != 1 {
		t.Errorf("the failed Acquire left %d locks, want 1", n)
	}
	if names := objectNames(t, st); len(names) != 1 {
		t.Errorf("the failed Acquire left objects %v", names)
	}
}

func TestExclusiveBlocksEverything(t *testing.T) {
	st := newStore(t)
	acquire(t, st, true, Options{Command: "stasis prune"})
	for _, ex := range []bool{false, true} {
		le := wantLocked(t, st, ex, Options{})
		if len(le.Holders) != 1 || !le.Holders[0].Exclusive || le.Holders[0].Command != "stasis prune" {
			t.Errorf("holders = %+v", le.Holders)
		}
	}
	if n := countLocks(t, st); n != 1 {
		t.Errorf("%d locks, want 1", n)
	}
}

func TestRetryForWaitsUntilRelease(t *testing.T) {
	st := newStore(t)
	holder := acquire(t, st, true, Options{})
	log := newLog()
	type result struct {
		l   *Lock
		err error
	}
	done := make(chan result, 1)
	go func() {
		l, err := Acquire(context.Background(), st, true, Options{RetryFor: time.Minute, Log: log})
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

// A waiting Acquire lists without writing its object, so that it does not
// make other processes fail while it waits.
func TestWaitingDoesNotWrite(t *testing.T) {
	local := newStore(t)
	st := &hookStorage{Storage: local}
	holder := acquire(t, local, true, Options{})
	var puts atomic.Int32
	lists := make(chan struct{}, 100)
	st.setHook(func(op, name string) error {
		switch {
		case op == "put":
			puts.Add(1)
		case op == "list" && name == Prefix:
			select {
			case lists <- struct{}{}:
			default:
			}
		}
		return nil
	})
	done := make(chan error, 1)
	go func() {
		l, err := Acquire(context.Background(), st, false, Options{RetryFor: time.Minute})
		if err == nil {
			err = l.Release()
		}
		done <- err
	}()
	for range 4 { // the first attempt and three waiting checks
		<-lists
	}
	if n := puts.Load(); n != 1 {
		t.Errorf("%d writes while waiting, want 1 (the first attempt)", n)
	}
	if err := holder.Release(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRetryForGivesUp(t *testing.T) {
	st := newStore(t)
	acquire(t, st, true, Options{})
	le := wantLocked(t, st, false, Options{RetryFor: 50 * time.Millisecond})
	if le.Waited < 50*time.Millisecond {
		t.Errorf("waited %v, want at least 50ms", le.Waited)
	}
}

func TestAcquireHonoursContext(t *testing.T) {
	st := newStore(t)
	acquire(t, st, true, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	log := newLog()
	done := make(chan error, 1)
	go func() {
		_, err := Acquire(ctx, st, true, Options{RetryFor: time.Hour, Log: log})
		done <- err
	}()
	<-log.first
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire = %v, want context.Canceled", err)
	}
	if names := objectNames(t, st); len(names) != 1 {
		t.Errorf("objects %v, want only the holder's", names)
	}
}

func TestDeadProcessLockIsBroken(t *testing.T) {
	st := newStore(t)
	pid, start := deadPID(t)
	plant(t, st, Prefix+"dead.3", sameHost(t, pid, start), time.Time{})
	log := newLog()
	acquire(t, st, true, Options{Log: log})
	msg := log.String()
	if !strings.Contains(msg, "removed stale lock dead") || !strings.Contains(msg, fmt.Sprintf("process %d on this host is gone", pid)) {
		t.Errorf("log: %q", msg)
	}
	if n := countLocks(t, st); n != 1 {
		t.Errorf("%d locks, want only ours", n)
	}
}

func TestReusedPIDIsStale(t *testing.T) {
	_, start := procStat(os.Getpid())
	if start == 0 {
		t.Skip("/proc/<pid>/stat is not readable: cannot detect pid reuse")
	}
	st := newStore(t)
	// Our own pid, but another start time: the writer is gone.
	plant(t, st, Prefix+"reused.1", sameHost(t, os.Getpid(), start+1), time.Time{})
	acquire(t, st, true, Options{})

	// Our own pid and start time: alive, so it conflicts.
	st2 := newStore(t)
	plant(t, st2, Prefix+"alive.1", sameHost(t, os.Getpid(), start), time.Time{})
	wantLocked(t, st2, true, Options{})
}

func TestRebootedHostIsStale(t *testing.T) {
	if selfProcess().bootID == "" {
		t.Skip("/proc/sys/kernel/random/boot_id is not readable")
	}
	st := newStore(t)
	i := sameHost(t, os.Getpid(), 0)
	i.BootID = "another-boot"
	plant(t, st, Prefix+"rebooted.1", i, time.Time{})
	log := newLog()
	acquire(t, st, true, Options{Log: log})
	if !strings.Contains(log.String(), "rebooted") {
		t.Errorf("log: %q", log.String())
	}
}

func TestOtherHostIsNeverDeadPIDStale(t *testing.T) {
	st := newStore(t)
	pid, start := deadPID(t)
	plant(t, st, Prefix+"remote.1", Info{Host: "other-host.example", PID: pid, PIDStart: start, Command: "stasis prune", Exclusive: true}, time.Time{})
	le := wantLocked(t, st, false, Options{})
	if !strings.Contains(le.Error(), `"other-host.example"`) || !strings.Contains(le.Error(), "pid "+strconv.Itoa(pid)) {
		t.Errorf("message: %s", le.Error())
	}
	removed, err := RemoveStale(context.Background(), st, Options{})
	if err != nil || len(removed) != 0 {
		t.Errorf("RemoveStale removed %v, %v; want nothing", removed, err)
	}
}

// Same host name, another machine id, or another pid namespace: the pid
// cannot be checked, so a dead-looking pid does not make the lock stale.
func TestSameNameOtherMachineOrNamespaceIsNotPIDStale(t *testing.T) {
	pid, start := deadPID(t)
	for _, tc := range []struct {
		name string
		edit func(*Info)
	}{
		{"machine", func(i *Info) { i.MachineID = "another-machine"; i.BootID = "another-boot" }},
		{"namespace", func(i *Info) { i.PIDNamespace = "pid:[1]" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			self := selfProcess()
			if (tc.name == "machine" && self.machineID == "") || (tc.name == "namespace" && self.pidNS == "") {
				t.Skip("identity not readable on this host")
			}
			st := newStore(t)
			i := sameHost(t, pid, start)
			tc.edit(&i)
			plant(t, st, Prefix+"x.1", i, time.Time{})
			wantLocked(t, st, false, Options{})
		})
	}
}

func TestStaleByStorageModTime(t *testing.T) {
	st := newStore(t)
	// The JSON says it was refreshed just now; the storage says 2 h ago.
	plant(t, st, Prefix+"old.7", Info{Exclusive: true}, time.Now().Add(-2*time.Hour))
	// With a bound larger than its age the lock holds.
	wantLocked(t, st, true, Options{StaleAfter: 3 * time.Hour})
	log := newLog()
	acquire(t, st, true, Options{Log: log}) // default bound: 30 minutes
	if !strings.Contains(log.String(), "not refreshed for 2h0m") || !strings.Contains(log.String(), "storage's clock") {
		t.Errorf("log: %q", log.String())
	}
}

// A holder that recorded a longer StaleAfter refreshes less often: an
// observer with a shorter one waits for the holder's.
func TestHolderStaleAfterIsHonoured(t *testing.T) {
	st := newStore(t)
	plant(t, st, Prefix+"slow.1", Info{Exclusive: true, StaleAfter: 3 * time.Hour}, time.Now().Add(-2*time.Hour))
	wantLocked(t, st, true, Options{})
	setModTime(t, st, Prefix+"slow.1", time.Now().Add(-4*time.Hour))
	acquire(t, st, true, Options{})
}

// The JSON times are written by the holder's clock, which may be an hour
// off: they do not matter, the storage's ModTime does.
func TestClockSkewDoesNotBreakLiveLocks(t *testing.T) {
	for _, skew := range []time.Duration{time.Hour, -time.Hour} {
		t.Run(skew.String(), func(t *testing.T) {
			st := newStore(t)
			at := time.Now().Add(skew).UTC()
			plant(t, st, Prefix+"skewed.1", Info{Exclusive: true, Time: at, Refreshed: at}, time.Time{})
			le := wantLocked(t, st, false, Options{})
			if len(le.Holders) != 1 || le.Holders[0].ID != "skewed" {
				t.Errorf("holders %+v", le.Holders)
			}
			removed, err := RemoveStale(context.Background(), st, Options{})
			if err != nil || len(removed) != 0 {
				t.Errorf("RemoveStale = %v, %v; want nothing removed", removed, err)
			}
			if n := countLocks(t, st); n != 1 {
				t.Errorf("%d locks, want 1", n)
			}
		})
	}
}

func TestFutureJSONTimeWithOldModTimeIsStale(t *testing.T) {
	st := newStore(t)
	future := time.Now().Add(time.Hour).UTC()
	plant(t, st, Prefix+"future.2", Info{Exclusive: true, Time: future, Refreshed: future}, time.Now().Add(-time.Hour))
	removed, err := RemoveStale(context.Background(), st, Options{})
	if err != nil || len(removed) != 1 || removed[0].ID != "future" {
		t.Fatalf("RemoveStale = %v, %v; want the future-dated lock removed", removed, err)
	}
	if names := objectNames(t, st); len(names) != 0 {
		t.Errorf("objects left: %v (the probe must be deleted too)", names)
	}
}

func TestUnreadableLockObjects(t *testing.T) {
	v1 := `{"format":"stasis-lock","version":1,"host":"h","pid":7,"time":"2026-01-01T00:00:00Z","refreshed":"2026-01-01T00:00:00Z"}`
	for _, tc := range []struct {
		name, object string
		data         []byte
		want         string
	}{
		{"junk", Prefix + "junk", []byte("{not json"), "decode lock"},
		{"version1", Prefix + "0123abcd", []byte(v1), "version 1"},
		{"huge", Prefix + "huge.1", bytes.Repeat([]byte(" "), MaxObjectSize+1), "larger than expected"},
		{"empty", Prefix + "empty.4", nil, "decode lock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t)
			plantRaw(t, st, tc.object, tc.data, time.Time{})
			le := wantLocked(t, st, false, Options{})
			msg := le.Error()
			if !strings.Contains(msg, "unreadable lock object "+tc.object) || !strings.Contains(msg, tc.want) {
				t.Errorf("message: %s", msg)
			}
			if removed, err := RemoveStale(context.Background(), st, Options{}); err != nil || len(removed) != 0 {
				t.Fatalf("RemoveStale of a fresh unreadable lock = %v, %v", removed, err)
			}
			setModTime(t, st, tc.object, time.Now().Add(-time.Hour))
			removed, err := RemoveStale(context.Background(), st, Options{})
			if err != nil || len(removed) != 1 || removed[0].Err == nil {
				t.Fatalf("RemoveStale = %v, %v", removed, err)
			}
			if names := objectNames(t, st); len(names) != 0 {
				t.Errorf("objects left: %v", names)
			}
		})
	}
}

func TestStaleProbesAreRemoved(t *testing.T) {
	st := newStore(t)
	plantRaw(t, st, Prefix+"crashed"+probeSuffix, []byte("probe"), time.Now().Add(-time.Hour))
	plantRaw(t, st, Prefix+"fresh"+probeSuffix, []byte("probe"), time.Time{})
	if n := countLocks(t, st); n != 0 {
		t.Fatalf("probes listed as %d locks", n)
	}
	acquire(t, st, true, Options{}) // probes are no locks
	names := objectNames(t, st)
	if len(names) != 2 || !strings.HasSuffix(names[0], ".1") || names[1] != Prefix+"fresh"+probeSuffix {
		t.Errorf("objects %v, want ours and the fresh probe", names)
	}
}

func TestListDescribesTheNewestObject(t *testing.T) {
	st := newStore(t)
	plant(t, st, Prefix+"abc.9", Info{Command: "old"}, time.Now().Add(-time.Minute))
	plant(t, st, Prefix+"abc.10", Info{Command: "new", Exclusive: true}, time.Time{})
	ls, err := List(context.Background(), st)
	if err != nil || len(ls) != 1 {
		t.Fatalf("List = %v, %v", ls, err)
	}
	if l := ls[0]; l.ID != "abc" || l.Command != "new" || !l.Exclusive || len(l.Objects) != 2 || l.Objects[1] != Prefix+"abc.10" {
		t.Errorf("listed %+v", l)
	}
}

// A holder that refreshes between an observer's List and its read of the
// listed object (which is then gone) is still found.
func TestListFollowsARefresh(t *testing.T) {
	local := newStore(t)
	st := &hookStorage{Storage: local}
	plant(t, local, Prefix+"h.1", Info{Exclusive: true, Command: "holder"}, time.Time{})
	var once sync.Once
	st.setHook(func(op, name string) error {
		if op == "get" && name == Prefix+"h.1" {
			once.Do(func() {
				plant(t, local, Prefix+"h.2", Info{Exclusive: true, Command: "holder"}, time.Time{})
				if err := local.Delete(context.Background(), Prefix+"h.1"); err != nil {
					t.Error(err)
				}
			})
		}
		return nil
	})
	le := wantLocked(t, st, true, Options{})
	if len(le.Holders) != 1 || le.Holders[0].Command != "holder" {
		t.Errorf("holders %+v", le.Holders)
	}
}

func TestParseName(t *testing.T) {
	for _, tc := range []struct {
		name, id string
		seq      uint64
		probe    bool
	}{
		{Prefix + "ab12.7", "ab12", 7, false},
		{Prefix + "ab12.0", "ab12", 0, false},
		{Prefix + "ab12.probe", "ab12", 0, true},
		{Prefix + "ab12", "ab12", 0, false},
		{Prefix + "ab12.07", "ab12.07", 0, false},
		{Prefix + ".tmp-x", ".tmp-x", 0, false},
		{Prefix + "d/ab.1", "d/ab.1", 0, false},
	} {
		id, seq, probe := parseName(tc.name)
		if id != tc.id || seq != tc.seq || probe != tc.probe {
			t.Errorf("parseName(%q) = %q, %d, %v", tc.name, id, seq, probe)
		}
	}
}

// testStale is short enough for fast tests and long enough that a loaded
// machine refreshes in time: refresh every 200ms, lost after 600ms.
const testStale = 1200 * time.Millisecond

func TestRefreshWritesNewObjects(t *testing.T) {
	st := newStore(t)
	refreshed := make(chan string, 10)
	l := acquire(t, st, false, Options{StaleAfter: testStale, onRefresh: func(o string) { refreshed <- o }})
	first := l.Info()
	var last string
	for range 2 {
		last = <-refreshed
	}
	id := first.ID
	if last != Prefix+id+".3" {
		t.Errorf("second refresh wrote %s, want %s.3", last, Prefix+id)
	}
	names := objectNames(t, st)
	if len(names) != 1 || names[0] != last {
		t.Errorf("objects %v, want [%s] (the previous ones deleted)", names, last)
	}
	data, err := backend.ReadAll(context.Background(), st, last, MaxObjectSize)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Refreshed.After(first.Refreshed) || !got.Time.Equal(first.Time) {
		t.Errorf("object has time %v refreshed %v; first had %v, %v", got.Time, got.Refreshed, first.Time, first.Refreshed)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if names := objectNames(t, st); len(names) != 0 {
		t.Errorf("objects after Release: %v", names)
	}
	select {
	case <-l.Done():
		t.Error("Done closed by Release")
	default:
	}
}

func TestRefreshAfterRemoveAllDoesNotResurrect(t *testing.T) {
	st := newStore(t)
	log := newLog()
	l := acquire(t, st, true, Options{StaleAfter: testStale, Log: log})
	removed, err := RemoveAll(context.Background(), st)
	if err != nil || len(removed) != 1 {
		t.Fatalf("RemoveAll = %v, %v", removed, err)
	}
	<-l.Done() // the next refresh notices
	if err := l.Err(); !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "removed by another process") {
		t.Errorf("Err = %v", err)
	}
	if names := objectNames(t, st); len(names) != 0 {
		t.Errorf("objects after the refresh: %v; a removed lock was resurrected", names)
	}
	if err := l.Release(); err != nil {
		t.Errorf("Release of a removed lock: %v", err)
	}
	acquire(t, st, true, Options{})
}

// RemoveAll running at each step of a refresh: after the new object is
// written, after the previous one was checked, after it was deleted. The
// holder loses the lock, and no object of it is left.
func TestRefreshRacingRemoveAll(t *testing.T) {
	for _, at := range []string{"stat", "delete", "done"} {
		t.Run(at, func(t *testing.T) {
			local := newStore(t)
			st := &hookStorage{Storage: local}
			l := acquire(t, st, true, Options{StaleAfter: testStale})
			id := l.Info().ID
			first := Prefix + id + ".1"
			var once sync.Once
			removeAll := func() {
				once.Do(func() {
					if _, err := RemoveAll(context.Background(), local); err != nil {
						t.Error(err)
					}
				})
			}
			st.setHook(func(op, name string) error {
				switch {
				case at == "stat" && op == "stat" && name == first,
					at == "delete" && op == "delete" && name == first:
					removeAll()
				case at == "done" && op == "put" && name == Prefix+id+".3":
					removeAll() // before the second refresh, after the first completed
				}
				return nil
			})
			<-l.Done()
			if err := l.Err(); !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "removed") {
				t.Errorf("Err = %v", err)
			}
			if names := objectNames(t, local); len(names) != 0 {
				t.Errorf("objects left: %v", names)
			}
		})
	}
}

var errInjected = errors.New("injected put failure")

// A refresh that keeps failing loses the lock within StaleAfter/2 of the
// last successful write, well before others may consider it stale.
func TestFailingRefreshLosesTheLockInTime(t *testing.T) {
	local := newStore(t)
	st := &hookStorage{Storage: local}
	var puts atomic.Int32
	var lastGoodPut atomic.Int64 // UnixNano of the start of the last Put let through
	st.setHook(func(op, name string) error {
		if op != "put" {
			return nil
		}
		if puts.Add(1) > 2 { // the acquisition and one refresh succeed
			return errInjected
		}
		lastGoodPut.Store(time.Now().UnixNano())
		return nil
	})
	log := newLog()
	l := acquire(t, st, true, Options{StaleAfter: testStale, Log: log})
	<-l.Done()
	lost := time.Now()
	since := lost.Sub(time.Unix(0, lastGoodPut.Load()))
	// The holder's clock starts just before the hook's: allow a little.
	if since < lostAfter(testStale)-50*time.Millisecond || since >= testStale {
		t.Errorf("lost %v after the last good write; want about %v, and less than %v", since, lostAfter(testStale), testStale)
	}
	err := l.Err()
	if !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "could not be refreshed") || !strings.Contains(err.Error(), errInjected.Error()) {
		t.Errorf("Err = %v", err)
	}
	if !strings.Contains(log.String(), "retrying") {
		t.Errorf("log: %q", log.String())
	}
	// Nothing is refreshed any more; Release removes what is left.
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if names := objectNames(t, local); len(names) != 0 {
		t.Errorf("objects after Release: %v", names)
	}
}

// A refresh that hangs, even one that ignores its context, loses the lock
// in time as well.
func TestHangingRefreshLosesTheLockInTime(t *testing.T) {
	local := newStore(t)
	st := &hookStorage{Storage: local}
	unblock := make(chan struct{})
	defer close(unblock)
	var puts atomic.Int32
	st.setHook(func(op, name string) error {
		if op == "put" && puts.Add(1) > 1 {
			<-unblock
		}
		return nil
	})
	start := time.Now()
	l := acquire(t, st, true, Options{StaleAfter: testStale})
	<-l.Done()
	if d := time.Since(start); d >= testStale {
		t.Errorf("lost after %v, want before %v", d, testStale)
	}
	if err := l.Err(); !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "in progress") {
		t.Errorf("Err = %v", err)
	}
}

func TestLockContext(t *testing.T) {
	st := newStore(t)
	l := acquire(t, st, true, Options{StaleAfter: testStale})
	ctx, cancel := l.Context(context.Background())
	defer cancel()
	if _, err := RemoveAll(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done()
	if cause := context.Cause(ctx); !errors.Is(cause, ErrLost) || cause != l.Err() {
		t.Errorf("cause %v, Err %v", cause, l.Err())
	}
}

func TestWith(t *testing.T) {
	st := newStore(t)
	boom := errors.New("boom")
	err := With(context.Background(), st, true, Options{}, func(ctx context.Context) error {
		if n := countLocks(t, st); n != 1 {
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
		_ = With(context.Background(), st, true, Options{}, func(context.Context) error { panic("x") })
	}()
	if names := objectNames(t, st); len(names) != 0 {
		t.Errorf("objects after With: %v", names)
	}
}

func TestWithCancelsWhenLockIsLost(t *testing.T) {
	st := newStore(t)
	log := newLog()
	err := With(context.Background(), st, true, Options{StaleAfter: testStale, Log: log},
		func(ctx context.Context) error {
			if _, err := RemoveAll(ctx, st); err != nil {
				return err
			}
			<-ctx.Done() // the next refresh notices
			return ctx.Err()
		})
	if !errors.Is(err, ErrLost) || !errors.Is(err, context.Canceled) {
		t.Fatalf("With = %v, want ErrLost joined with the function's error", err)
	}
	if !strings.Contains(log.String(), "removed by another process") {
		t.Errorf("log: %q", log.String())
	}
}

func TestRemoveStaleAndRemoveAll(t *testing.T) {
	st := newStore(t)
	pid, start := deadPID(t)
	held := acquire(t, st, false, Options{})
	plant(t, st, Prefix+"dead.1", sameHost(t, pid, start), time.Time{})
	plant(t, st, Prefix+"dead.2", sameHost(t, pid, start), time.Time{}) // a refresh in progress
	plant(t, st, Prefix+"remote.5", Info{Host: "other-host.example", PID: pid}, time.Time{})
	plantRaw(t, st, Prefix+"crashed"+probeSuffix, []byte("probe"), time.Now().Add(-time.Hour))
	log := newLog()
	removed, err := RemoveStale(context.Background(), st, Options{Log: log})
	if err != nil || len(removed) != 1 || removed[0].ID != "dead" || len(removed[0].Objects) != 2 {
		t.Fatalf("RemoveStale = %+v, %v", removed, err)
	}
	if !strings.Contains(log.String(), "removed stale lock dead") {
		t.Errorf("log: %q", log.String())
	}
	names := objectNames(t, st)
	if len(names) != 2 || names[1] != Prefix+"remote.5" {
		t.Fatalf("after RemoveStale: %v", names)
	}
	removed, err = RemoveAll(context.Background(), st)
	if err != nil || len(removed) != 2 {
		t.Fatalf("RemoveAll = %v, %v", removed, err)
	}
	if names := objectNames(t, st); len(names) != 0 {
		t.Errorf("objects after RemoveAll: %v", names)
	}
	if err := held.Release(); err != nil {
		t.Errorf("Release of a removed lock: %v", err)
	}
}

func TestExclusiveRaceInProcess(t *testing.T) {
	st := newStore(t)
	var inside, entries atomic.Int32
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			for range 10 {
				err := With(context.Background(), st, true, Options{RetryFor: time.Minute}, func(context.Context) error {
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
	if names := objectNames(t, st); len(names) != 0 {
		t.Errorf("objects left: %v", names)
	}
}

// Without retries, racing exclusive acquirers may all fail, but never two
// succeed at once.
func TestExclusiveRaceWithoutRetry(t *testing.T) {
	st := newStore(t)
	for range 20 {
		var held atomic.Int32
		var locks sync.Map
		var wg sync.WaitGroup
		startGun := make(chan struct{})
		for i := range 4 {
			wg.Go(func() {
				<-startGun
				l, err := Acquire(context.Background(), st, true, Options{})
				if err == nil {
					held.Add(1)
					locks.Store(i, l)
				} else if !errors.Is(err, ErrLocked) {
					t.Error(err)
				}
			})
		}
		close(startGun)
		wg.Wait()
		if n := held.Load(); n > 1 {
			t.Fatalf("%d simultaneous exclusive locks", n)
		}
		locks.Range(func(_, l any) bool { _ = l.(*Lock).Release(); return true })
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

// raceRounds is how often each "race" helper takes the exclusive lock.
const raceRounds = 25

// TestHelperProcess is not a test: it is the helper process. Modes:
//   - "hold-exclusive", "hold-shared": take the lock, print "locked", hold
//     it until stdin closes.
//   - "race": raceRounds times, take an exclusive lock; inside it, create
//     <dir>/inside with O_EXCL (exit 3 if it exists: two holders at once),
//     append "enter <pid>" and "leave <pid>" lines to <dir>/journal, and
//     remove <dir>/inside.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper process for other tests")
	}
	dir := os.Getenv(helperEnv + "_DIR")
	st := backend.NewLocal(filepath.Join(dir, "repo"))
	ctx := context.Background()
	switch mode {
	case "hold-exclusive", "hold-shared":
		l, err := Acquire(ctx, st, mode == "hold-exclusive", Options{Command: "helper " + mode})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("locked")
		_, _ = io.Copy(io.Discard, os.Stdin)
		_ = l.Release()
	case "race":
		journal, err := os.OpenFile(filepath.Join(dir, "journal"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		me := strconv.Itoa(os.Getpid())
		for range raceRounds {
			err := With(ctx, st, true, Options{RetryFor: 2 * time.Minute, Command: "racer"}, func(context.Context) error {
				p := filepath.Join(dir, "inside")
				f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
				if err != nil {
					fmt.Fprintln(os.Stderr, "two holders of an exclusive lock:", err)
					os.Exit(3)
				}
				f.Close()
				if _, err := journal.WriteString("enter " + me + "\n"); err != nil {
					return err
				}
				time.Sleep(time.Millisecond) // widen the window a second holder would use
				if _, err := journal.WriteString("leave " + me + "\n"); err != nil {
					return err
				}
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

func helperCmd(dir, mode string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperEnv+"_DIR="+dir)
	cmd.Stderr = os.Stderr
	return cmd
}

// helper starts the helper process in mode on dir/repo and waits until it
// holds its lock.
func helper(t *testing.T, dir, mode string) (*exec.Cmd, io.WriteCloser) {
	t.Helper()
	cmd := helperCmd(dir, mode)
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
	st := backend.NewLocal(filepath.Join(dir, "repo"))
	cmd, _ := helper(t, dir, "hold-exclusive")
	le := wantLocked(t, st, false, Options{})
	if le.Holders[0].PID != cmd.Process.Pid || !strings.Contains(le.Error(), "pid "+strconv.Itoa(cmd.Process.Pid)) {
		t.Fatalf("holder %+v, helper pid %d", le.Holders[0], cmd.Process.Pid)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	log := newLog()
	acquire(t, st, true, Options{Log: log})
	if !strings.Contains(log.String(), fmt.Sprintf("process %d on this host is gone", cmd.Process.Pid)) {
		t.Errorf("log: %q", log.String())
	}
}

func TestSharedAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	st := backend.NewLocal(filepath.Join(dir, "repo"))
	cmd, stdin := helper(t, dir, "hold-shared")
	acquire(t, st, false, Options{})
	wantLocked(t, st, true, Options{})
	// The helper releases when its stdin closes; then exclusive succeeds.
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	ls, err := List(context.Background(), st)
	if err != nil || len(ls) != 1 || ls[0].PID != os.Getpid() {
		t.Fatalf("locks after the helper released: %v, %v", ls, err)
	}
}

// Two processes contend for an exclusive lock; their journal shows that
// they never were inside at the same time, and that both got their turns.
func TestExclusiveRaceAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	st := backend.NewLocal(filepath.Join(dir, "repo"))
	var cmds []*exec.Cmd
	for range 2 {
		cmd := helperCmd(dir, "race")
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
	data, err := os.ReadFile(filepath.Join(dir, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 2*2*raceRounds {
		t.Fatalf("journal has %d lines, want %d", len(lines), 4*raceRounds)
	}
	turns := map[string]int{}
	for i := 0; i < len(lines); i += 2 {
		enter, leave := lines[i], lines[i+1]
		pid := strings.TrimPrefix(enter, "enter ")
		if !strings.HasPrefix(enter, "enter ") || leave != "leave "+pid {
			t.Fatalf("journal lines %d-%d: %q, %q: two holders at once", i+1, i+2, enter, leave)
		}
		turns[pid]++
	}
	for _, cmd := range cmds {
		if n := turns[strconv.Itoa(cmd.Process.Pid)]; n != raceRounds {
			t.Errorf("racer %d had %d turns, want %d", cmd.Process.Pid, n, raceRounds)
		}
	}
	if names := objectNames(t, st); len(names) != 0 {
		t.Errorf("objects left: %v", names)
	}
}

func FuzzDecode(f *testing.F) {
	good, err := Encode(Info{Format: Format, Version: Version, Host: "h", PID: 7, Command: "stasis prune",
		User: "root", Time: time.Unix(1e9, 0).UTC(), Refreshed: time.Unix(1e9+60, 0).UTC(), Exclusive: true,
		StaleAfter: time.Minute, PIDStart: 12345, BootID: "b", MachineID: "m", PIDNamespace: "pid:[1]"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"format":"stasis-lock","version":1}`))
	f.Add([]byte(`{"format":"stasis-lock","version":2,"host":"h","pid":-1}`))
	f.Add([]byte(`{} {}`))
	f.Add([]byte(`null`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		i, err := Decode(data)
		if err != nil {
			return
		}
		if i.Format != Format || i.Version != Version || i.Host == "" || i.PID <= 0 || i.StaleAfter < 0 {
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
