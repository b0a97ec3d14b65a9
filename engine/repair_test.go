package engine_test

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/backendtest"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// largestDataPack returns the indexed data pack with the most blobs.
func largestDataPack(t *testing.T, r *repo.Repository) blob.ID {
	t.Helper()
	var best blob.ID
	var n uint32
	r.Index().EachPack(func(id blob.ID, info index.PackInfo) error {
		if info.Type == blob.Data && info.Count > n {
			best, n = id, info.Count
		}
		return nil
	})
	if n == 0 {
		t.Fatal("no data pack")
	}
	return best
}

// filesIn returns the paths (relative to src) of files with a chunk in pack.
// Only chunks whose location satisfies pred count.
func filesIn(t *testing.T, f *fixture, sn *repo.Snapshot, pred func(index.Location) bool) []string {
	t.Helper()
	var out []string
	err := engine.Walk(ctx, f.r, sn, "", func(p string, n *tree.Node) error {
		for _, e := range n.Content {
			if loc, ok, _ := f.r.Index().Lookup(e.ID); ok && pred(loc) {
				rel, _ := filepath.Rel(f.src, p)
				out = append(out, rel)
				break
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// TestBitRotIsReportedRestoredAroundAndRepaired damages the repository in
// one way each time: check names the damage, restore restores every other
// file and names the affected ones, and repair makes check pass again.
func TestBitRotIsReportedRestoredAroundAndRepaired(t *testing.T) {
	cases := []struct {
		name      string
		damage    func(t *testing.T, f *fixture, pack blob.ID, sn *repo.Snapshot)
		check     string // in a check error (with --read-data)
		lostData  bool   // files become unrestorable
		cacheOnly bool   // only the client's cache is damaged: Open rebuilds it, nothing is lost
		repair    string // "index", "snapshots" or "both" (docs/damage.md)
	}{
		{"flipped byte in a pack", func(t *testing.T, f *fixture, pack blob.ID, _ *repo.Snapshot) {
			p := filepath.Join(f.dir, repo.PackName(pack))
			data, _ := os.ReadFile(p)
			data[40] ^= 0x55
			os.WriteFile(p, data, 0o600)
		}, "content does not match its name", true, false, "both"},
		{"truncated pack", func(t *testing.T, f *fixture, pack blob.ID, _ *repo.Snapshot) {
			p := filepath.Join(f.dir, repo.PackName(pack))
			fi, _ := os.Stat(p)
			os.Truncate(p, fi.Size()/2)
		}, "truncated or overwritten", true, false, "both"},
		{"deleted pack", func(t *testing.T, f *fixture, pack blob.ID, _ *repo.Snapshot) {
			os.Remove(filepath.Join(f.dir, repo.PackName(pack)))
		}, "is missing", true, false, "both"},
		{"corrupted index cache", func(t *testing.T, f *fixture, _ blob.ID, _ *repo.Snapshot) {
			p := filepath.Join(f.opts.CacheDir, f.id, "index.db")
			data, _ := os.ReadFile(p)
			for i := 0; i < len(data); i += 4096 {
				copy(data[i:], "garbage!garbage!garbage!")
			}
			os.WriteFile(p, data, 0o600)
		}, "", false, true, "index"},
		{"corrupted snapshot file", func(t *testing.T, f *fixture, _ blob.ID, sn *repo.Snapshot) {
			p := filepath.Join(f.dir, repo.SnapshotName(sn.ID))
			data, _ := os.ReadFile(p)
			data[len(data)/2] ^= 1
			os.WriteFile(p, data, 0o600)
		}, "corrupt snapshot file", false, false, "snapshots"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, int64(200+i))
			f.mutate()
			f.mutate()
			f.mutate()
			sn, want := f.backup()
			pack := largestDataPack(t, f.r)
			// Files restore cannot restore, and files repair marks damaged.
			inPack := func(l index.Location) bool { return l.Pack == pack }
			affected := filesIn(t, f, sn, inPack)
			lost := affected
			switch c.name {
			case "flipped byte in a pack": // only the first blob, where the byte is
				affected = filesIn(t, f, sn, func(l index.Location) bool { return inPack(l) && l.Offset == 8 })
				lost = affected
			case "truncated pack": // blobs past the cut; repair salvages those before it (the old index knew where they were)
				fi, _ := os.Stat(filepath.Join(f.dir, repo.PackName(pack)))
				affected = filesIn(t, f, sn, func(l index.Location) bool {
					return inPack(l) && int64(l.Offset+uint64(l.Length)) > fi.Size()/2
				})
				lost = affected
			}
			f.r.Close()
			f.r = nil
			c.damage(t, f, pack, sn)

			r, err := repo.Open(ctx, enginetest.Local(f.dir), f.opts)
			if c.cacheOnly {
				if err != nil {
					t.Fatalf("open with a corrupt cache: %v; want the cache rebuilt", err)
				}
				f.r = r
				rep, err := engine.Check(ctx, r, engine.CheckOptions{ReadData: true})
				if err != nil || !rep.OK() {
					t.Fatalf("check after the cache was rebuilt: %v %v", err, rep.Errors)
				}
				f.verify(sn.ID, want)
				return
			} else {
				if err != nil {
					t.Fatal(err)
				}
				f.r = r
				rep, err := engine.Check(ctx, r, engine.CheckOptions{ReadData: true})
				if err != nil {
					t.Fatal(err)
				}
				if rep.OK() || !strings.Contains(strings.Join(rep.Errors, "\n"), c.check) {
					t.Fatalf("check errors %q do not say %q", rep.Errors, c.check)
				}
				if c.lostData {
					all := strings.Join(rep.Errors, "\n")
					for _, p := range lost {
						if !strings.Contains(all, "file "+filepath.Join(f.src, p)+" cannot be restored") {
							t.Errorf("check does not name damaged file %s:\n%s", p, all)
						}
					}
					res, err := engine.Restore(ctx, r, sn, engine.RestoreOptions{Target: t.TempDir()})
					if !errors.Is(err, engine.ErrRestoreIncomplete) {
						t.Fatalf("restore of a damaged snapshot: %v, want ErrRestoreIncomplete", err)
					}
					var named []string
					for _, p := range res.Problems {
						rel, _ := filepath.Rel(f.src, p.Path)
						named = append(named, rel)
					}
					sort.Strings(named)
					if strings.Join(named, ",") != strings.Join(affected, ",") {
						t.Errorf("restore named %v, want exactly %v", named, affected)
					}
					if int(res.Files) != len(want)-len(affected) {
						t.Errorf("restore wrote %d files, want the %d unaffected ones", res.Files, len(want)-len(affected))
					}
				}
				r.Close()
				f.r = nil
			}

			// Repair as docs/damage.md says: index (reading data), then
			// snapshots with --forget.
			r, err = repo.Open(ctx, enginetest.Local(f.dir), f.opts)
			if err != nil {
				t.Fatalf("open for repair: %v", err)
			}
			f.r = r
			if c.repair != "snapshots" {
				if _, err := r.RebuildIndex(ctx, repo.RebuildOptions{ReadData: true}); err != nil {
					t.Fatalf("repair index: %v", err)
				}
			}
			if c.repair != "index" {
				rs, err := engine.RepairSnapshots(ctx, r, engine.RepairSnapshotsOptions{Forget: true})
				if err != nil {
					t.Fatalf("repair snapshots: %v", err)
				}
				if c.lostData && (len(rs.Repaired) != 1 || len(rs.Repaired[0].Damaged) != len(lost)) {
					t.Fatalf("repair snapshots repaired %+v, want the one snapshot with %d damaged files", rs.Repaired, len(lost))
				}
			}
			rep, err := engine.Check(ctx, r, engine.CheckOptions{ReadData: true})
			if err != nil || !rep.OK() {
				t.Fatalf("check after repair: %v\n%s", err, strings.Join(rep.Errors, "\n"))
			}
			list, _, _ := r.Snapshots(ctx)
			if len(list) != 1 {
				t.Fatalf("%d snapshots after repair, want 1", len(list))
			}
			if !c.lostData {
				if list[0].ID != sn.ID {
					t.Fatalf("snapshot %s became %s although no data was lost", sn.ID.Short(), list[0].ID.Short())
				}
				f.verify(sn.ID, want)
				return
			}
			// The repaired snapshot restores every unaffected file.
			res, err := engine.Restore(ctx, r, list[0], engine.RestoreOptions{Target: t.TempDir()})
			if !errors.Is(err, engine.ErrRestoreIncomplete) || int(res.Files) != len(want)-len(lost) {
				t.Fatalf("restore of the repaired snapshot: %v, %d files; want %d and the damaged ones named", err, res.Files, len(want)-len(lost))
			}
			// The next backup stores the lost files again, and prune works.
			f.mutate()
			sn2, want2 := f.backup()
			f.verify(sn2.ID, want2)
			if _, err := engine.Prune(ctx, r, engine.PruneOptions{}); err != nil {
				t.Fatalf("prune after repair: %v", err)
			}
		})
	}
}

// Repair replaces a damaged snapshot file in one atomic write (issue 11,
// item 4): when that write fails, the snapshot object is still there (the
// old code removed it first, and a failure in between lost it).
func TestRepairSnapshotFileWriteFailureLosesNothing(t *testing.T) {
	f := newFixture(t, 300)
	f.mutate()
	sn, _ := f.backup()
	f.r.Close()
	f.r = nil
	p := filepath.Join(f.dir, repo.SnapshotName(sn.ID))
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1 // damaged in the repository; the cache has an intact copy
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	faulty := backendtest.NewFaulty(backend.NewLocal(f.dir))
	faulty.Inject(backendtest.Fault{Op: backendtest.OpPut, Name: "snapshots/*", Err: syscall.EIO})
	r, err := repo.Open(ctx, faulty, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	_, err = engine.RepairSnapshots(ctx, r, engine.RepairSnapshotsOptions{})
	r.Close()
	if err == nil || faulty.Hits() == 0 {
		t.Fatalf("repair snapshots with a failing write: %v (%d faults hit); want the error", err, faulty.Hits())
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("after the failed rewrite the snapshot file is gone: %v", err)
	}
	// Without the fault, the repair rewrites it from the intact copy.
	f.reopenAfterClose(t)
	rep, err := engine.RepairSnapshots(ctx, f.r, engine.RepairSnapshotsOptions{})
	if err != nil || len(rep.Files) != 1 {
		t.Fatalf("repair snapshots: %v %+v", err, rep)
	}
	if err := f.r.VerifySnapshotFile(ctx, sn.ID); err != nil {
		t.Fatalf("snapshot after repair: %v", err)
	}
}

func (f *fixture) reopenAfterClose(t *testing.T) {
	r, err := repo.Open(ctx, enginetest.Local(f.dir), f.opts)
	if err != nil {
		t.Fatal(err)
	}
	f.r = r
}

// check reads the repository's index files, not only this client's cache
// built from them: a damaged index file is an error although the cache is
// intact (another client, or a new host after a disaster, could not use it).
func TestCheckReadsIndexFiles(t *testing.T) {
	f := newFixture(t, 301)
	f.mutate()
	f.backup()
	names, err := f.r.IndexFiles(ctx)
	if err != nil || len(names) == 0 {
		t.Fatalf("index files: %v %v", names, err)
	}
	p := filepath.Join(f.dir, names[0])
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := engine.Check(ctx, f.r, engine.CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || !strings.Contains(strings.Join(rep.Errors, "\n"), names[0]) {
		t.Fatalf("check with a damaged index file: %q; want an error naming %s", rep.Errors, names[0])
	}
	// repair index makes the repository whole again.
	if _, err := f.r.RebuildIndex(ctx, repo.RebuildOptions{}); err != nil {
		t.Fatal(err)
	}
	if rep, err := engine.Check(ctx, f.r, engine.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
		t.Fatalf("check after repair index: %v %q", err, rep.Errors)
	}
}
