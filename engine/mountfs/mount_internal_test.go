package mountfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

// noRepo has no snapshots and no blobs.
type noRepo struct{}

func (noRepo) LoadBlob(context.Context, blob.ID, []byte) ([]byte, error) {
	return nil, repo.ErrBlobNotFound
}

func (noRepo) Snapshots(context.Context) ([]*repo.Snapshot, []error, error) { return nil, nil, nil }

// Without the FUSE device the mount fails before anything else, naming
// the device and what to install.
func TestMountWithoutFUSEDevice(t *testing.T) {
	old := fuseDevice
	fuseDevice = filepath.Join(t.TempDir(), "fuse")
	t.Cleanup(func() { fuseDevice = old })
	ctx := context.Background()
	_, err := Mount(ctx, t.TempDir(), New(ctx, noRepo{}, Options{}), MountOptions{})
	if !errors.Is(err, ErrFUSEUnavailable) {
		t.Fatalf("mount without %s: %v, want ErrFUSEUnavailable", fuseDevice, err)
	}
	for _, want := range []string{"FUSE is not available", fuseDevice + " missing", "install fuse3", "modprobe fuse"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestMountpointChecks(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for mp, want := range map[string]string{
		filepath.Join(dir, "missing"): "does not exist (create it with `mkdir " + filepath.Join(dir, "missing"),
		file:                          "is not a directory",
	} {
		_, err := Mount(ctx, mp, New(ctx, noRepo{}, Options{}), MountOptions{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("mount on %s: %v, want %q", mp, err, want)
		}
	}
}

func TestSnapshotNames(t *testing.T) {
	at := func(s string, id byte) *repo.Snapshot {
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return &repo.Snapshot{Time: tm, ID: blob.ID{id, 0xab, 0xcd, 0xef}}
	}
	list := []*repo.Snapshot{
		at("2026-11-20T02:00:00Z", 1),
		at("2026-11-20T02:00:00.5Z", 2), // the same second
		at("2026-11-21T02:00:00Z", 3),
	}
	got := SnapshotNames(list)
	t0 := list[0].Time.Local().Format(TimeFormat)
	want := []string{t0 + "-01abcdef", t0 + "-02abcdef", list[2].Time.Local().Format(TimeFormat)}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("names %q, want %q", got, want)
	}
}
