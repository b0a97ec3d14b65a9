// Package backend is where repository objects live. Storage is the small
// interface every repository byte goes through (packs, index files,
// snapshots, config, keys, dictionaries, locks, tape catalogs); Local
// implements it on a local directory, package s3 on S3-compatible object
// storage.
//
// # Contract
//
// Names are slash-separated, relative to the repository root, and never
// start with a slash or contain "." or ".." elements ("packs/ab/abcd…",
// "snapshots/…", "config"). Errors for a missing object match
// [ErrNotExist] (which is fs.ErrNotExist) with errors.Is.
//
// Put is atomic: a reader sees either no object or all of its bytes, and
// after a crash or a failed Put the object either does not exist or is
// whole. Put of an existing name replaces it; the repository only does that
// with identical bytes (content-addressed names are written once), so no
// backend needs a rename.
//
// A Storage is safe for concurrent use by multiple goroutines. Every method
// takes a context and returns promptly when it is cancelled.
//
// # Consistency
//
// After Put returns nil, Get and Stat of that name by any client return the
// new object, and a List by any client includes it (read-after-write and
// list-after-write consistency, which local directories and S3 since
// December 2020 give). Locks, prune and repair index rely on the listing;
// the other commands tolerate one that lags (see docs/storage.md).
package backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"
)

// ErrNotExist is matched by the errors of Get, Stat and Delete for a
// missing object.
var ErrNotExist = fs.ErrNotExist

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Name string // repository-relative name
	Size int64
	// ModTime is when the object was written, by the storage's own clock
	// (the file system's, or the object store's): comparing two ModTimes of
	// one storage does not depend on any client's clock.
	ModTime time.Time
}

// Storage stores named, immutable objects.
type Storage interface {
	// Location describes the storage for messages: a directory, or an
	// s3: URL without credentials.
	Location() string

	// Put stores the size bytes of r under name, atomically (see the
	// package comment). r is read with ReadAt, possibly more than once
	// (a retried upload) and from several goroutines (a multipart upload).
	Put(ctx context.Context, name string, r io.ReaderAt, size int64) error

	// Get returns a reader of length bytes of object name starting at
	// offset off; length < 0 means to the end of the object. A range
	// beyond the end of the object gives a short read, not an error from
	// Get. The caller closes the reader.
	Get(ctx context.Context, name string, off, length int64) (io.ReadCloser, error)

	// Stat returns the information of one object.
	Stat(ctx context.Context, name string) (ObjectInfo, error)

	// List calls fn, in the caller's goroutine, for every object whose name
	// starts with prefix, in no particular order. An error from fn stops
	// the listing and is returned.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error

	// Delete removes an object. Deleting a missing object returns an error
	// matching ErrNotExist.
	Delete(ctx context.Context, name string) error
}

// ValidName reports whether name is a repository object name: relative,
// slash-separated, clean, without empty, "." or ".." elements.
func ValidName(name string) bool {
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "\\") || path.Clean(name) != name {
		return false
	}
	for _, e := range strings.Split(name, "/") {
		if e == "" || e == "." || e == ".." {
			return false
		}
	}
	return true
}

func checkName(op, name string) error {
	if !ValidName(name) {
		return fmt.Errorf("%s %q: invalid object name", op, name)
	}
	return nil
}

// ErrTooLarge is matched by the error of ReadAll for an object larger than
// the caller's bound.
var ErrTooLarge = errors.New("object is larger than expected")

// ReadAll reads a whole object of at most max bytes. A larger object gives
// an error matching ErrTooLarge without reading more than max+1 bytes, so a
// damaged or crafted object cannot make the caller allocate without bound.
func ReadAll(ctx context.Context, s Storage, name string, max int64) ([]byte, error) {
	rc, err := s.Get(ctx, name, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s: %w (more than %d bytes)", name, ErrTooLarge, max)
	}
	return data, nil
}

// ReadAt reads len(p) bytes of object name at offset off. An object that
// ends before off+len(p) gives an error matching io.ErrUnexpectedEOF.
func ReadAt(ctx context.Context, s Storage, name string, p []byte, off int64) error {
	rc, err := s.Get(ctx, name, off, int64(len(p)))
	if err != nil {
		return err
	}
	defer rc.Close()
	n, err := io.ReadFull(rc, p)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%s: %d of %d bytes at offset %d: object is truncated: %w", name, n, len(p), off, io.ErrUnexpectedEOF)
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	return nil
}

// PutBytes stores data under name.
func PutBytes(ctx context.Context, s Storage, name string, data []byte) error {
	return s.Put(ctx, name, bytes.NewReader(data), int64(len(data)))
}

// ListNames returns the names of the objects under prefix, sorted.
func ListNames(ctx context.Context, s Storage, prefix string) ([]string, error) {
	var names []string
	err := s.List(ctx, prefix, func(o ObjectInfo) error { names = append(names, o.Name); return nil })
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}
