// Package lock implements repository locks: small JSON objects under locks/
// in the repository's [backend.Storage] that say which process uses the
// repository and how. The same protocol works on a local directory and on
// object storage (S3) shared by several hosts: it needs no rename, no
// conditional write and no agreement between the hosts' clocks.
//
// # Kinds
//
// A shared lock (backup, restore, check) coexists with other shared locks.
// An exclusive lock (prune, forget, repair) excludes every other lock.
//
// # Objects
//
// A lock has a random id (32 hex digits) and is represented by one object
// locks/<id>.<seq>, where seq is a decimal counter the holder increments on
// every write. The object holds the JSON [Info] (host, pid, command, user,
// kind, and the holder's StaleAfter). A refresh never rewrites an existing
// name; see below. Objects named locks/<x>.probe are clock probes (see
// Staleness), not locks. Any other object under locks/, including one that
// cannot be read or decoded, counts as an exclusive lock held by an unknown
// process.
//
// # Acquiring
//
// [Acquire] writes its own lock object (Put is atomic), then lists locks/.
// If a conflicting lock that is not stale is listed, it deletes its object
// and tries again later; otherwise it holds the lock. Two processes that race
// cannot both succeed: each one lists after its own object is visible, so the
// later lister sees the other's object. Two racing processes may both back
// off; retries use a randomised, growing delay so that one of them wins.
// While it waits (Options.RetryFor), Acquire only lists, and writes its
// object again only when no conflict is left, so that a waiting process does
// not make others fail.
//
// # Refresh
//
// A held lock is refreshed every StaleAfter/6: the holder writes a new object
// locks/<id>.<seq+1>, checks (Stat) that its previous object still exists,
// then deletes the previous object. If the previous object is gone, another
// process removed the lock (stasis unlock --remove-all, or a process that
// judged it stale): the holder deletes the new object, so that a removed lock
// is never resurrected, and the lock is lost. [RemoveStale] and [RemoveAll]
// delete every object of a lock id and list again until none is left, so a
// refresh that raced with them is deleted too.
//
// A failed refresh is retried with growing delays. The holder measures, on
// its own monotonic clock, the time since the start of its last successful
// write; when that reaches StaleAfter/2 without a new success, the lock is
// lost. A lost lock closes [Lock.Done], [Lock.Err] says why, and
// [Lock.Context] and [With] cancel their context with that error. The
// remaining StaleAfter/2 is the margin for the command to stop before any
// other process may consider the lock stale.
//
// # Staleness
//
// A lock is stale when its newest object is older than StaleAfter (the
// larger of the observer's Options.StaleAfter and the one the holder
// recorded) by the storage's clock: the observer compares the lock's
// [backend.ObjectInfo.ModTime] with the ModTime of an object it has just
// written itself to the same storage (Acquire: its own lock object;
// RemoveStale: a probe object locks/<random>.probe, deleted afterwards). Both
// times are stamped by the same clock (the file system's, or the object
// store's), so no host clock is involved: a host whose clock is an hour
// ahead or behind neither breaks live locks nor keeps dead ones, and the
// times in the JSON (written by the holder's clock) are only shown to users.
// The comparison is safe because the holder's object was stamped after the
// holder started writing it, and the holder gives up the lock StaleAfter/2
// after starting its last successful write (by its monotonic clock): by the
// time the storage's clock shows StaleAfter since that stamp, the holder has
// stopped for StaleAfter/2 already. ModTimes read by Stat may be truncated to
// whole seconds (S3 HEAD), which only makes locks look younger; file systems
// stamp with a coarse clock (a few milliseconds), which is negligible
// against that margin.
//
// A lock written on this host is also stale when its process is gone:
// kill(pid, 0) fails with ESRCH, or the pid now belongs to a process with a
// different start time (/proc/<pid>/stat), or the machine rebooted since
// (/proc/sys/kernel/random/boot_id). "This host" means the same host name and,
// where both are known, the same /etc/machine-id; the pid is only checked in
// the same pid namespace. Stale locks are removed by Acquire, with a message
// to Options.Log, and by RemoveStale (stasis unlock).
//
// # Remaining races
//
//   - Listing must be consistent: a List that starts after a Put returned
//     must include that object (local directories, AWS S3, and most
//     S3-compatible stores guarantee this; [backend.Storage] alone does not).
//     On a store whose listings lag, two processes can both take an
//     exclusive lock.
//   - After RemoveAll (stasis unlock --remove-all) returns, a holder whose
//     lock it removed keeps running until its next refresh notices, at most
//     StaleAfter/6 plus the duration of one refresh, and that refresh's new
//     object exists for the moment between its Put and its Delete. That is
//     why --remove-all is only for repositories no stasis process uses.
//   - A lost lock cancels the command's context; the command must stop
//     within StaleAfter/2 (the default: 15 minutes) or it may run while
//     another process holds a conflicting lock.
//   - Time the holder's host spends suspended (a paused VM, a sleeping
//     laptop) does not advance the monotonic clock on Linux: a holder
//     suspended for longer than StaleAfter can have its lock broken and,
//     after resuming, run until its next refresh finds the lock removed.
//     Stopped processes (SIGSTOP) are not affected: their timers fire on
//     resume.
//   - The storage's clock must run at the right rate and not jump: a forward
//     step of it by more than StaleAfter/2 can make a live lock look stale.
//     A directory on a network file system that stamps files with the
//     writing client's clock (rather than the server's) brings clock skew
//     back; NFS and SMB servers stamp with their own clock.
//   - The same-host check trusts host names: two machines (or containers)
//     with the same host name and no distinct /etc/machine-id can break each
//     other's live locks by the pid or reboot rule.
package lock

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/stasisbackup/stasis/repo/backend"
)

// Format and Version identify a lock object. Readers refuse other versions
// (and then treat the object as an exclusive lock of an unknown process).
// Version 2 is the object-storage protocol of this package; version 1 lock
// files were rewritten in place and judged by the writer's clock.
const (
	Format  = "stasis-lock"
	Version = 2
)

// Prefix starts the names of lock objects.
const Prefix = "locks/"

// DefaultStaleAfter is the age, by the storage's clock, after which a lock
// that was not refreshed is stale.
const DefaultStaleAfter = 30 * time.Minute

// MaxObjectSize bounds what is read from a lock object; a larger one is
// unreadable.
const MaxObjectSize = 64 << 10

const probeSuffix = ".probe"

// cleanupTimeout bounds deletions done after the caller's context ended.
const cleanupTimeout = 30 * time.Second

// ErrLocked is matched (errors.Is) by the error of Acquire when a conflicting
// lock is held; the error is a *LockedError naming the holders.
var ErrLocked = errors.New("repository is locked")

// ErrLost is matched by [Lock.Err] once the lock is lost: it was removed by
// another process, or it could not be refreshed in time.
var ErrLost = errors.New("repository lock lost")

// errRemoved marks a refresh that found the lock removed.
var errRemoved = errors.New("the lock was removed by another process (stasis unlock --remove-all, or a process that judged it stale)")

// Info describes a lock: the JSON content of its newest object, and what
// the storage says about its objects.
type Info struct {
	// ID is the lock's id: its objects are named locks/<ID>.<seq>. For an
	// object of another form, ID is its name without locks/.
	ID string `json:"-"`
	// Objects are the names of the lock's objects, oldest first (two while
	// a refresh is in progress, or more if deletions failed).
	Objects []string `json:"-"`
	// ModTime is the newest object's ModTime by the storage's clock: when
	// the lock was last written.
	ModTime time.Time `json:"-"`
	// Age is ModTime's age by the storage's clock when Acquire or
	// RemoveStale judged the lock (0 in List results; see Judged).
	Age time.Duration `json:"-"`
	// Judged is set when Age is known.
	Judged bool `json:"-"`

	Format  string `json:"format"`
	Version int    `json:"version"`
	Host    string `json:"host"`
	PID     int    `json:"pid"`
	Command string `json:"command"`
	User    string `json:"user"`
	// Time and Refreshed are when the lock was taken and last refreshed,
	// by the holder's clock. They are shown to users and never used to
	// judge staleness.
	Time      time.Time `json:"time"`
	Refreshed time.Time `json:"refreshed"`
	Exclusive bool      `json:"exclusive"`
	// StaleAfter is the holder's Options.StaleAfter, which its refresh
	// rhythm follows; observers wait at least that long.
	StaleAfter time.Duration `json:"stale_after_ns,omitempty"`
	// PIDStart is the start time of the process in clock ticks after boot
	// (field 22 of /proc/<pid>/stat), 0 if unknown; with BootID it tells a
	// dead process from a new one that reuses its pid.
	PIDStart uint64 `json:"pid_start,omitempty"`
	BootID   string `json:"boot_id,omitempty"`
	// MachineID (/etc/machine-id) tells hosts with the same name apart;
	// PIDNamespace (/proc/self/ns/pid) says in which pid namespace PID is.
	MachineID    string `json:"machine_id,omitempty"`
	PIDNamespace string `json:"pid_ns,omitempty"`

	// Err is set for a lock object that cannot be read or decoded; such a
	// lock is treated as exclusive, held by an unknown process, and is
	// stale when ModTime is older than StaleAfter by the storage's clock.
	Err error `json:"-"`
}

// Kind returns "exclusive" or "shared".
func (i Info) Kind() string {
	if i.Exclusive {
		return "exclusive"
	}
	return "shared"
}

const timeFormat = time.DateTime + " -0700"

// String describes the holder for messages: kind, pid, host, command, user,
// and since when, e.g. `exclusive lock by pid 4711 on host "db1"
// ("stasis prune", user root) since 2026-11-20 03:00:00 +0100 (last
// refreshed 2m0s ago by the storage's clock)`.
func (i Info) String() string {
	written := "last written " + i.ModTime.Local().Format(timeFormat) + " by the storage's clock"
	if i.Judged {
		written = "last refreshed " + i.Age.Round(time.Second).String() + " ago by the storage's clock"
	}
	if i.Err != nil {
		name := i.ID
		if len(i.Objects) > 0 {
			name = i.Objects[len(i.Objects)-1]
		}
		return fmt.Sprintf("unreadable lock object %s (%s), counted as an exclusive lock: %v", name, written, i.Err)
	}
	return fmt.Sprintf("%s lock by pid %d on host %q (%q, user %s) since %s (%s)",
		i.Kind(), i.PID, i.Host, i.Command, i.User, i.Time.Local().Format(timeFormat), written)
}

// Options tunes Acquire, RemoveStale and the refresh of a held lock.
type Options struct {
	// RetryFor is how long Acquire waits for conflicting locks to go away;
	// 0 fails at once.
	RetryFor time.Duration
	// StaleAfter is the age, by the storage's clock, after which a lock
	// that was not refreshed is stale; 0 means DefaultStaleAfter. A held
	// lock is refreshed every StaleAfter/6, and lost when no refresh
	// succeeded for StaleAfter/2.
	StaleAfter time.Duration
	// Log receives one line per stale lock removed, per wait, and per failed
	// refresh; nil discards them. It is written from background goroutines.
	Log io.Writer
	// Command is recorded in the lock; "" records the process's arguments.
	Command string

	// onRefresh, if set, is called after each successful refresh with the
	// new object's name (tests).
	onRefresh func(object string)
}

func (o Options) withDefaults() Options {
	if o.StaleAfter <= 0 {
		o.StaleAfter = DefaultStaleAfter
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Command == "" {
		o.Command = strings.Join(os.Args, " ")
	}
	return o
}

// refreshInterval is how often a held lock is refreshed.
func refreshInterval(staleAfter time.Duration) time.Duration {
	return max(staleAfter/6, time.Millisecond)
}

// lostAfter is how long after the start of its last successful write a
// lock that could not be refreshed is lost: safely below staleAfter, so
// that nobody considers it stale while its holder still works.
func lostAfter(staleAfter time.Duration) time.Duration {
	return max(staleAfter/2, time.Millisecond)
}

// LockedError is the error of Acquire when conflicting locks are held.
type LockedError struct {
	// Location is the repository's storage location.
	Location string
	// Holders are the conflicting locks.
	Holders []Info
	// Waited is how long Acquire waited.
	Waited time.Duration
}

// Error names every holder and says what to do.
func (e *LockedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "repository %s is locked", e.Location)
	if e.Waited > 0 {
		fmt.Fprintf(&b, " (waited %s)", e.Waited.Round(time.Millisecond))
	}
	b.WriteString(" by ")
	for i, h := range e.Holders {
		if i > 0 {
			b.WriteString("; and by ")
		}
		b.WriteString(h.String())
	}
	b.WriteString(". If that process is still running, wait for it or retry with --retry-lock DUR; " +
		"if it is gone, `stasis unlock` removes stale locks")
	return b.String()
}

// Unwrap makes errors.Is(err, ErrLocked) true.
func (e *LockedError) Unwrap() error { return ErrLocked }

// Lock is a held lock. Its methods are safe for concurrent use.
type Lock struct {
	st   backend.Storage
	opts Options
	id   string

	mu       sync.Mutex
	info     Info     // as last written
	cur      string   // the current object
	seq      uint64   // of the last object name used
	pending  []string // objects that may exist besides cur: failed Puts, failed Deletes
	lastErr  error    // of the last failed refresh since the last success
	err      error    // why the lock was lost
	released bool

	ctx      context.Context // cancelled by Release and when lost
	cancel   context.CancelFunc
	stopped  chan struct{} // closed when refreshLoop returned
	lost     chan struct{}
	lostOnce sync.Once
	watchdog *time.Timer
	release  sync.Once
	relErr   error
}

// Info returns the lock as last written.
func (l *Lock) Info() Info {
	l.mu.Lock()
	defer l.mu.Unlock()
	i := l.info
	i.Objects = []string{l.cur}
	return i
}

// Done is closed when the lock is lost (see Err). It is not closed by
// Release.
func (l *Lock) Done() <-chan struct{} { return l.lost }

// Err returns nil while the lock is held, and after Done is closed an error
// matching ErrLost that says why: the lock was removed by another process,
// or no refresh succeeded in time (with the last refresh error).
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Context returns a context derived from parent that is cancelled, with
// Err as its cause (context.Cause), when the lock is lost. The caller must
// call cancel when done with it.
func (l *Lock) Context(parent context.Context) (ctx context.Context, cancel context.CancelFunc) {
	ctx, cancelCause := context.WithCancelCause(parent)
	go func() {
		select {
		case <-l.lost:
			cancelCause(l.Err())
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancelCause(nil) }
}

// lose marks the lock lost with err (which matches ErrLost), unless it was
// released or already lost.
func (l *Lock) lose(err error) {
	l.mu.Lock()
	if l.released || l.err != nil {
		l.mu.Unlock()
		return
	}
	l.err = err
	l.mu.Unlock()
	fmt.Fprintf(l.opts.Log, "%v\n", err)
	l.lostOnce.Do(func() { close(l.lost) })
	l.cancel() // abort a refresh in progress
}

// Release stops the refresh and deletes the lock's objects. Calling it again
// returns the first call's result. After the lock was lost, Release deletes
// what may be left of it and returns nil unless a deletion failed.
func (l *Lock) Release() error {
	l.release.Do(func() {
		l.mu.Lock()
		l.released = true
		l.mu.Unlock()
		l.watchdog.Stop()
		l.cancel()
		<-l.stopped
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		l.mu.Lock()
		names := append([]string{l.cur}, l.pending...)
		l.mu.Unlock()
		if err := removeObjects(ctx, l.st, l.id, names); err != nil {
			l.relErr = fmt.Errorf("release lock: %w; it becomes stale %s after its last refresh, or run `stasis unlock --remove-all` when no stasis process uses the repository",
				err, l.opts.StaleAfter)
		}
	})
	return l.relErr
}

// Acquire takes a shared or exclusive lock on the repository in st, writing
// locks/<random id>.<seq>. It removes stale locks (logging each to
// opts.Log), and waits up to opts.RetryFor for conflicting locks to go away,
// re-checking with growing delays. If a conflict remains, the error is a
// *LockedError matching ErrLocked. The caller must Release the lock, and
// should stop its work when Done is closed (Context, With).
func Acquire(ctx context.Context, st backend.Storage, exclusive bool, opts Options) (*Lock, error) {
	opts = opts.withDefaults()
	me, err := newInfo(exclusive, opts)
	if err != nil {
		return nil, err
	}
	a := &acquirer{st: st, me: me, opts: opts}
	start := time.Now()
	deadline := start.Add(opts.RetryFor)
	delay := 10 * time.Millisecond
	waitLogged := false
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("lock repository %s: %w", st.Location(), err)
		}
		var conflicts []Info
		try := true
		if a.known {
			// Waiting: look without writing; write only when no conflict
			// is left (by an estimate of the storage's clock that can only
			// be behind it).
			if conflicts, err = a.precheck(ctx); err != nil {
				return nil, err
			}
			try = len(conflicts) == 0
		}
		if try {
			var l *Lock
			if l, conflicts, err = a.attempt(ctx); err != nil || l != nil {
				return l, err
			}
		}
		if !time.Now().Before(deadline) {
			return nil, &LockedError{Location: st.Location(), Holders: conflicts, Waited: time.Since(start)}
		}
		if !waitLogged {
			fmt.Fprintf(opts.Log, "repository %s is locked by %s; waiting up to %s\n", st.Location(), conflicts[0], opts.RetryFor)
			waitLogged = true
		}
		// Randomised delay so that two racing lockers do not retry in step.
		d := delay/2 + rand.N(delay)
		if rest := time.Until(deadline); d > rest {
			d = rest
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		delay = min(delay*2, time.Second)
	}
}

// acquirer is the state of one Acquire.
type acquirer struct {
	st   backend.Storage
	me   Info
	opts Options
	seq  uint64

	// known is set once ref, a ModTime of an object just written, and
	// refAt, the local time after it was read, are known: ref plus the
	// time since refAt is at most the storage's current time.
	known bool
	ref   time.Time
	refAt time.Time
}

// attempt writes the lock object, lists, and either holds the lock (l) or
// deletes its object again and returns the conflicts.
func (a *acquirer) attempt(ctx context.Context) (l *Lock, conflicts []Info, err error) {
	a.seq++
	name := objectName(a.me.ID, a.seq)
	now := time.Now().UTC()
	if a.me.Time.IsZero() {
		a.me.Time = now
	}
	a.me.Refreshed = now
	data, err := Encode(a.me)
	if err != nil {
		return nil, nil, err
	}
	putStart := time.Now()
	if err := backend.PutBytes(ctx, a.st, name, data); err != nil {
		err = fmt.Errorf("write lock object %s in %s: %w", name, a.st.Location(), err)
		return nil, nil, a.undo(ctx, name, err)
	}
	fi, err := a.st.Stat(ctx, name)
	if err != nil {
		err = fmt.Errorf("stat own lock object %s in %s: %w", name, a.st.Location(), err)
		return nil, nil, a.undo(ctx, name, err)
	}
	a.known, a.ref, a.refAt = true, fi.ModTime, time.Now()
	all, probes, err := list(ctx, a.st)
	if err != nil {
		return nil, nil, a.undo(ctx, name, err)
	}
	ref := fi.ModTime
	for _, o := range all {
		// A listed ModTime may be more precise than Stat's (S3).
		if o.ID == a.me.ID && o.ModTime.After(ref) {
			ref = o.ModTime
		}
	}
	self := selfProcess()
	for _, o := range all {
		if o.ID == a.me.ID {
			continue
		}
		o.Age, o.Judged = ref.Sub(o.ModTime), true
		if why := staleReason(o, self, a.opts.StaleAfter, ref); why != "" {
			if err := removeStale(ctx, a.st, o, why, a.opts.Log); err != nil {
				return nil, nil, a.undo(ctx, name, err)
			}
			continue
		}
		if a.me.Exclusive || o.Exclusive || o.Err != nil {
			conflicts = append(conflicts, o)
		}
	}
	removeStaleProbes(ctx, a.st, probes, ref, a.opts.StaleAfter)
	if len(conflicts) > 0 {
		if err := a.undo(ctx, name, nil); err != nil {
			return nil, nil, err
		}
		return nil, conflicts, nil
	}
	return newLock(a.st, a.me, name, a.seq, putStart, a.opts), nil, nil
}

// undo deletes the object name of a failed attempt and returns err joined
// with a deletion error. It deletes also after ctx ended.
func (a *acquirer) undo(ctx context.Context, name string, err error) error {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if derr := a.st.Delete(dctx, name); derr != nil && !errors.Is(derr, backend.ErrNotExist) {
		return errors.Join(err, fmt.Errorf("delete own lock object %s: %w; it becomes stale after %s, or run `stasis unlock`",
			name, derr, a.opts.StaleAfter))
	}
	return err
}

// precheck lists the locks and returns those that conflict and do not look
// stale by an estimate of the storage's clock. It writes and deletes
// nothing.
func (a *acquirer) precheck(ctx context.Context) ([]Info, error) {
	all, _, err := list(ctx, a.st)
	if err != nil {
		return nil, err
	}
	ref := a.ref.Add(time.Since(a.refAt))
	self := selfProcess()
	var out []Info
	for _, o := range all {
		if o.ID == a.me.ID {
			continue // a leftover of our own attempt: ignore it
		}
		o.Age, o.Judged = ref.Sub(o.ModTime), true
		if staleReason(o, self, a.opts.StaleAfter, ref) != "" {
			continue
		}
		if a.me.Exclusive || o.Exclusive || o.Err != nil {
			out = append(out, o)
		}
	}
	return out, nil
}

// newLock makes the Lock for its written object name and starts its
// refresh. putStart is when the write of name started.
func newLock(st backend.Storage, me Info, name string, seq uint64, putStart time.Time, opts Options) *Lock {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Lock{
		st:      st,
		opts:    opts,
		id:      me.ID,
		info:    me,
		cur:     name,
		seq:     seq,
		ctx:     ctx,
		cancel:  cancel,
		stopped: make(chan struct{}),
		lost:    make(chan struct{}),
	}
	l.watchdog = time.AfterFunc(time.Until(putStart.Add(lostAfter(opts.StaleAfter))), l.expire)
	go l.refreshLoop(putStart)
	return l
}

// expire runs when no refresh succeeded for lostAfter.
func (l *Lock) expire() {
	l.mu.Lock()
	last := l.lastErr
	l.mu.Unlock()
	why := "a refresh is still in progress"
	if last != nil {
		why = "last error: " + last.Error()
	}
	l.lose(fmt.Errorf("%w: the lock could not be refreshed for %s (%s); other processes may consider it stale after %s",
		ErrLost, lostAfter(l.opts.StaleAfter), why, l.opts.StaleAfter))
}

func (l *Lock) refreshLoop(lastOK time.Time) {
	defer close(l.stopped)
	interval := refreshInterval(l.opts.StaleAfter)
	lost := lostAfter(l.opts.StaleAfter)
	firstRetry := max(l.opts.StaleAfter/60, time.Millisecond)
	retry := firstRetry
	next := lastOK.Add(interval)
	for {
		t := time.NewTimer(time.Until(next))
		select {
		case <-l.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		start := time.Now()
		deadline := lastOK.Add(lost)
		if d := start.Add(interval); d.Before(deadline) {
			deadline = d
		}
		actx, cancel := context.WithDeadline(l.ctx, deadline)
		object, err := l.refresh(actx)
		cancel()
		if l.ctx.Err() != nil {
			return // released, or lost meanwhile
		}
		if err == nil {
			lastOK = start
			l.watchdog.Reset(time.Until(start.Add(lost)))
			l.mu.Lock()
			l.lastErr = nil
			l.mu.Unlock()
			retry = firstRetry
			next = start.Add(interval)
			if l.opts.onRefresh != nil {
				l.opts.onRefresh(object)
			}
			continue
		}
		if errors.Is(err, errRemoved) {
			l.lose(fmt.Errorf("%w: %w", ErrLost, err))
			return
		}
		l.mu.Lock()
		l.lastErr = err
		l.mu.Unlock()
		left := time.Until(lastOK.Add(lost)).Round(time.Millisecond)
		fmt.Fprintf(l.opts.Log, "refresh repository lock: %v; retrying (the lock is lost if no refresh succeeds within %s)\n", err, left)
		next = time.Now().Add(retry)
		retry = min(retry*2, interval)
	}
}

// refresh writes the next object of the lock, checks that the current one
// still exists and deletes it. It returns an error matching errRemoved if
// the lock was removed.
func (l *Lock) refresh(ctx context.Context) (string, error) {
	l.mu.Lock()
	info, cur := l.info, l.cur
	l.seq++
	name := objectName(l.id, l.seq)
	l.mu.Unlock()
	info.Refreshed = time.Now().UTC()
	data, err := Encode(info)
	if err != nil {
		return "", err
	}
	if err := backend.PutBytes(ctx, l.st, name, data); err != nil {
		l.discard(ctx, name) // the Put may have happened anyway
		return "", fmt.Errorf("write lock object %s: %w", name, err)
	}
	_, err = l.st.Stat(ctx, cur)
	if err == nil {
		err = l.st.Delete(ctx, cur)
		if err != nil && !errors.Is(err, backend.ErrNotExist) {
			// The new object is the lock now; cur goes later.
			fmt.Fprintf(l.opts.Log, "refresh repository lock: delete previous object %s: %v; retrying later\n", cur, err)
			l.mu.Lock()
			l.pending = append(l.pending, cur)
			err = nil
			l.mu.Unlock()
		}
	}
	if errors.Is(err, backend.ErrNotExist) {
		l.discard(ctx, name)
		return "", fmt.Errorf("lock object %s is gone: %w", cur, errRemoved)
	}
	if err != nil {
		l.discard(ctx, name)
		return "", fmt.Errorf("check lock object %s: %w", cur, err)
	}
	l.mu.Lock()
	l.cur, l.info = name, info
	pending := l.pending
	l.pending = nil
	l.mu.Unlock()
	for _, p := range pending {
		if err := l.st.Delete(ctx, p); err != nil && !errors.Is(err, backend.ErrNotExist) {
			l.mu.Lock()
			l.pending = append(l.pending, p)
			l.mu.Unlock()
		}
	}
	return name, nil
}

// discard deletes an object written by a failed refresh, also after ctx
// ended; if that fails, Release or the next refresh tries again.
func (l *Lock) discard(ctx context.Context, name string) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(cleanupTimeout, refreshInterval(l.opts.StaleAfter)))
	defer cancel()
	if err := l.st.Delete(dctx, name); err != nil && !errors.Is(err, backend.ErrNotExist) {
		l.mu.Lock()
		l.pending = append(l.pending, name)
		l.mu.Unlock()
	}
}

// With runs fn holding a lock on st and releases it afterwards, also when
// fn panics. The context passed to fn is cancelled, with the lock's Err as
// its cause, if the lock is lost while fn runs; With then returns that
// error (joined with fn's error, if fn returned one that does not already
// match ErrLost). A Release error is returned if there was no other error.
func With(ctx context.Context, st backend.Storage, exclusive bool, opts Options, fn func(ctx context.Context) error) (err error) {
	l, err := Acquire(ctx, st, exclusive, opts)
	if err != nil {
		return err
	}
	lctx, cancel := l.Context(ctx)
	defer func() {
		cancel()
		if lerr := l.Err(); lerr != nil {
			switch {
			case err == nil:
				err = lerr
			case !errors.Is(err, ErrLost):
				err = errors.Join(lerr, err)
			}
		}
		if rerr := l.Release(); err == nil {
			err = rerr
		}
	}()
	return fn(lctx)
}

func removeStale(ctx context.Context, st backend.Storage, o Info, why string, log io.Writer) error {
	if err := removeObjects(ctx, st, o.ID, o.Objects); err != nil {
		return fmt.Errorf("remove stale lock %s: %w", o.ID, err)
	}
	fmt.Fprintf(log, "removed stale lock %s: %s (%s)\n", o.ID, o, why)
	return nil
}

// removeObjects deletes names and then every other object of lock id,
// listing again until none is left, so that a refresh that raced with the
// deletion does not survive it.
func removeObjects(ctx context.Context, st backend.Storage, id string, names []string) error {
	for round := 0; ; round++ {
		for _, n := range names {
			if err := st.Delete(ctx, n); err != nil && !errors.Is(err, backend.ErrNotExist) {
				return fmt.Errorf("delete lock object %s: %w", n, err)
			}
		}
		left, err := objectsOf(ctx, st, id)
		if err != nil {
			return err
		}
		if len(left) == 0 {
			return nil
		}
		names = make([]string, len(left))
		for i, o := range left {
			names[i] = o.Name
		}
		if round == 10 {
			return fmt.Errorf("lock %s: new objects keep appearing (%s); is its holder still running?", id, strings.Join(names, ", "))
		}
	}
}

// removeStaleProbes deletes probe objects older than staleAfter by ref,
// left by processes that crashed between writing and deleting them. Errors
// are ignored: a probe does not block anyone.
func removeStaleProbes(ctx context.Context, st backend.Storage, probes []backend.ObjectInfo, ref time.Time, staleAfter time.Duration) {
	for _, p := range probes {
		if ref.Sub(p.ModTime) > staleAfter {
			_ = st.Delete(ctx, p.Name)
		}
	}
}

// staleReason says why o is stale, or "" if it is not. ref is a time by the
// storage's clock, no later than its current time.
func staleReason(o Info, self process, staleAfter time.Duration, ref time.Time) string {
	limit := max(staleAfter, o.StaleAfter)
	if age := ref.Sub(o.ModTime); age > limit {
		return fmt.Sprintf("not refreshed for %s by the storage's clock, more than %s", age.Round(time.Second), limit)
	}
	if o.Err != nil || self.host == "" || o.Host != self.host {
		return ""
	}
	if o.MachineID != "" && self.machineID != "" && o.MachineID != self.machineID {
		return "" // another machine with the same host name
	}
	if o.BootID != "" && self.bootID != "" && o.BootID != self.bootID {
		return "written before this host rebooted"
	}
	if o.PIDNamespace != "" && self.pidNS != "" && o.PIDNamespace != self.pidNS {
		return "" // another pid namespace (container): its pids are not ours to check
	}
	alive, start := processAlive(o.PID)
	if !alive {
		return fmt.Sprintf("process %d on this host is gone", o.PID)
	}
	if o.PIDStart != 0 && start != 0 && start != o.PIDStart {
		return fmt.Sprintf("process %d on this host is gone; the pid now belongs to another process", o.PID)
	}
	return ""
}

// objectName is the name of object seq of lock id.
func objectName(id string, seq uint64) string {
	return Prefix + id + "." + strconv.FormatUint(seq, 10)
}

// parseName splits the name of an object under Prefix into its lock id and
// sequence number. probe is set for a probe object. An object of another
// form is a lock of its own, with its name (without Prefix) as id.
func parseName(name string) (id string, seq uint64, probe bool) {
	base := strings.TrimPrefix(name, Prefix)
	if i := strings.LastIndexByte(base, '.'); i > 0 && !strings.Contains(base, "/") {
		suffix := base[i+1:]
		if "."+suffix == probeSuffix {
			return base[:i], 0, true
		}
		if n, err := strconv.ParseUint(suffix, 10, 64); err == nil && strconv.FormatUint(n, 10) == suffix {
			return base[:i], n, false
		}
	}
	return base, 0, false
}

// objectsOf lists the objects of lock id.
func objectsOf(ctx context.Context, st backend.Storage, id string) ([]backend.ObjectInfo, error) {
	var out []backend.ObjectInfo
	err := st.List(ctx, Prefix+id, func(o backend.ObjectInfo) error {
		if oid, _, probe := parseName(o.Name); oid == id && !probe {
			out = append(out, o)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list lock %s in %s: %w", id, st.Location(), err)
	}
	return out, nil
}

// sortObjects orders the objects of one lock oldest first: by sequence
// number, then ModTime, then name.
func sortObjects(objs []backend.ObjectInfo) {
	slices.SortFunc(objs, func(a, b backend.ObjectInfo) int {
		_, sa, _ := parseName(a.Name)
		_, sb, _ := parseName(b.Name)
		if sa != sb {
			if sa < sb {
				return -1
			}
			return 1
		}
		if c := a.ModTime.Compare(b.ModTime); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
}

// List returns the locks of the repository in st, oldest first, one per
// lock id, described by its newest readable object. A lock object that
// cannot be read or decoded is listed with Err set. Probe objects are not
// locks and are not listed.
func List(ctx context.Context, st backend.Storage) ([]Info, error) {
	locks, _, err := list(ctx, st)
	return locks, err
}

func list(ctx context.Context, st backend.Storage) (locks []Info, probes []backend.ObjectInfo, err error) {
	groups := map[string][]backend.ObjectInfo{}
	err = st.List(ctx, Prefix, func(o backend.ObjectInfo) error {
		id, _, probe := parseName(o.Name)
		if probe {
			probes = append(probes, o)
		} else {
			groups[id] = append(groups[id], o)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list locks in %s: %w", st.Location(), err)
	}
	for id, objs := range groups {
		info, ok, err := describe(ctx, st, id, objs)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			locks = append(locks, info)
		}
	}
	slices.SortFunc(locks, func(a, b Info) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return locks, probes, nil
}

// describe reads the newest object of lock id among objs. If every listed
// object is gone (the holder refreshed or released meanwhile), it lists the
// lock's objects again: a refresh writes the new object before deleting the
// old one, so a lock that is still held is found. ok is false for a lock
// that is gone.
func describe(ctx context.Context, st backend.Storage, id string, objs []backend.ObjectInfo) (info Info, ok bool, err error) {
	var newest time.Time // over every object seen: the latest sign of life
	for round := 0; round < 10; round++ {
		sortObjects(objs)
		names := make([]string, len(objs))
		for i, o := range objs {
			names[i] = o.Name
			if o.ModTime.After(newest) {
				newest = o.ModTime
			}
		}
		for i := len(objs) - 1; i >= 0; i-- {
			data, err := backend.ReadAll(ctx, st, objs[i].Name, MaxObjectSize)
			if errors.Is(err, backend.ErrNotExist) {
				continue
			}
			if cerr := ctx.Err(); cerr != nil {
				return Info{}, false, fmt.Errorf("list locks in %s: %w", st.Location(), cerr)
			}
			if err == nil {
				info, err = Decode(data)
			}
			if err != nil {
				info = Info{Exclusive: true, Err: err}
			}
			info.ID, info.Objects, info.ModTime = id, names, newest
			if info.Err != nil {
				info.Time = newest
			}
			return info, true, nil
		}
		if objs, err = objectsOf(ctx, st, id); err != nil {
			return Info{}, false, err
		}
		if len(objs) == 0 {
			return Info{}, false, nil
		}
	}
	return Info{}, false, fmt.Errorf("lock %s in %s: its objects keep disappearing while being read", id, st.Location())
}

// RemoveStale removes the stale locks of the repository in st (see the
// package comment), logging each to opts.Log, and probe objects left by
// crashed processes. It judges ages against a probe object it writes and
// deletes. It returns the locks removed.
func RemoveStale(ctx context.Context, st backend.Storage, opts Options) ([]Info, error) {
	opts = opts.withDefaults()
	probe, ref, err := writeProbe(ctx, st)
	if err != nil {
		return nil, err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		_ = st.Delete(dctx, probe)
	}()
	all, probes, err := list(ctx, st)
	if err != nil {
		return nil, err
	}
	self := selfProcess()
	var removed []Info
	for _, o := range all {
		o.Age, o.Judged = ref.Sub(o.ModTime), true
		if why := staleReason(o, self, opts.StaleAfter, ref); why != "" {
			if err := removeStale(ctx, st, o, why, opts.Log); err != nil {
				return removed, err
			}
			removed = append(removed, o)
		}
	}
	removeStaleProbes(ctx, st, probes, ref, opts.StaleAfter)
	return removed, nil
}

// writeProbe writes a probe object and returns its name and ModTime.
func writeProbe(ctx context.Context, st backend.Storage) (string, time.Time, error) {
	id, err := randomID()
	if err != nil {
		return "", time.Time{}, err
	}
	name := Prefix + id + probeSuffix
	if err := backend.PutBytes(ctx, st, name, []byte("stasis lock clock probe: ignore, or delete if old\n")); err != nil {
		return "", time.Time{}, fmt.Errorf("write lock probe %s in %s: %w", name, st.Location(), err)
	}
	fi, err := st.Stat(ctx, name)
	if err != nil {
		_ = st.Delete(context.WithoutCancel(ctx), name)
		return "", time.Time{}, fmt.Errorf("stat lock probe %s in %s: %w", name, st.Location(), err)
	}
	return name, fi.ModTime, nil
}

// RemoveAll removes every lock of the repository in st, held or not, and
// every probe object (stasis unlock --remove-all). Run it only when no
// stasis process uses the repository: a holder notices only at its next
// refresh. It returns the locks removed.
func RemoveAll(ctx context.Context, st backend.Storage) ([]Info, error) {
	all, probes, err := list(ctx, st)
	if err != nil {
		return nil, err
	}
	var removed []Info
	for _, o := range all {
		if err := removeObjects(ctx, st, o.ID, o.Objects); err != nil {
			return removed, fmt.Errorf("remove lock %s: %w", o.ID, err)
		}
		removed = append(removed, o)
	}
	for _, p := range probes {
		if err := st.Delete(ctx, p.Name); err != nil && !errors.Is(err, backend.ErrNotExist) {
			return removed, fmt.Errorf("delete lock probe %s: %w", p.Name, err)
		}
	}
	return removed, nil
}

func randomID() (string, error) {
	var id [16]byte
	if _, err := crand.Read(id[:]); err != nil {
		return "", fmt.Errorf("make lock id: %w", err)
	}
	return hex.EncodeToString(id[:]), nil
}

func newInfo(exclusive bool, opts Options) (Info, error) {
	id, err := randomID()
	if err != nil {
		return Info{}, err
	}
	self := selfProcess()
	return Info{
		ID:           id,
		Format:       Format,
		Version:      Version,
		Host:         self.host,
		PID:          os.Getpid(),
		Command:      opts.Command,
		User:         currentUser(),
		Exclusive:    exclusive,
		StaleAfter:   opts.StaleAfter,
		PIDStart:     self.start,
		BootID:       self.bootID,
		MachineID:    self.machineID,
		PIDNamespace: self.pidNS,
	}, nil
}

func currentUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "uid " + strconv.Itoa(os.Getuid())
}

// Encode returns the lock object bytes of i.
func Encode(i Info) ([]byte, error) {
	b, err := json.MarshalIndent(i, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode lock %s: %w", i.ID, err)
	}
	return append(b, '\n'), nil
}

// Decode parses lock object bytes. It refuses other formats and versions,
// and locks without host, pid or times.
func Decode(data []byte) (Info, error) {
	var i Info
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&i); err != nil {
		return Info{}, fmt.Errorf("decode lock: %w", err)
	}
	if dec.More() {
		return Info{}, errors.New("decode lock: trailing data after the JSON object")
	}
	switch {
	case i.Format != Format:
		return Info{}, fmt.Errorf("decode lock: format %q, want %q", i.Format, Format)
	case i.Version != Version:
		return Info{}, fmt.Errorf("decode lock: version %d, this stasis knows %d", i.Version, Version)
	case i.Host == "":
		return Info{}, errors.New("decode lock: no host")
	case i.PID <= 0:
		return Info{}, fmt.Errorf("decode lock: invalid pid %d", i.PID)
	case i.Time.IsZero() || i.Refreshed.IsZero():
		return Info{}, errors.New("decode lock: no time or refresh time")
	case i.StaleAfter < 0:
		return Info{}, fmt.Errorf("decode lock: negative stale_after_ns %d", i.StaleAfter)
	}
	return i, nil
}
