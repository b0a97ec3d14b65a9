package engine_test

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/retention"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// fixture is a small-pack repository and a source directory whose content
// is changed by a seeded RNG.
type fixture struct {
	t    *testing.T
	dir  string // repository
	src  string
	r    *repo.Repository
	rng  *rand.Rand
	now  time.Time
	seq  int
	opts repo.OpenOptions
	id   string // repository id (names its cache directory)
}

func newFixture(t *testing.T, seed int64) *fixture {
	t.Helper()
	f := &fixture{t: t, dir: filepath.Join(t.TempDir(), "repo"), src: filepath.Join(t.TempDir(), "src"),
		rng: rand.New(rand.NewSource(seed)), now: time.Date(2026, 11, 1, 2, 0, 0, 0, time.UTC), opts: enginetest.OpenOptionsIn(filepath.Join(t.TempDir(), "cache"))}
	o := enginetest.InitOptions()
	o.PackSize = 64 << 10
	r, err := repo.Init(ctx, enginetest.Local(f.dir), o, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	f.r = r
	f.id = r.Config().ID
	if err := os.MkdirAll(f.src, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if f.r != nil {
			enginetest.CheckAndClose(t, f.r)
		}
	})
	return f
}

// mutate adds, rewrites and removes a few files.
func (f *fixture) mutate() {
	f.t.Helper()
	ents, _ := os.ReadDir(f.src)
	for i := 0; i < 3; i++ {
		f.seq++
		size := f.rng.Intn(60 << 10)
		data := make([]byte, size)
		f.rng.Read(data)
		name := fmt.Sprintf("f%03d", f.seq)
		if len(ents) > 0 && f.rng.Intn(3) == 0 {
			name = ents[f.rng.Intn(len(ents))].Name() // overwrite
		}
		sub := filepath.Join(f.src, fmt.Sprintf("d%d", f.rng.Intn(3)))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			f.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sub, name), data, 0o644); err != nil {
			f.t.Fatal(err)
		}
	}
	if f.rng.Intn(2) == 0 {
		var files []string
		filepath.WalkDir(f.src, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				files = append(files, p)
			}
			return nil
		})
		if len(files) > 3 {
			os.Remove(files[f.rng.Intn(len(files))])
		}
	}
}

func (f *fixture) backup() (*repo.Snapshot, map[string]string) {
	f.t.Helper()
	f.now = f.now.Add(7 * time.Hour)
	now := f.now
	sn, err := engine.Backup(ctx, f.r, engine.BackupOptions{Paths: []string{f.src}, Host: "h", Now: func() time.Time { return now }})
	if err != nil {
		f.t.Fatalf("backup: %v", err)
	}
	return sn, enginetest.FileHashes(f.t, f.src)
}

// verify restores snapshot id and compares it with want, file by file.
func (f *fixture) verify(id blob.ID, want map[string]string) {
	f.t.Helper()
	sn, err := f.r.FindSnapshot(ctx, id.String(), repo.SnapshotFilter{})
	if err != nil {
		f.t.Fatalf("find %s: %v", id.Short(), err)
	}
	target := f.t.TempDir()
	if _, err := engine.Restore(ctx, f.r, sn, engine.RestoreOptions{Target: target}); err != nil {
		f.t.Fatalf("restore %s: %v", id.Short(), err)
	}
	got := enginetest.FileHashes(f.t, filepath.Join(target, f.src))
	if len(got) != len(want) {
		f.t.Fatalf("snapshot %s restored %d files, want %d", id.Short(), len(got), len(want))
	}
	for p, h := range want {
		if got[p] != h {
			f.t.Fatalf("snapshot %s: %s differs after restore", id.Short(), p)
		}
	}
}

func (f *fixture) reopen() {
	f.t.Helper()
	if err := f.r.Close(); err != nil {
		f.t.Fatal(err)
	}
	f.r = nil
	r, err := repo.Open(ctx, enginetest.Local(f.dir), f.opts)
	if err != nil {
		f.t.Fatalf("reopen: %v", err)
	}
	f.r = r
}

func (f *fixture) packFiles() int {
	n := 0
	f.r.EachPackFile(ctx, func(blob.ID, int64) error { n++; return nil }, nil)
	return n
}

func TestForgetAndPruneGiveSpaceBackAndKeepTheRest(t *testing.T) {
	f := newFixture(t, 1)
	type snap struct {
		id   blob.ID
		want map[string]string
	}
	var snaps []snap
	for i := 0; i < 6; i++ {
		f.mutate()
		sn, want := f.backup()
		snaps = append(snaps, snap{sn.ID, want})
	}
	before := f.packFiles()

	rep, err := engine.Forget(ctx, f.r, engine.ForgetOptions{Policy: retention.Policy{Last: 2}, Now: f.now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Removed) != 4 || len(rep.Decisions) != 6 {
		t.Fatalf("removed %d of %d, want 4 of 6", len(rep.Removed), len(rep.Decisions))
	}
	dry, err := engine.Prune(ctx, f.r, engine.PruneOptions{DryRun: true, MaxUnused: 10})
	if err != nil {
		t.Fatal(err)
	}
	if f.packFiles() != before {
		t.Fatalf("dry run changed the pack count from %d to %d", before, f.packFiles())
	}
	pr, err := engine.Prune(ctx, f.r, engine.PruneOptions{MaxUnused: 10})
	if err != nil {
		t.Fatal(err)
	}
	if pr.BytesFreed <= 0 || pr.PacksDeleted+pr.PacksRepacked == 0 {
		t.Fatalf("prune freed %d bytes, deleted %d, repacked %d packs; expected space back", pr.BytesFreed, pr.PacksDeleted, pr.PacksRepacked)
	}
	if dry.PacksDeleted != pr.PacksDeleted || dry.PacksRepacked != pr.PacksRepacked {
		t.Errorf("dry run predicted %d deleted / %d repacked, prune did %d / %d", dry.PacksDeleted, dry.PacksRepacked, pr.PacksDeleted, pr.PacksRepacked)
	}
	for _, s := range snaps[4:] {
		f.verify(s.id, s.want)
	}
	// A second prune finds nothing more to do.
	pr2, err := engine.Prune(ctx, f.r, engine.PruneOptions{MaxUnused: 10})
	if err != nil {
		t.Fatal(err)
	}
	if pr2.PacksDeleted+pr2.PacksRepacked+pr2.PacksUnindexed != 0 {
		t.Errorf("second prune still deleted %d and repacked %d packs", pr2.PacksDeleted, pr2.PacksRepacked)
	}
}

func TestForgetRefusesToRemoveEverything(t *testing.T) {
	f := newFixture(t, 2)
	f.mutate()
	f.backup()
	_, err := engine.Forget(ctx, f.r, engine.ForgetOptions{Policy: retention.Policy{Within: time.Hour}, Now: f.now.Add(48 * time.Hour)})
	if !errors.Is(err, retention.ErrRemovesAll) {
		t.Fatalf("forget removing every snapshot: got %v, want ErrRemovesAll", err)
	}
	list, _, _ := f.r.Snapshots(ctx)
	if len(list) != 1 {
		t.Fatalf("%d snapshots left after a refused forget, want 1", len(list))
	}
}

func TestPruneRemovesLeftoversOfACrashedBackup(t *testing.T) {
	f := newFixture(t, 3)
	f.mutate()
	sn, want := f.backup()
	// A backup that wrote packs and a temp file but no snapshot.
	f.mutate()
	if _, err := f.r.SaveBlob(ctx, blob.Data, f.r.Hash([]byte("orphan")), []byte("orphan")); err != nil {
		t.Fatal(err)
	}
	if err := f.r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "tmp", "pack-123"), []byte("half a pack"), 0o600); err != nil {
		t.Fatal(err)
	}
	pr, err := engine.Prune(ctx, f.r, engine.PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pr.PacksDeleted != 1 || pr.TempFilesRemove != 1 {
		t.Fatalf("prune deleted %d packs and %d temp files, want 1 and 1", pr.PacksDeleted, pr.TempFilesRemove)
	}
	f.verify(sn.ID, want)
}

// TestModel runs random sequences of backup, forget, prune and index
// rebuilds against a model of which snapshots exist and what they hold.
func TestModel(t *testing.T) {
	for seed := int64(10); seed < 13; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			f := newFixture(t, seed)
			model := map[blob.ID]map[string]string{}
			var order []blob.ID // oldest first
			for step := 0; step < 14; step++ {
				switch op := f.rng.Intn(10); {
				case op < 5 || len(order) == 0:
					f.mutate()
					sn, want := f.backup()
					model[sn.ID] = want
					order = append(order, sn.ID)
				case op < 7:
					keep := 1 + f.rng.Intn(3)
					if _, err := engine.Forget(ctx, f.r, engine.ForgetOptions{Policy: retention.Policy{Last: keep}, Now: f.now.Add(time.Hour)}); err != nil {
						t.Fatalf("step %d forget: %v", step, err)
					}
					for len(order) > keep {
						delete(model, order[0])
						order = order[1:]
					}
				case op < 9:
					if _, err := engine.Prune(ctx, f.r, engine.PruneOptions{MaxUnused: float64(f.rng.Intn(50) + 1)}); err != nil {
						t.Fatalf("step %d prune: %v", step, err)
					}
				default:
					f.r.Close()
					f.r = nil
					r, err := repo.Open(ctx, enginetest.Local(f.dir), f.opts)
					if err != nil {
						t.Fatal(err)
					}
					f.r = r
					if rep, err := r.RebuildIndex(ctx, repo.RebuildOptions{}); err != nil || len(rep.Damaged) > 0 {
						t.Fatalf("step %d rebuild index: %v %+v", step, err, rep)
					}
				}
				list, bad, err := f.r.Snapshots(ctx)
				if err != nil || len(bad) > 0 {
					t.Fatalf("step %d: snapshots: %v %v", step, err, bad)
				}
				var got []string
				for _, sn := range list {
					got = append(got, sn.ID.String())
				}
				var exp []string
				for _, id := range order {
					exp = append(exp, id.String())
				}
				sort.Strings(got)
				sort.Strings(exp)
				if fmt.Sprint(got) != fmt.Sprint(exp) {
					t.Fatalf("step %d: snapshots %v, model %v", step, got, exp)
				}
			}
			for _, id := range order {
				f.verify(id, model[id])
			}
		})
	}
}

// liveBlobs returns every blob the snapshots of r reference: their trees,
// extent lists and chunks.
func liveBlobs(t *testing.T, r *repo.Repository) map[blob.ID]bool {
	t.Helper()
	snaps, _, err := r.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	live := map[blob.ID]bool{}
	for _, sn := range snaps {
		live[sn.Tree] = true
		err := engine.Walk(ctx, r, sn, "/", func(_ string, n *tree.Node) error {
			if n.Kind == tree.Dir {
				live[n.Subtree] = true
			}
			for _, id := range n.Lists {
				live[id] = true
			}
			for _, e := range n.Content {
				if !e.Hole {
					live[e.ID] = true
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return live
}

// Prune's plan, alone: after a forget, it deletes exactly the packs that
// hold no blob a snapshot references and repacks only packs with one; with
// every snapshot kept and MaxUnused 100 it plans nothing. A dry run
// reports the same plan.
func TestPrunePlan(t *testing.T) {
	f := newFixture(t, 21)
	for i := 0; i < 6; i++ {
		f.mutate()
		f.backup()
	}
	if del, repack, err := engine.PlanPrune(ctx, f.r, 100); err != nil || len(del) != 0 || len(repack) != 0 {
		t.Fatalf("plan with every snapshot kept: delete %d, repack %d packs (%v); want none", len(del), len(repack), err)
	}
	if _, err := engine.Forget(ctx, f.r, engine.ForgetOptions{Policy: retention.Policy{Last: 2}, Now: f.now.Add(1)}); err != nil {
		t.Fatal(err)
	}
	del, repack, err := engine.PlanPrune(ctx, f.r, 0.000001)
	if err != nil {
		t.Fatal(err)
	}
	if len(del) == 0 || len(repack) == 0 {
		t.Fatalf("plan after forgetting 4 of 6 snapshots deletes %d and repacks %d packs; the test needs both", len(del), len(repack))
	}
	live := liveBlobs(t, f.r)
	liveIn := map[blob.ID]int{}
	if err := f.r.EachBlob(func(id blob.ID, loc repo.Location) error {
		if live[id] {
			liveIn[loc.Pack]++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, id := range del {
		if liveIn[id] > 0 {
			t.Errorf("plan deletes pack %s, which holds %d live blobs", id.Short(), liveIn[id])
		}
	}
	for _, id := range repack {
		if liveIn[id] == 0 {
			t.Errorf("plan repacks pack %s, which holds no live blob", id.Short())
		}
	}
	rep, err := engine.Prune(ctx, f.r, engine.PruneOptions{DryRun: true, MaxUnused: 0.000001})
	if err != nil {
		t.Fatal(err)
	}
	if rep.PacksDeleted+rep.PacksUnindexed != len(del) || rep.PacksRepacked != len(repack) {
		t.Errorf("dry run deletes %d+%d and repacks %d packs; the plan %d and %d", rep.PacksDeleted, rep.PacksUnindexed, rep.PacksRepacked, len(del), len(repack))
	}
}

// A pack is repacked when more than MaxUnused percent of it is unused:
// blobs no snapshot needs, and the bytes of blobs indexed elsewhere.
func TestPruneMostlyUnused(t *testing.T) {
	overhead := repo.PackOverhead(4)
	for _, c := range []struct {
		name             string
		size             uint64
		count            uint32
		blobs, live      int
		bytes, liveBytes int64
		maxUnused        float64
		want             bool
	}{
		{"all live", 1000 + uint64(overhead), 4, 4, 4, 1000, 1000, 10, false},
		{"a quarter unused", 1000 + uint64(overhead), 4, 4, 3, 1000, 750, 10, true},
		{"a quarter unused, 30% allowed", 1000 + uint64(overhead), 4, 4, 3, 1000, 750, 30, false},
		{"a copy indexed elsewhere", 1000 + uint64(overhead), 4, 3, 3, 750, 750, 10, true},
		{"100 never repacks", 1000 + uint64(overhead), 4, 4, 1, 1000, 10, 100, false},
	} {
		if got := engine.MostlyUnused(c.size, c.count, c.blobs, c.live, c.bytes, c.liveBytes, c.maxUnused); got != c.want {
			t.Errorf("%s: mostly unused %v, want %v", c.name, got, c.want)
		}
	}
}
