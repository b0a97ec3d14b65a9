package repo

// Repository files by name, for the parts of stasis that handle them as
// files: tape export and import (package engine/tapeio) copy the
// repository's own files, and keep files of their own (tape catalogs) in a
// directory of the repository that the repository stores but does not
// interpret.

import (
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
)

var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidFileName reports whether name (slash-separated, relative) is one of
// the repository's own files that belong in a repository directory: config,
// keys/<id>, dicts/<id>, packs/xx/<id>, index/<id> or snapshots/<id>.
// Scratch files (tmp/, locks/, damaged/) are not, nor are the files other
// parts of stasis keep in the repository (SaveObject).
func ValidFileName(name string) bool {
	parts := strings.Split(name, "/")
	hexID := func(s string) bool { _, err := blob.ParseID(s); return err == nil && len(s) == 2*blob.IDSize }
	switch {
	case name == "config":
		return true
	case len(parts) == 2 && parts[0] == keysDir:
		return parts[1] != "" && keyIDPattern.MatchString(parts[1])
	case len(parts) == 2 && (parts[0] == "snapshots" || parts[0] == dictDir || parts[0] == IndexDir):
		return hexID(parts[1])
	case len(parts) == 3 && parts[0] == "packs":
		return hexID(parts[2]) && parts[1] == parts[2][:2]
	}
	return false
}

// ownDir reports whether dir is a top-level directory the repository uses
// itself: for its files, scratch files and locks (package lock's "locks/").
func ownDir(dir string) bool {
	switch dir {
	case keysDir, "snapshots", dictDir, IndexDir, "packs", backend.TempDir, DamagedDir, "locks":
		return true
	}
	return false
}

// SaveObject stores data as object name, replacing an earlier object of
// that name, atomically (local storage: temp file, fsync, rename). It is
// for the files another part of stasis keeps in the repository under a
// directory of its own (dir/...); the repository's own files and
// directories are refused.
func (r *Repository) SaveObject(ctx context.Context, name string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dir, _, ok := strings.Cut(name, "/")
	if !ok || ownDir(dir) || !backend.ValidName(name) {
		return fmt.Errorf("save %s in %s: not a name under a directory of its own", name, r.loc)
	}
	return backend.PutBytes(ctx, r.st, name, data)
}

// ObjectNames lists the objects under directory dir, sorted.
func (r *Repository) ObjectNames(ctx context.Context, dir string) ([]string, error) {
	return backend.ListNames(ctx, r.st, dir+"/")
}

// ReadObject reads object name whole; an object larger than max bytes is an
// error matching backend.ErrTooLarge.
func (r *Repository) ReadObject(ctx context.Context, name string, max int64) ([]byte, error) {
	return backend.ReadAll(ctx, r.st, name, max)
}

// ImportFile stores object name in st, filled by write (through a local
// temp file); the repository need not be open (or complete) yet. `stasis
// tape import` builds a repository this way, then opens it and rebuilds its
// index (RebuildIndex). The caller decides which names belong in the
// repository (see ValidFileName); a name that is no valid object name at
// all is refused before write is called.
func ImportFile(ctx context.Context, st backend.Storage, name string, write func(w io.Writer) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !backend.ValidName(name) {
		return fmt.Errorf("import %s: not a repository file name", name)
	}
	var f *os.File
	var err error
	if fa, ok := st.(backend.FileAdopter); ok {
		f, err = fa.CreateTemp()
	} else {
		f, err = os.CreateTemp("", "stasis-import-*")
	}
	if err != nil {
		return fmt.Errorf("import %s: %w", name, err)
	}
	if err := write(f); err != nil {
		f.Close()
		os.Remove(f.Name())
		return fmt.Errorf("import %s: %w", name, err)
	}
	if fa, ok := st.(backend.FileAdopter); ok {
		return fa.Adopt(ctx, f, name)
	}
	defer func() { f.Close(); os.Remove(f.Name()) }()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("import %s: %w", name, err)
	}
	return st.Put(ctx, name, f, fi.Size())
}
