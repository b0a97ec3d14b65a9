package backend

import (
	"errors"
	"io/fs"
	"path"
	"sync"
	"syscall"
)

// Op names an FS operation that Faulty can fail.
type Op string

// Operations Faulty can fail.
const (
	OpCreate  Op = "create"  // CreateTemp
	OpWrite   Op = "write"   // File.Write on a file from CreateTemp
	OpSync    Op = "sync"    // File.Sync
	OpRename  Op = "rename"  // Rename (matched against the new name)
	OpSyncDir Op = "syncdir" // SyncDir
	OpRemove  Op = "remove"  // Remove
)

// ErrInjected is the default error of a Fault.
var ErrInjected = errors.New("injected fault")

// Fault is one injected failure. Name is a path.Match pattern matched against
// the repository-relative name ("" matches every name); for OpWrite it is the
// temp file's name, for OpRename the new name. The first Skip matching calls
// succeed (for OpWrite: the first Skip bytes are written), then Times calls
// fail (0: every later call). Err is the error returned (ErrInjected when
// nil). For OpWrite, Short makes the failing call write half of its bytes and
// return a nil error (a short write); otherwise the bytes up to the Skip
// limit are written and Err is returned, as a full disk does.
type Fault struct {
	Op    Op
	Name  string
	Skip  int64
	Times int
	Err   error
	Short bool

	seen   int64 // matching calls, or bytes for OpWrite
	failed int
}

// Faulty wraps an FS and injects faults (kopia's FaultyStorage, for tests
// of what the repository does when storage fails). It is safe for
// concurrent use.
type Faulty struct {
	FS FS

	mu     sync.Mutex
	faults []*Fault
	hits   int
}

var _ FS = (*Faulty)(nil)

// NewFaulty wraps fs with no faults.
func NewFaulty(fs FS) *Faulty { return &Faulty{FS: fs} }

// Inject adds a fault.
func (f *Faulty) Inject(ft Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := ft
	f.faults = append(f.faults, &c)
}

// Reset removes every fault.
func (f *Faulty) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = nil
}

// Hits returns how many faults were injected so far.
func (f *Faulty) Hits() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits
}

// check decides whether a call of op on name fails. n is the byte count of
// a write; allowed is how many of those bytes may be written first.
func (f *Faulty) check(op Op, name string, n int) (allowed int, short bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ft := range f.faults {
		if ft.Op != op {
			continue
		}
		if ft.Name != "" {
			if ok, _ := path.Match(ft.Name, name); !ok {
				continue
			}
		}
		if ft.Times > 0 && ft.failed >= ft.Times {
			continue
		}
		inc := int64(1)
		if op == OpWrite {
			inc = int64(n)
		}
		if ft.seen+inc <= ft.Skip {
			ft.seen += inc
			continue
		}
		allowed = 0
		if op == OpWrite {
			allowed = int(ft.Skip - ft.seen)
			if allowed < 0 {
				allowed = 0
			}
			ft.seen = ft.Skip
		}
		ft.failed++
		f.hits++
		e := ft.Err
		if e == nil {
			e = ErrInjected
		}
		if ft.Short {
			return n / 2, true, nil
		}
		return allowed, false, e
	}
	return n, false, nil
}

func (f *Faulty) fail(op Op, name string) error {
	if _, _, err := f.check(op, name, 0); err != nil {
		return &fs.PathError{Op: string(op), Path: name, Err: err}
	}
	return nil
}

// Root implements FS.
func (f *Faulty) Root() string { return f.FS.Root() }

// Open implements FS.
func (f *Faulty) Open(name string) (File, error) { return f.FS.Open(name) }

// CreateTemp implements FS; writes and syncs of the file may fail.
func (f *Faulty) CreateTemp(dir, pattern string) (File, error) {
	if err := f.fail(OpCreate, path.Join(dir, pattern)); err != nil {
		return nil, err
	}
	file, err := f.FS.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &faultyFile{File: file, f: f}, nil
}

// Rename implements FS.
func (f *Faulty) Rename(oldName, newName string) error {
	if err := f.fail(OpRename, newName); err != nil {
		return &fs.PathError{Op: "rename", Path: oldName + " " + newName, Err: errors.Unwrap(err)}
	}
	return f.FS.Rename(oldName, newName)
}

// SyncDir implements FS.
func (f *Faulty) SyncDir(dir string) error {
	if err := f.fail(OpSyncDir, dir); err != nil {
		return err
	}
	return f.FS.SyncDir(dir)
}

// Remove implements FS.
func (f *Faulty) Remove(name string) error {
	if err := f.fail(OpRemove, name); err != nil {
		return err
	}
	return f.FS.Remove(name)
}

// MkdirAll implements FS.
func (f *Faulty) MkdirAll(dir string) error { return f.FS.MkdirAll(dir) }

// ReadDir implements FS.
func (f *Faulty) ReadDir(dir string) ([]fs.DirEntry, error) { return f.FS.ReadDir(dir) }

// Stat implements FS.
func (f *Faulty) Stat(name string) (fs.FileInfo, error) { return f.FS.Stat(name) }

type faultyFile struct {
	File
	f *Faulty
}

func (w *faultyFile) Write(p []byte) (int, error) {
	allowed, short, err := w.f.check(OpWrite, w.Name(), len(p))
	if err == nil && !short {
		return w.File.Write(p)
	}
	n, werr := w.File.Write(p[:allowed])
	if werr != nil {
		return n, werr
	}
	if short {
		return n, nil
	}
	return n, &fs.PathError{Op: "write", Path: w.Name(), Err: err}
}

func (w *faultyFile) Sync() error {
	if err := w.f.fail(OpSync, w.Name()); err != nil {
		return err
	}
	return w.File.Sync()
}

// ENOSPC is the error of a full disk, for Fault.Err.
var ENOSPC error = syscall.ENOSPC
