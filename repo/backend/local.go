package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// TempDir is the directory of a local repository where objects are written
// before they are renamed into place. Its files are not objects: List never
// returns them, and a crash leaves only garbage there (prune removes it).
const TempDir = "tmp"

// Local is a Storage in a local directory. Put writes a temp file in
// TempDir, fsyncs it, renames it into place and fsyncs the directory, so an
// object is durable and whole once Put returns.
type Local struct {
	dir string
	// scratch skips every fsync (NewScratch).
	scratch bool
}

var (
	_ Storage     = (*Local)(nil)
	_ FileAdopter = (*Local)(nil)
	_ TempCleaner = (*Local)(nil)
	_ FileOpener  = (*Local)(nil)
)

// NewLocal returns the Storage of directory dir (which need not exist yet:
// Put creates directories as needed).
func NewLocal(dir string) *Local { return &Local{dir: filepath.Clean(dir)} }

// NewScratch returns the Storage of directory dir for files that need not
// survive a crash: objects are whole once Put returns (written aside and
// renamed) but not fsynced. Only for a directory the caller removes when
// it is done, such as tape restore's spool: a fsync there would make the
// spooled packs wait for the disk before the restore reads them from the
// page cache.
func NewScratch(dir string) *Local { return &Local{dir: filepath.Clean(dir), scratch: true} }

// Dir returns the directory.
func (l *Local) Dir() string { return l.dir }

// Location implements Storage.
func (l *Local) Location() string { return l.dir }

func (l *Local) p(name string) string { return filepath.Join(l.dir, filepath.FromSlash(name)) }

// FileAdopter is implemented by a Storage that can make a local file an
// object without copying its bytes (Local: a rename inside the repository's
// file system). The packer writes packs this way.
type FileAdopter interface {
	// CreateTemp creates an empty temporary file for Adopt.
	CreateTemp() (*os.File, error)
	// Adopt makes the complete file f the object name, atomically and
	// durably, and closes f. On error f is closed and removed.
	Adopt(ctx context.Context, f *os.File, name string) error
}

// CreateTemp implements FileAdopter.
func (l *Local) CreateTemp() (*os.File, error) {
	td := l.p(TempDir)
	f, err := os.CreateTemp(td, "obj-*")
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(td, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", td, err)
		}
		f, err = os.CreateTemp(td, "obj-*")
	}
	return f, err
}

// Adopt implements FileAdopter.
func (l *Local) Adopt(ctx context.Context, f *os.File, name string) error {
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := checkName("put", name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if !l.scratch {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync %s: %w", f.Name(), err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", f.Name(), err)
	}
	final := l.p(name)
	dir := filepath.Dir(final)
	if err := os.Rename(f.Name(), final); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("rename %s into place: %w", name, err)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create directory of %s: %w", name, err)
		}
		// The new directory's entry must be durable too.
		if err := l.syncDirsUp(dir); err != nil {
			return fmt.Errorf("fsync the new directory of %s: %w", name, err)
		}
		if err := os.Rename(f.Name(), final); err != nil {
			return fmt.Errorf("rename %s into place: %w", name, err)
		}
	}
	ok = true
	if l.scratch {
		return nil
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("fsync directory of %s: %w", name, err)
	}
	return nil
}

// Put implements Storage.
func (l *Local) Put(ctx context.Context, name string, r io.ReaderAt, size int64) error {
	if err := checkName("put", name); err != nil {
		return err
	}
	f, err := l.CreateTemp()
	if err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	n, err := io.Copy(f, io.NewSectionReader(r, 0, size))
	if err == nil && n != size {
		err = fmt.Errorf("%d of %d bytes: %w", n, size, io.ErrUnexpectedEOF)
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", name, err)
	}
	return l.Adopt(ctx, f, name)
}

// syncDirsUp fsyncs the parents of dir up to and including the
// repository's directory (after MkdirAll created dir and perhaps some of
// its parents); nothing for a scratch directory.
func (l *Local) syncDirsUp(dir string) error {
	if l.scratch {
		return nil
	}
	root := l.dir
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		if err := syncDir(d); err != nil {
			return err
		}
		if d == root || len(d) <= len(root) || d == filepath.Dir(d) {
			return nil
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Get implements Storage.
func (l *Local) Get(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	if err := checkName("get", name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(l.p(name))
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = fmt.Errorf("get %s: not an object: %w", l.p(name), ErrNotExist)
		}
		return nil, err
	}
	if off == 0 && length < 0 {
		return f, nil
	}
	if off < 0 {
		f.Close()
		return nil, fmt.Errorf("get %s: negative offset %d", name, off)
	}
	if length < 0 {
		length = 1<<63 - 1 - off
	}
	return sectionCloser{io.NewSectionReader(f, off, length), f}, nil
}

type sectionCloser struct {
	*io.SectionReader
	f *os.File
}

func (s sectionCloser) Close() error { return s.f.Close() }

// Stat implements Storage.
func (l *Local) Stat(ctx context.Context, name string) (ObjectInfo, error) {
	if err := checkName("stat", name); err != nil {
		return ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return ObjectInfo{}, err
	}
	fi, err := os.Stat(l.p(name))
	if err != nil {
		return ObjectInfo{}, err
	}
	if !fi.Mode().IsRegular() {
		// A directory (the prefix of other names) is no object.
		return ObjectInfo{}, fmt.Errorf("stat %s: not an object: %w", l.p(name), ErrNotExist)
	}
	return ObjectInfo{Name: name, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List implements Storage. Files in TempDir are not objects and are never
// listed.
func (l *Local) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	// Walk the deepest directory that contains every name with the prefix.
	base := prefix
	if !strings.HasSuffix(base, "/") {
		base = path.Dir(base)
		if base == "." {
			base = ""
		}
	}
	base = strings.TrimSuffix(base, "/")
	root := l.p(base)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, rerr := filepath.Rel(l.dir, p)
		if rerr != nil {
			return rerr
		}
		name := filepath.ToSlash(rel)
		if d.IsDir() {
			if name == TempDir {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasPrefix(name, prefix) || !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted since the directory was read
		}
		if err != nil {
			return err
		}
		return fn(ObjectInfo{Name: name, Size: fi.Size(), ModTime: fi.ModTime()})
	})
	if err != nil {
		return fmt.Errorf("list %s in %s: %w", prefix, l.dir, err)
	}
	return nil
}

// Delete implements Storage.
func (l *Local) Delete(ctx context.Context, name string) error {
	if err := checkName("delete", name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return os.Remove(l.p(name))
}

// ObjectReaderAt is implemented by a Storage whose objects are ranges of
// local files without being files of their own (tape restore reads packs
// where they are in volume files): readers read them with pread instead of
// fetching windows as from an object store. ReadObjectAt follows
// io.ReaderAt: fewer than len(p) bytes come with an error (io.EOF at the
// end of the object).
type ObjectReaderAt interface {
	ReadObjectAt(ctx context.Context, name string, p []byte, off int64) (int, error)
}

// FileOpener is implemented by a Storage whose objects are local files
// (Local): readers that read many ranges of one object keep the file open
// instead of opening it for every range.
type FileOpener interface {
	// OpenFile opens object name for reading.
	OpenFile(ctx context.Context, name string) (*os.File, error)
}

// OpenFile implements FileOpener.
func (l *Local) OpenFile(ctx context.Context, name string) (*os.File, error) {
	rc, err := l.Get(ctx, name, 0, -1)
	if err != nil {
		return nil, err
	}
	return rc.(*os.File), nil
}

// TempCleaner is implemented by a Storage that keeps temporary files of
// its own (Local: TempDir), left behind by killed processes.
type TempCleaner interface {
	// RemoveTemp deletes the temporary files and returns their names.
	// Only call it when no other process writes (an exclusive lock).
	RemoveTemp(ctx context.Context) ([]string, error)
}

// RemoveTemp implements TempCleaner.
func (l *Local) RemoveTemp(ctx context.Context) ([]string, error) {
	ents, err := os.ReadDir(l.p(TempDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", l.p(TempDir), err)
	}
	var removed []string
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		if e.IsDir() {
			continue
		}
		name := path.Join(TempDir, e.Name())
		if err := os.Remove(l.p(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, fmt.Errorf("remove %s: %w", l.p(name), err)
		}
		removed = append(removed, name)
	}
	return removed, nil
}
