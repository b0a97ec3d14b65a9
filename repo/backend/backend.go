// Package backend is where repository files live. FS is the small set of file
// operations the repository performs; OS implements it on the local file
// system. Wrappers (for example one that injects faults in tests) implement
// the same interface.
//
// Contract: names are slash-separated and relative to the repository root.
// Errors for missing files match fs.ErrNotExist. WriteFile is atomic: after a
// crash the file either does not exist or holds all its bytes.
package backend

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
)

// File is an open repository file.
type File interface {
	io.Reader
	io.ReaderAt
	io.Writer
	io.Closer
	Sync() error
	Stat() (fs.FileInfo, error)
	Name() string
}

// FS is the file access the repository needs.
type FS interface {
	// Root returns the repository directory (for messages).
	Root() string
	// Open opens a file for reading.
	Open(name string) (File, error)
	// CreateTemp creates a new temporary file in dir for writing.
	CreateTemp(dir, pattern string) (File, error)
	// Rename atomically moves a file; the caller syncs the directory.
	Rename(oldName, newName string) error
	// SyncDir fsyncs a directory so renames in it are durable.
	SyncDir(dir string) error
	// Remove removes a file.
	Remove(name string) error
	// MkdirAll creates a directory and its parents.
	MkdirAll(dir string) error
	// ReadDir lists a directory.
	ReadDir(dir string) ([]fs.DirEntry, error)
	// Stat returns file information.
	Stat(name string) (fs.FileInfo, error)
}

// OS is FS on the local file system, rooted at a directory.
type OS struct{ Dir string }

var _ FS = OS{}

func (o OS) p(name string) string { return filepath.Join(o.Dir, filepath.FromSlash(name)) }

// Root implements FS.
func (o OS) Root() string { return o.Dir }

// Open implements FS.
func (o OS) Open(name string) (File, error) { return os.Open(o.p(name)) }

// CreateTemp implements FS. The File's Name is the repository-relative name.
func (o OS) CreateTemp(dir, pattern string) (File, error) {
	f, err := os.CreateTemp(o.p(dir), pattern)
	if err != nil {
		return nil, err
	}
	return relFile{f, path.Join(dir, filepath.Base(f.Name()))}, nil
}

type relFile struct {
	*os.File
	rel string
}

func (r relFile) Name() string { return r.rel }

// Rename implements FS.
func (o OS) Rename(oldName, newName string) error { return os.Rename(o.p(oldName), o.p(newName)) }

// SyncDir implements FS.
func (o OS) SyncDir(dir string) error {
	d, err := os.Open(o.p(dir))
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Remove implements FS.
func (o OS) Remove(name string) error { return os.Remove(o.p(name)) }

// MkdirAll implements FS.
func (o OS) MkdirAll(dir string) error { return os.MkdirAll(o.p(dir), 0o700) }

// ReadDir implements FS.
func (o OS) ReadDir(dir string) ([]fs.DirEntry, error) { return os.ReadDir(o.p(dir)) }

// Stat implements FS.
func (o OS) Stat(name string) (fs.FileInfo, error) { return os.Stat(o.p(name)) }

// WriteFile writes a whole file atomically: temp file in dir, fsync, rename,
// fsync of the directory. write fills the file.
func WriteFile(b FS, name string, write func(w io.Writer) error) error {
	dir := path.Dir(name)
	f, err := b.CreateTemp("tmp", "write-*")
	if err != nil {
		return fmt.Errorf("create temp file for %s: %w", name, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			b.Remove(tmp)
		}
	}()
	if err := write(f); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", name, err)
	}
	if err := b.Rename(tmp, name); err != nil {
		return fmt.Errorf("rename %s into place: %w", name, err)
	}
	ok = true
	if err := b.SyncDir(dir); err != nil {
		return fmt.Errorf("fsync directory of %s: %w", name, err)
	}
	return nil
}

// ReadFile reads a whole file.
func ReadFile(b FS, name string) ([]byte, error) {
	f, err := b.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}
