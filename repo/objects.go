package repo

// Access to repository objects by name, for the commands that handle them
// as files (tape export, check, repair). Everything goes through the
// storage backend.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
)

// OpenObject opens repository object name for reading.
func (r *Repository) OpenObject(ctx context.Context, name string) (io.ReadCloser, error) {
	rc, err := r.st.Get(ctx, name, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("open %s in %s: %w", name, r.loc, err)
	}
	return rc, nil
}

// ObjectSize returns the size of repository object name.
func (r *Repository) ObjectSize(ctx context.Context, name string) (int64, error) {
	fi, err := r.st.Stat(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("stat %s in %s: %w", name, r.loc, err)
	}
	return fi.Size, nil
}

// KeyNames lists the key files, sorted.
func (r *Repository) KeyNames(ctx context.Context) ([]string, error) {
	names, err := backend.ListNames(ctx, r.st, keysDir+"/")
	if err != nil {
		return nil, fmt.Errorf("list key files of %s: %w", r.loc, err)
	}
	return names, nil
}

// ReadPack reads a whole pack (check --read-data).
func (r *Repository) ReadPack(ctx context.Context, id blob.ID) ([]byte, error) {
	data, err := backend.ReadAll(ctx, r.st, PackName(id), maxPackFile)
	if err != nil {
		return nil, fmt.Errorf("read pack %s: %w", id, err)
	}
	return data, nil
}

// PackExists reports whether pack id is stored.
func (r *Repository) PackExists(ctx context.Context, id blob.ID) (bool, error) {
	_, err := r.st.Stat(ctx, PackName(id))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat pack %s: %w", id, err)
	}
	return true, nil
}

// SnapshotCopies returns the bytes of snapshot file id as stored in the
// repository (nil when they cannot be read; err says why) and the client's
// cached copy (nil when there is none or it does not match its name), for
// repair.
func (r *Repository) SnapshotCopies(ctx context.Context, id blob.ID) (stored, cached []byte, err error) {
	stored, err = backend.ReadAll(ctx, r.st, SnapshotName(id), maxSnapshotFile)
	if c := r.cachedSnapshot(id); c != nil && blobIDOf(c) == id {
		cached = c
	}
	return stored, cached, err
}

// ObjectExists reports whether st holds object name.
func ObjectExists(ctx context.Context, st Storage, name string) (bool, error) {
	_, err := st.Stat(ctx, name)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat %s in %s: %w", name, st.Location(), err)
	}
	return true, nil
}

// VerifySnapshotFile reads snapshot file id from the storage (not from the
// cache, which may hold an intact copy of a damaged file) and decodes it.
func (r *Repository) VerifySnapshotFile(ctx context.Context, id blob.ID) error {
	stored, _, err := r.SnapshotCopies(ctx, id)
	if err != nil {
		return fmt.Errorf("read snapshot %s: %w", id.Short(), err)
	}
	_, err = r.DecodeSnapshotFile(id, stored)
	return err
}
