package engine_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

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

// A large file whose changed pages of several days sit in frames that many
// of its segments use: those frames are written first, frame by frame
// (each decoded once), the rest segment by segment. Every day restores
// exactly; a damaged shared frame fails the file and leaves nothing.
func TestRestoreLargeFileWithSharedFrames(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "zoomserv")
	os.MkdirAll(dir, 0o755)
	db := filepath.Join(dir, "X500.db")
	const pages = 10240 // 40 MiB: five segments
	rng := rand.New(rand.NewSource(31))
	writePages(t, db, pages, rng)
	r := enginetest.NewRepo(t)
	var sns []*repo.Snapshot
	var days [][]byte
	var day2Packs []blob.ID
	for day := 0; day < 3; day++ {
		if day > 0 {
			f, err := os.OpenFile(db, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 150; i++ { // single pages all over the file
				f.WriteAt(page(rng), int64(rng.Intn(pages))*4096)
			}
			f.Close()
		}
		before := map[blob.ID]bool{}
		r.EachBlob(func(_ blob.ID, l repo.Location) error { before[l.Pack] = true; return nil })
		sns = append(sns, backup(t, r, day1.Add(time.Duration(day)*24*time.Hour), dir))
		data, _ := os.ReadFile(db)
		days = append(days, data)
		if day == 1 {
			r.EachBlob(func(_ blob.ID, l repo.Location) error {
				if !before[l.Pack] && l.Type == blob.Data && l.Storage.Framed() && !slices.Contains(day2Packs, l.Pack) {
					day2Packs = append(day2Packs, l.Pack)
				}
				return nil
			})
		}
	}
	shared := engine.CountSharedFrames(t)
	for day, sn := range sns {
		shared.Store(0)
		target := t.TempDir()
		restore(t, r, sn, engine.RestoreOptions{Target: target})
		got, err := os.ReadFile(filepath.Join(target, db))
		if err != nil || !bytes.Equal(got, days[day]) {
			t.Fatalf("day %d: X500.db restored wrong (%v)", day+1, err)
		}
		if day > 0 && shared.Load() == 0 {
			t.Errorf("day %d: no frame was shared by the file's segments; the test does not test them", day+1)
		}
	}

	// Damage the middle of every frame of day 2's data pack(s).
	if len(day2Packs) == 0 {
		t.Fatal("day 2 stored no framed data")
	}
	whole := map[string][]byte{}
	r.EachBlob(func(_ blob.ID, l repo.Location) error {
		if slices.Contains(day2Packs, l.Pack) && l.Type == blob.Data && l.Inner == 0 {
			packFile := filepath.Join(r.Location(), repo.PackName(l.Pack))
			b, _ := os.ReadFile(packFile)
			if _, ok := whole[packFile]; !ok {
				whole[packFile] = slices.Clone(b)
			}
			b[l.Offset+uint64(l.Length)/2] ^= 1
			os.Chmod(packFile, 0o600)
			os.WriteFile(packFile, b, 0o600)
		}
		return nil
	})
	defer func() { // whole again for the cleanup check
		for p, b := range whole {
			os.WriteFile(p, b, 0o600)
		}
	}()
	r2, err := repo.Open(ctx, enginetest.Local(r.Location()), enginetest.OpenOptionsIn(t.TempDir())) // no frame cached
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	target := t.TempDir()
	res, err := engine.Restore(ctx, r2, sns[2], engine.RestoreOptions{Target: target})
	if !errors.Is(err, engine.ErrRestoreIncomplete) || len(res.Problems) != 1 || res.Problems[0].Path != db {
		t.Errorf("restore with day 2's frames damaged: %v, problems %+v; want X500.db named", err, res.Problems)
	}
	if _, err := os.Lstat(filepath.Join(target, db)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a damaged X500.db was left in the target (%v)", err)
	}
}
