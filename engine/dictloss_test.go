package engine_test

import (
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
)

// Issue 11 item 1: a repository whose compression dictionary is lost.
// Plain check names the dictionary and the snapshot that needs it; a backup
// does not deduplicate against blobs that no longer decode but stores their
// data again, so its snapshot restores; repair index --read-data and repair
// snapshots --forget make the repository whole (check --read-data clean),
// and the repaired snapshot restores every file whose data survives.
func TestLostDictionaryIsNamedAvoidedAndRepaired(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(src, 0o755)
	rng := rand.New(rand.NewSource(11))
	writePages(t, filepath.Join(src, "X500.db"), 1024, rng) // 4 MiB of records: makes the dictionary
	writePages(t, filepath.Join(src, "old.db"), 256, rng)   // only in the first snapshot
	os.WriteFile(filepath.Join(src, "tiny.conf"), []byte("port 389\n"), 0o644)
	dir, cache := t.TempDir()+"/repo", t.TempDir()
	opts := enginetest.OpenOptionsIn(cache)
	open := func() *repo.Repository {
		t.Helper()
		r, err := repo.Open(ctx, enginetest.Local(dir), opts)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r, err := repo.Init(ctx, enginetest.Local(dir), enginetest.InitOptionsV1(), opts)
	if err != nil {
		t.Fatal(err)
	}
	sn1 := backup(t, r, day1, src)
	dicts, _ := r.DictNames(ctx)
	if len(dicts) != 1 {
		t.Fatalf("dictionaries after a 4 MiB database: %v", dicts)
	}
	r.Close()

	// The dictionary is lost; old.db is gone from the source, so only the
	// first snapshot has it.
	if err := os.Remove(filepath.Join(dir, dicts[0])); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(src, "old.db"))

	r = open()
	rep, err := engine.Check(ctx, r, engine.CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(rep.Errors, "\n")
	if rep.OK() || !strings.Contains(all, dicts[0]) || !strings.Contains(all, "snapshot "+sn1.ID.Short()) || !strings.Contains(all, "missing") {
		t.Fatalf("plain check does not name the lost dictionary %s and snapshot %s:\n%s", dicts[0], sn1.ID.Short(), all)
	}

	// A backup of the unchanged files stores their data again.
	sn2 := backup(t, r, day1.Add(time.Hour), src)
	if sn2.Summary.BlobsAdded == 0 {
		t.Errorf("the backup after the loss added no blobs: it deduplicated against blobs that do not decode")
	}
	r.Close()
	r = open()
	target := t.TempDir()
	restore(t, r, sn2, engine.RestoreOptions{Target: target})
	compareTrees(t, src, filepath.Join(target, src))

	// check --read-data names the file of the first snapshot that cannot
	// be restored, and only that one.
	rep, err = engine.Check(ctx, r, engine.CheckOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	all = strings.Join(rep.Errors, "\n")
	if rep.OK() || !strings.Contains(all, "file "+filepath.Join(src, "old.db")+" cannot be restored") {
		t.Errorf("check --read-data does not name old.db:\n%s", all)
	}
	for _, f := range []string{"X500.db", "tiny.conf"} {
		if strings.Contains(all, "file "+filepath.Join(src, f)+" cannot be restored") {
			t.Errorf("check --read-data blames %s, whose data a later backup stored again:\n%s", f, all)
		}
	}
	r.Close()

	// Repair as docs/damage.md says.
	r = open()
	rb, err := r.RebuildIndex(ctx, repo.RebuildOptions{ReadData: true})
	if err != nil {
		t.Fatalf("repair index: %v", err)
	}
	if len(rb.Dropped) == 0 {
		t.Errorf("repair index --read-data dropped no undecodable blob")
	}
	r.Close()
	r = open()
	rs, err := engine.RepairSnapshots(ctx, r, engine.RepairSnapshotsOptions{Forget: true})
	if err != nil {
		t.Fatalf("repair snapshots: %v", err)
	}
	if len(rs.Repaired) != 1 || rs.Repaired[0].Old != sn1.ID || strings.Join(rs.Repaired[0].Damaged, ",") != filepath.Join(src, "old.db") {
		t.Fatalf("repair snapshots repaired %+v, want snapshot %s with old.db damaged", rs.Repaired, sn1.ID.Short())
	}
	r.Close()
	r = open()
	defer r.Close()
	rep, err = engine.Check(ctx, r, engine.CheckOptions{ReadData: true})
	if err != nil || !rep.OK() {
		t.Fatalf("check --read-data after repair: %v\n%s", err, strings.Join(rep.Errors, "\n"))
	}
	repaired, err := r.LoadSnapshot(ctx, rs.Repaired[0].New)
	if err != nil {
		t.Fatal(err)
	}
	target = t.TempDir()
	res, err := engine.Restore(ctx, r, repaired, engine.RestoreOptions{Target: target})
	if !errors.Is(err, engine.ErrRestoreIncomplete) || len(res.Problems) != 1 || res.Problems[0].Path != filepath.Join(src, "old.db") {
		t.Fatalf("restore of the repaired snapshot: %v %+v", err, res)
	}
	for _, f := range []string{"X500.db", "tiny.conf"} {
		a, _ := os.ReadFile(filepath.Join(src, f))
		b, err := os.ReadFile(filepath.Join(target, src, f))
		if err != nil || string(a) != string(b) {
			t.Errorf("%s of the repaired snapshot does not restore byte for byte: %v", f, err)
		}
	}
	// The repository is whole: the next backup and its check are clean.
	sn3 := backup(t, r, day1.Add(2*time.Hour), src)
	restore(t, r, sn3, engine.RestoreOptions{})
	if rep, err := engine.Check(ctx, r, engine.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
		t.Fatalf("check after the next backup: %v %v", err, rep.Errors)
	}
}
