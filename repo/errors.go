package repo

import (
	"errors"
	"fmt"

	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/crypto"
)

// Sentinel errors of the repository, matched with errors.Is.
var (
	// ErrNoRepository: the directory holds no stasis repository.
	ErrNoRepository = errors.New("no stasis repository")
	// ErrExists: init found a repository (or other files) already there.
	ErrExists = errors.New("repository already exists")
	// ErrVersion: the repository was written by an unknown format version.
	ErrVersion = errors.New("unsupported repository format version")
	// ErrBlobNotFound: a blob is not in the index.
	ErrBlobNotFound = errors.New("blob not found")
	// ErrCorruptBlob: a blob's bytes do not decode or hash to its id.
	ErrCorruptBlob = errors.New("corrupt blob")
	// ErrSnapshotNotFound: no snapshot matches.
	ErrSnapshotNotFound = errors.New("snapshot not found")
	// ErrTooLarge: an object is larger than any valid one (damage).
	ErrTooLarge = backend.ErrTooLarge
	// ErrCorruptSnapshot: a snapshot file does not decode or hash to its name.
	ErrCorruptSnapshot = errors.New("corrupt snapshot file")
	// ErrInitNoPassword: Init was given neither a password nor
	// InsecureNoPassword. It matches crypto.ErrNoPassword too.
	ErrInitNoPassword = fmt.Errorf("%w", crypto.ErrNoPassword)
)

// The error types below carry what a command line needs to say what to do
// next (the CLI adds that: this package names no command-line flag).

// NoRepositoryError is Open's error when the storage at Location holds no
// repository; it matches ErrNoRepository.
type NoRepositoryError struct {
	Location string
}

func (e *NoRepositoryError) Error() string { return e.Location + ": " + ErrNoRepository.Error() }

// Is reports whether target is ErrNoRepository.
func (e *NoRepositoryError) Is(target error) bool { return target == ErrNoRepository }

// CacheDirError is the error when this client's cache directory cannot be
// found (Dir empty: there is no user cache directory) or created (Dir).
type CacheDirError struct {
	Dir string
	Err error
}

func (e *CacheDirError) Error() string {
	if e.Dir == "" {
		return "find a cache directory: " + e.Err.Error()
	}
	return fmt.Sprintf("create cache directory %s: %v", e.Dir, e.Err)
}

func (e *CacheDirError) Unwrap() error { return e.Err }

// RepackError is Repack's error when the header of a pack to repack
// (Blob false) or one of its live blobs (Blob true) cannot be read: the
// pack is damaged, and nothing was deleted.
type RepackError struct {
	Pack string // the pack's id, as the message names it
	Blob bool
	Err  error
}

func (e *RepackError) Error() string {
	if e.Blob {
		return fmt.Sprintf("repack %s: %v; nothing was deleted", e.Pack, e.Err)
	}
	return fmt.Sprintf("repack %s: %v", e.Pack, e.Err)
}

func (e *RepackError) Unwrap() error { return e.Err }
