package engine_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

// unreadableChunks is a repository whose chunks all fail to load (as after
// damage to their pack), while its trees still load.
type unreadableChunks struct{ engine.RestoreRepo }

func (unreadableChunks) LoadBlob(ctx context.Context, id blob.ID, buf []byte) ([]byte, error) {
	return nil, errors.New("chunk " + id.Short() + " is damaged")
}

func (u unreadableChunks) LoadBlobAt(ctx context.Context, id blob.ID, _ repo.Location, buf []byte) ([]byte, error) {
	return u.LoadBlob(ctx, id, buf)
}

// With --overwrite into a target that holds an older version of a
// hard-linked file, a first name whose content cannot be restored must not
// get its second name linked to the old file left there: both names are
// reported unrestored, and neither is counted as restored.
func TestRestoreOverwriteHardLinkToFailedFirstName(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(src, 0o755)
	if err := os.WriteFile(filepath.Join(src, "a"), []byte("content of the snapshot"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(src, "a"), filepath.Join(src, "b")); err != nil {
		t.Fatal(err)
	}
	r := enginetest.NewRepo(t)
	sn := backup(t, r, day1, src)

	// The target holds an older, different version of both names.
	target := t.TempDir()
	old := filepath.Join(target, src)
	os.MkdirAll(old, 0o755)
	os.WriteFile(filepath.Join(old, "a"), []byte("stale"), 0o644)
	os.WriteFile(filepath.Join(old, "b"), []byte("stale"), 0o644)

	res, err := engine.Restore(ctx, unreadableChunks{r}, sn, engine.RestoreOptions{Target: target, Overwrite: true})
	if !errors.Is(err, engine.ErrRestoreIncomplete) {
		t.Fatalf("restore with undecodable chunks: %v, want ErrRestoreIncomplete", err)
	}
	if res.Files != 0 {
		t.Errorf("%d files counted as restored, want 0", res.Files)
	}
	bad := map[string]bool{}
	for _, p := range res.Problems {
		bad[p.Path] = true
	}
	for _, name := range []string{"a", "b"} {
		if !bad[filepath.Join(src, name)] {
			t.Errorf("%s not reported unrestored; problems: %+v", name, res.Problems)
		}
	}
	var sa, sb syscall.Stat_t
	syscall.Stat(filepath.Join(old, "a"), &sa)
	syscall.Stat(filepath.Join(old, "b"), &sb)
	if sa.Ino == sb.Ino {
		t.Error("b was linked to the stale a left in the target")
	}
}
