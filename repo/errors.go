package repo

import (
	"errors"

	"github.com/stasisbackup/stasis/repo/backend"
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
)
