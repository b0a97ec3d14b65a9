package backendtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sync"

	"github.com/stasisbackup/stasis/repo/backend"
)

// Op names a backend.Storage operation Faulty can fail.
type Op string

// Operations Faulty can fail.
const (
	OpPut    Op = "put"
	OpGet    Op = "get"
	OpStat   Op = "stat"
	OpList   Op = "list" // Fault.Name is matched against the listed prefix
	OpDelete Op = "delete"
)

// ErrInjected is the default error of a Fault.
var ErrInjected = errors.New("injected fault")

// ErrCrashed is the error of every operation of a Faulty after Crash. It
// matches ErrInjected.
var ErrCrashed = fmt.Errorf("storage crashed: %w", ErrInjected)

// Fault is one injected failure.
//
// Name is a path.Match pattern matched against the object name (for OpList
// against the prefix); "" matches every name. The first Skip matching calls
// succeed, then Times calls fail (0: every later call). Err is the error
// (ErrInjected when nil); the operation's error wraps it and names the
// object.
//
// A failing call does not reach the wrapped storage, except:
//
//   - Torn: for OpPut, the wrapped Put is called with a reader that fails
//     with Err halfway through the data, so a partial upload happens and
//     fails, and (Put being atomic) no object is created; for OpGet, Get
//     succeeds and its reader returns Err after half of the bytes.
//   - Committed: for OpPut and OpDelete, the wrapped operation is done and
//     succeeds, and then Err is returned anyway (a reply lost after the
//     storage committed the change).
type Fault struct {
	Op        Op
	Name      string
	Skip      int
	Times     int
	Err       error
	Torn      bool
	Committed bool

	seen   int
	failed int
}

// Faulty wraps a backend.Storage and injects faults (kopia's
// FaultyStorage), for tests of what the repository does when its storage
// fails. It is safe for concurrent use.
type Faulty struct {
	Storage backend.Storage

	mu      sync.Mutex
	faults  []*Fault
	hooks   []*putHook
	hits    int
	calls   map[Op]int
	crashed bool
}

type putHook struct {
	pattern string
	skip    int
	seen    int
	done    bool
	fn      func(name string)
}

var _ backend.Storage = (*Faulty)(nil)

// NewFaulty wraps s, with no faults.
func NewFaulty(s backend.Storage) *Faulty { return &Faulty{Storage: s, calls: map[Op]int{}} }

// Inject adds a fault. Faults are checked in the order they were added;
// the first one that fires decides.
func (f *Faulty) Inject(ft Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := ft
	c.seen, c.failed = 0, 0
	f.faults = append(f.faults, &c)
}

// AfterPut makes fn run once, after the (skip+1)-th Put of a name matching
// pattern (path.Match; "" matches every name) succeeded on the wrapped
// storage, in the Put's goroutine and before Put returns. When fn calls
// Crash, that Put returns ErrCrashed: the process "died" after the object
// became durable but before it learned so (for crash-ordering tests).
func (f *Faulty) AfterPut(pattern string, skip int, fn func(name string)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hooks = append(f.hooks, &putHook{pattern: pattern, skip: skip, fn: fn})
}

// Crash makes every later operation fail with ErrCrashed without reaching
// the wrapped storage, until Reset.
func (f *Faulty) Crash() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crashed = true
}

// Crashed reports whether Crash was called since the last Reset.
func (f *Faulty) Crashed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.crashed
}

// Reset removes every fault and hook and undoes Crash. The counters of
// Hits and Calls go on.
func (f *Faulty) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults, f.hooks, f.crashed = nil, nil, false
}

// Hits returns how many calls failed because of a fault so far (Crash not
// counted).
func (f *Faulty) Hits() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits
}

// Calls returns how many calls of op were made so far, failed ones
// included.
func (f *Faulty) Calls(op Op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

func match(pattern, name string) bool {
	if pattern == "" {
		return true
	}
	ok, _ := path.Match(pattern, name)
	return ok
}

// check counts a call of op on name and returns the fault that fires, if
// any (and ErrCrashed after Crash).
func (f *Faulty) check(op Op, name string) (*Fault, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op]++
	if f.crashed {
		return nil, fmt.Errorf("%s %s: %w", op, name, ErrCrashed)
	}
	for _, ft := range f.faults {
		if ft.Op != op || !match(ft.Name, name) {
			continue
		}
		if ft.Times > 0 && ft.failed >= ft.Times {
			continue
		}
		if ft.seen < ft.Skip {
			ft.seen++
			continue
		}
		ft.failed++
		f.hits++
		c := *ft
		if c.Err == nil {
			c.Err = ErrInjected
		}
		return &c, nil
	}
	return nil, nil
}

func (ft *Fault) error(op Op, name string) error {
	return fmt.Errorf("%s %s: %w", op, name, ft.Err)
}

// Location implements backend.Storage.
func (f *Faulty) Location() string { return f.Storage.Location() }

// Put implements backend.Storage.
func (f *Faulty) Put(ctx context.Context, name string, r io.ReaderAt, size int64) error {
	ft, err := f.check(OpPut, name)
	if err != nil {
		return err
	}
	if ft != nil && !ft.Committed {
		if ft.Torn && size > 0 {
			tr := &tornReader{r: r, at: size / 2, err: ft.Err}
			if err := f.Storage.Put(ctx, name, tr, size); err != nil {
				return fmt.Errorf("put %s (torn): %w", name, err)
			}
			return fmt.Errorf("put %s (torn, but the wrapped storage took it): %w", name, ft.Err)
		}
		return ft.error(OpPut, name)
	}
	if err := f.Storage.Put(ctx, name, r, size); err != nil {
		return err
	}
	f.afterPut(name)
	if f.Crashed() {
		return fmt.Errorf("put %s: %w", name, ErrCrashed)
	}
	if ft != nil {
		return ft.error(OpPut, name)
	}
	return nil
}

func (f *Faulty) afterPut(name string) {
	var run []func(string)
	f.mu.Lock()
	for _, h := range f.hooks {
		if h.done || !match(h.pattern, name) {
			continue
		}
		if h.seen < h.skip {
			h.seen++
			continue
		}
		h.done = true
		run = append(run, h.fn)
	}
	f.mu.Unlock()
	for _, fn := range run {
		fn(name)
	}
}

// tornReader fails with err from offset at on.
type tornReader struct {
	r   io.ReaderAt
	at  int64
	err error
}

func (t *tornReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= t.at {
		return 0, t.err
	}
	if rest := t.at - off; int64(len(p)) > rest {
		n, err := t.r.ReadAt(p[:rest], off)
		if err == nil || err == io.EOF {
			err = t.err
		}
		return n, err
	}
	return t.r.ReadAt(p, off)
}

// Get implements backend.Storage.
func (f *Faulty) Get(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	ft, err := f.check(OpGet, name)
	if err != nil {
		return nil, err
	}
	if ft != nil && !ft.Torn {
		return nil, ft.error(OpGet, name)
	}
	rc, err := f.Storage.Get(ctx, name, off, length)
	if err != nil || ft == nil {
		return rc, err
	}
	// Torn: half of what the range holds, then the error.
	n := length
	if fi, err := f.Storage.Stat(ctx, name); err == nil && (n < 0 || off+n > fi.Size) {
		n = max(fi.Size-off, 0)
	}
	return &tornBody{rc: rc, left: n / 2, err: ft.error(OpGet, name)}, nil
}

type tornBody struct {
	rc   io.ReadCloser
	left int64
	err  error
}

func (t *tornBody) Read(p []byte) (int, error) {
	if t.left <= 0 {
		return 0, t.err
	}
	if int64(len(p)) > t.left {
		p = p[:t.left]
	}
	n, err := t.rc.Read(p)
	t.left -= int64(n)
	if err == io.EOF {
		err = t.err
	}
	return n, err
}

func (t *tornBody) Close() error { return t.rc.Close() }

// Stat implements backend.Storage.
func (f *Faulty) Stat(ctx context.Context, name string) (backend.ObjectInfo, error) {
	ft, err := f.check(OpStat, name)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	if ft != nil {
		return backend.ObjectInfo{}, ft.error(OpStat, name)
	}
	return f.Storage.Stat(ctx, name)
}

// List implements backend.Storage.
func (f *Faulty) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	ft, err := f.check(OpList, prefix)
	if err != nil {
		return err
	}
	if ft != nil {
		return ft.error(OpList, prefix)
	}
	return f.Storage.List(ctx, prefix, fn)
}

// Delete implements backend.Storage.
func (f *Faulty) Delete(ctx context.Context, name string) error {
	ft, err := f.check(OpDelete, name)
	if err != nil {
		return err
	}
	if ft != nil && !ft.Committed {
		return ft.error(OpDelete, name)
	}
	if err := f.Storage.Delete(ctx, name); err != nil {
		return err
	}
	if ft != nil {
		return ft.error(OpDelete, name)
	}
	return nil
}
