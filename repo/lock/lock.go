// Package lock implements repository locks: small JSON files under
// <repo>/locks/ that say which process uses the repository and how.
//
// # Kinds
//
// A shared lock (backup, restore, check) coexists with other shared locks.
// An exclusive lock (prune, forget, repair) excludes every other lock.
//
// # Procedure
//
// [Acquire] lists the lock files and, if none conflicts, writes its own lock
// file atomically (temp file, fsync, rename, fsync of the directory) and then
// lists again. If a conflicting lock appeared meanwhile it removes its own
// file and tries again later. Two processes that race cannot both succeed:
// each one lists after its own file is visible, so the later lister sees the
// other's file. Two racing processes may both back off; retries use a
// randomised, growing delay so that one of them wins.
//
// # Staleness
//
// A lock is stale when its refresh time is older than Options.StaleAfter, or
// when it was written on this host (same hostname) by a process that is gone:
// kill(pid, 0) fails with ESRCH, or the pid now belongs to a process with a
// different start time (/proc/<pid>/stat), or the machine rebooted since
// (/proc/sys/kernel/random/boot_id). A lock of another host is only stale by
// its refresh time. Stale locks are removed by Acquire, with a message to
// Options.Log, and by [RemoveStale] (stasis unlock).
//
// Held locks are refreshed in the background every StaleAfter/3 until
// [Lock.Release]. If the lock file disappears (another process judged it
// stale, or stasis unlock --remove-all removed it), the lock is lost:
// [Lock.Done] is closed and [With] cancels the context of its function.
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
	"io/fs"
	"math/rand/v2"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Format and Version identify a lock file. Readers refuse other versions.
const (
	Format  = "stasis-lock"
	Version = 1
)

// DefaultStaleAfter is the refresh age after which a lock is stale.
const DefaultStaleAfter = 30 * time.Minute

// maxLockFileSize bounds what is read from a lock file.
const maxLockFileSize = 64 << 10

// tempPrefix starts the names of lock files being written; they are not locks.
const tempPrefix = ".tmp-"

// ErrLocked is matched (errors.Is) by the error of Acquire when a conflicting
// lock is held; the error is a *LockedError naming the holders.
var ErrLocked = errors.New("repository is locked")

// ErrLost is the cause of the context cancelled by With when the lock file
// disappeared while the lock was held.
var ErrLost = errors.New("repository lock was removed by another process")

// Info is the content of a lock file.
type Info struct {
	// ID is the lock file's name; it is not stored in the file.
	ID string `json:"-"`

	Format    string    `json:"format"`
	Version   int       `json:"version"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Command   string    `json:"command"`
	User      string    `json:"user"`
	Time      time.Time `json:"time"`
	Refreshed time.Time `json:"refreshed"`
	Exclusive bool      `json:"exclusive"`
	// PIDStart is the start time of the process in clock ticks after boot
	// (field 22 of /proc/<pid>/stat), 0 if unknown; with BootID it tells a
	// dead process from a new one that reuses its pid.
	PIDStart uint64 `json:"pid_start,omitempty"`
	BootID   string `json:"boot_id,omitempty"`

	// Err is set by List for a lock file that cannot be read or decoded;
	// such a lock is treated as exclusive, held by an unknown process, and
	// is stale when its modification time (kept in Refreshed) is older than
	// StaleAfter.
	Err error `json:"-"`
}

// Kind returns "exclusive" or "shared".
func (i Info) Kind() string {
	if i.Exclusive {
		return "exclusive"
	}
	return "shared"
}

// String describes the holder for messages: kind, pid, host, command, user,
// and since when, e.g. `exclusive lock by pid 4711 on host "db1"
// ("stasis prune", user root) since 2026-11-20 03:00:00 +0100 (refreshed
// 2026-11-20 03:20:00 +0100)`.
func (i Info) String() string {
	if i.Err != nil {
		return fmt.Sprintf("unreadable lock file %s (modified %s): %v", i.ID, i.Refreshed.Format(time.DateTime+" -0700"), i.Err)
	}
	return fmt.Sprintf("%s lock by pid %d on host %q (%q, user %s) since %s (refreshed %s)",
		i.Kind(), i.PID, i.Host, i.Command, i.User,
		i.Time.Local().Format(time.DateTime+" -0700"), i.Refreshed.Local().Format(time.DateTime+" -0700"))
}

// Options tunes Acquire, RemoveStale and the background refresh.
type Options struct {
	// RetryFor is how long Acquire waits for conflicting locks to go away;
	// 0 fails at once.
	RetryFor time.Duration
	// StaleAfter is the refresh age after which a lock is stale; 0 means
	// DefaultStaleAfter. A held lock is refreshed every StaleAfter/3.
	StaleAfter time.Duration
	// Log receives one line per stale lock removed, per wait, and per failed
	// refresh; nil discards them.
	Log io.Writer
	// Command is recorded in the lock; "" records the process's arguments.
	Command string

	// testRefreshed, if set, receives the refresh time after each refresh.
	testRefreshed chan<- time.Time
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

// LockedError is the error of Acquire when conflicting locks are held.
type LockedError struct {
	// Dir is the repository directory.
	Dir string
	// Holders are the conflicting locks.
	Holders []Info
	// Waited is how long Acquire waited.
	Waited time.Duration
}

// Error names every holder and says what to do.
func (e *LockedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "repository %s is locked", e.Dir)
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
	dir  string
	path string
	opts Options

	mu   sync.Mutex
	info Info

	stop     chan struct{}
	stopped  chan struct{}
	lost     chan struct{}
	lostOnce sync.Once
	release  sync.Once
	relErr   error
}

// Info returns the lock as last written.
func (l *Lock) Info() Info {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.info
}

// Done is closed when the lock was lost: its file disappeared while held.
// It is not closed by Release.
func (l *Lock) Done() <-chan struct{} { return l.lost }

// Release stops the refresh and removes the lock file. Calling it again
// returns the first call's result.
func (l *Lock) Release() error {
	l.release.Do(func() {
		close(l.stop)
		<-l.stopped
		if err := os.Remove(l.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			l.relErr = fmt.Errorf("remove lock %s: %w; remove the file by hand or run `stasis unlock`", l.path, err)
		}
	})
	return l.relErr
}

// Acquire takes a shared or exclusive lock on the repository in dir,
// writing <dir>/locks/<random id>. It removes stale locks (logging each to
// opts.Log), and waits up to opts.RetryFor for conflicting locks to go away,
// re-checking with growing delays. If a conflict remains, the error is a
// *LockedError matching ErrLocked. dir must exist; the locks directory is
// created if missing. The caller must Release the lock.
func Acquire(ctx context.Context, dir string, exclusive bool, opts Options) (*Lock, error) {
	opts = opts.withDefaults()
	ldir := filepath.Join(dir, "locks")
	if err := os.Mkdir(ldir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create lock directory %s: %w; is %s a stasis repository?", ldir, err, dir)
	}
	me, err := newInfo(exclusive, opts.Command)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	deadline := start.Add(opts.RetryFor)
	delay := 10 * time.Millisecond
	written := false
	waitLogged := false
	for {
		if err := ctx.Err(); err != nil {
			if written {
				_ = os.Remove(filepath.Join(ldir, me.ID))
			}
			return nil, fmt.Errorf("lock repository %s: %w", dir, err)
		}
		conflicts, err := conflicting(ctx, dir, me, opts)
		if err == nil && len(conflicts) == 0 && !written {
			me.Time = time.Now().UTC()
			me.Refreshed = me.Time
			if err = writeInfo(ldir, me); err == nil {
				written = true
				conflicts, err = conflicting(ctx, dir, me, opts)
			}
		}
		if err == nil && len(conflicts) == 0 && written {
			return newLock(dir, ldir, me, opts), nil
		}
		if written {
			if rerr := os.Remove(filepath.Join(ldir, me.ID)); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				return nil, errors.Join(err, fmt.Errorf("remove own lock %s after a conflict: %w; run `stasis unlock`", me.ID, rerr))
			}
			written = false
		}
		if err != nil {
			return nil, err
		}
		if !time.Now().Before(deadline) {
			return nil, &LockedError{Dir: dir, Holders: conflicts, Waited: time.Since(start)}
		}
		if !waitLogged {
			fmt.Fprintf(opts.Log, "repository %s is locked by %s; waiting up to %s\n", dir, conflicts[0], opts.RetryFor)
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

// newLock makes the Lock for a written lock file and starts its refresh.
func newLock(dir, ldir string, me Info, opts Options) *Lock {
	l := &Lock{
		dir:     dir,
		path:    filepath.Join(ldir, me.ID),
		opts:    opts,
		info:    me,
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
		lost:    make(chan struct{}),
	}
	go l.refreshLoop()
	return l
}

func (l *Lock) refreshLoop() {
	defer close(l.stopped)
	t := time.NewTicker(l.opts.StaleAfter / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		if err := l.refresh(); err != nil {
			fmt.Fprintf(l.opts.Log, "%v\n", err)
			if errors.Is(err, ErrLost) {
				l.lostOnce.Do(func() { close(l.lost) })
				return
			}
		}
	}
}

// refresh rewrites the lock file with the current time, unless it is gone.
func (l *Lock) refresh() error {
	if _, err := os.Stat(l.path); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("lock %s: %w", l.path, ErrLost)
	}
	l.mu.Lock()
	info := l.info
	l.mu.Unlock()
	info.Refreshed = time.Now().UTC()
	if err := writeInfo(filepath.Dir(l.path), info); err != nil {
		return fmt.Errorf("refresh lock: %w; the lock becomes stale after %s unless a later refresh succeeds", err, l.opts.StaleAfter)
	}
	l.mu.Lock()
	l.info = info
	l.mu.Unlock()
	if l.opts.testRefreshed != nil {
		l.opts.testRefreshed <- info.Refreshed
	}
	return nil
}

// With runs fn holding a lock on dir and releases it afterwards, also when
// fn panics. The context passed to fn is cancelled with cause ErrLost if the
// lock is lost while fn runs. A Release error is returned if fn succeeded.
func With(ctx context.Context, dir string, exclusive bool, opts Options, fn func(ctx context.Context) error) (err error) {
	l, err := Acquire(ctx, dir, exclusive, opts)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-l.Done():
			cancel(ErrLost)
		case <-ctx.Done():
		}
	}()
	defer func() {
		cancel(nil)
		<-watched
		if rerr := l.Release(); err == nil {
			err = rerr
		}
	}()
	return fn(ctx)
}

// conflicting lists the locks in dir that conflict with me, after removing
// the stale ones.
func conflicting(ctx context.Context, dir string, me Info, opts Options) ([]Info, error) {
	all, err := List(ctx, dir)
	if err != nil {
		return nil, err
	}
	self := selfProcess()
	var out []Info
	for _, o := range all {
		if o.ID == me.ID {
			continue
		}
		if why := staleReason(o, self, opts.StaleAfter, time.Now()); why != "" {
			if err := removeStale(dir, o, why, opts.Log); err != nil {
				return nil, err
			}
			continue
		}
		if me.Exclusive || o.Exclusive || o.Err != nil {
			out = append(out, o)
		}
	}
	return out, nil
}

func removeStale(dir string, o Info, why string, log io.Writer) error {
	err := os.Remove(filepath.Join(dir, "locks", o.ID))
	if errors.Is(err, fs.ErrNotExist) {
		return nil // someone else removed it first
	}
	if err != nil {
		return fmt.Errorf("remove stale lock %s: %w; remove the file by hand", o.ID, err)
	}
	fmt.Fprintf(log, "removed stale lock %s: %s (%s)\n", o.ID, o, why)
	return nil
}

// staleReason says why o is stale, or "" if it is not.
func staleReason(o Info, self process, staleAfter time.Duration, now time.Time) string {
	if age := now.Sub(o.Refreshed); age > staleAfter {
		return fmt.Sprintf("not refreshed for %s, more than %s", age.Round(time.Second), staleAfter)
	}
	if o.Err != nil || o.Host != self.host || self.host == "" {
		return ""
	}
	if o.BootID != "" && self.bootID != "" && o.BootID != self.bootID {
		return "written before this host rebooted"
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

// List returns the locks of the repository in dir, oldest first. A lock file
// that cannot be decoded is listed with Err set. A missing locks directory is
// no error.
func List(ctx context.Context, dir string) ([]Info, error) {
	ldir := filepath.Join(dir, "locks")
	entries, err := os.ReadDir(ldir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list locks in %s: %w", ldir, err)
	}
	var out []Info
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("list locks in %s: %w", ldir, err)
		}
		name := e.Name()
		if strings.HasPrefix(name, tempPrefix) || e.IsDir() {
			continue
		}
		info, err := readInfo(filepath.Join(ldir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // released meanwhile
		}
		info.ID = name
		if err != nil {
			info = Info{ID: name, Exclusive: true, Err: err}
			if fi, serr := os.Stat(filepath.Join(ldir, name)); serr == nil {
				info.Refreshed = fi.ModTime()
				info.Time = fi.ModTime()
			} else if errors.Is(serr, fs.ErrNotExist) {
				continue
			}
		}
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b Info) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// RemoveStale removes the stale locks of the repository in dir (see the
// package comment), logging each to opts.Log, and temp files older than
// opts.StaleAfter left by crashed writers. It returns the locks removed.
func RemoveStale(ctx context.Context, dir string, opts Options) ([]Info, error) {
	opts = opts.withDefaults()
	all, err := List(ctx, dir)
	if err != nil {
		return nil, err
	}
	self := selfProcess()
	var removed []Info
	for _, o := range all {
		if why := staleReason(o, self, opts.StaleAfter, time.Now()); why != "" {
			if err := removeStale(dir, o, why, opts.Log); err != nil {
				return removed, err
			}
			removed = append(removed, o)
		}
	}
	return removed, removeTemps(dir, opts.StaleAfter)
}

// RemoveAll removes every lock of the repository in dir, held or not, and
// every temp file (stasis unlock --remove-all). Run it only when no stasis
// process uses the repository. It returns the locks removed.
func RemoveAll(ctx context.Context, dir string) ([]Info, error) {
	all, err := List(ctx, dir)
	if err != nil {
		return nil, err
	}
	var removed []Info
	for _, o := range all {
		p := filepath.Join(dir, "locks", o.ID)
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("remove lock %s: %w", p, err)
		}
		removed = append(removed, o)
	}
	return removed, removeTemps(dir, 0)
}

func removeTemps(dir string, olderThan time.Duration) error {
	ldir := filepath.Join(dir, "locks")
	entries, err := os.ReadDir(ldir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list locks in %s: %w", ldir, err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), tempPrefix) {
			continue
		}
		fi, err := e.Info()
		if err != nil || time.Since(fi.ModTime()) < olderThan {
			continue
		}
		if err := os.Remove(filepath.Join(ldir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove temp file %s: %w", filepath.Join(ldir, e.Name()), err)
		}
	}
	return nil
}

func newInfo(exclusive bool, command string) (Info, error) {
	var id [16]byte
	if _, err := crand.Read(id[:]); err != nil {
		return Info{}, fmt.Errorf("make lock id: %w", err)
	}
	self := selfProcess()
	return Info{
		ID:        hex.EncodeToString(id[:]),
		Format:    Format,
		Version:   Version,
		Host:      self.host,
		PID:       os.Getpid(),
		Command:   command,
		User:      currentUser(),
		Exclusive: exclusive,
		PIDStart:  self.start,
		BootID:    self.bootID,
	}, nil
}

func currentUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "uid " + strconv.Itoa(os.Getuid())
}

// Encode returns the lock file bytes of i.
func Encode(i Info) ([]byte, error) {
	b, err := json.MarshalIndent(i, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode lock %s: %w", i.ID, err)
	}
	return append(b, '\n'), nil
}

// Decode parses lock file bytes. It refuses other formats and versions, and
// locks without host, pid or times.
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
		return Info{}, fmt.Errorf("decode lock: version %d, this stasis knows %d; use a newer stasis", i.Version, Version)
	case i.Host == "":
		return Info{}, errors.New("decode lock: no host")
	case i.PID <= 0:
		return Info{}, fmt.Errorf("decode lock: invalid pid %d", i.PID)
	case i.Time.IsZero() || i.Refreshed.IsZero():
		return Info{}, errors.New("decode lock: no time or refresh time")
	}
	return i, nil
}

func readInfo(path string) (Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return Info{}, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxLockFileSize+1))
	if err != nil {
		return Info{}, fmt.Errorf("read lock %s: %w", path, err)
	}
	if len(data) > maxLockFileSize {
		return Info{}, fmt.Errorf("lock %s is larger than %d bytes", path, maxLockFileSize)
	}
	i, err := Decode(data)
	if err != nil {
		return Info{}, fmt.Errorf("lock %s: %w", path, err)
	}
	return i, nil
}

// writeInfo writes i to ldir/i.ID atomically: temp file, fsync, rename,
// fsync of the directory.
func writeInfo(ldir string, i Info) error {
	data, err := Encode(i)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(ldir, tempPrefix+i.ID+"-*")
	if err != nil {
		return fmt.Errorf("write lock %s: %w", i.ID, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(ldir, i.ID))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write lock %s in %s: %w", i.ID, ldir, err)
	}
	d, err := os.Open(ldir)
	if err != nil {
		return fmt.Errorf("sync lock directory %s: %w", ldir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync lock directory %s: %w", ldir, err)
	}
	return nil
}
