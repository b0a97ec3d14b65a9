package engine_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

var ctx = context.Background()

func clock(t time.Time) func() time.Time { return func() time.Time { return t } }

var day1 = time.Date(2026, 11, 20, 2, 0, 0, 0, time.UTC)

func backup(t *testing.T, r *repo.Repository, when time.Time, paths ...string) *repo.Snapshot {
	t.Helper()
	sn, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: paths, Host: "test", Now: clock(when)})
	if err != nil {
		t.Fatalf("backup %v: %v", paths, err)
	}
	return sn
}

func restore(t *testing.T, r *repo.Repository, sn *repo.Snapshot, opts engine.RestoreOptions) *engine.RestoreResult {
	t.Helper()
	if opts.Target == "" {
		opts.Target = t.TempDir()
	}
	res, err := engine.Restore(ctx, r, sn, opts)
	if err != nil {
		t.Fatalf("restore %s: %v", sn.ID.Short(), err)
	}
	return res
}

func countPacks(t *testing.T, r *repo.Repository) int {
	t.Helper()
	_, packs, err := r.Index().Counts()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	filepath.Walk(filepath.Join(r.Location(), "packs"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n++
		}
		return nil
	})
	if n != packs {
		t.Fatalf("%d pack files on disk, %d in the index", n, packs)
	}
	return n
}

func TestRoundTripEveryKind(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 1)
	r := enginetest.NewRepo(t)
	sn := backup(t, r, day1, src)
	if len(sn.Summary.Problems) != 0 {
		t.Fatalf("problems: %+v", sn.Summary.Problems)
	}
	target := t.TempDir()
	res := restore(t, r, sn, engine.RestoreOptions{Target: target})
	compareTrees(t, src, filepath.Join(target, src))
	if res.Files == 0 || res.Others == 0 {
		t.Errorf("restore counted %d files, %d others", res.Files, res.Others)
	}
	// The sparse file's hole is not stored: much less data than its size.
	if sn.Summary.BytesRead >= sn.Summary.TotalBytes {
		t.Errorf("read %d bytes of %d: holes were read as data", sn.Summary.BytesRead, sn.Summary.TotalBytes)
	}
}

func TestTwoSnapshotsEachRestoreTheirOwnDay(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "zoomserv")
	makeTree(t, src, 2)
	r := enginetest.NewRepo(t)
	sn1 := backup(t, r, day1, src)
	day1Copy := filepath.Join(base, "day1")
	if out, err := exec.Command("cp", "-a", src, day1Copy).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	// Day 2: change, add, remove.
	if err := os.WriteFile(filepath.Join(src, "plain.txt"), []byte("day two"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(src, "empty"))
	os.WriteFile(filepath.Join(src, "many", "added"), []byte("new on day two"), 0o644)
	sn2 := backup(t, r, day1.Add(24*time.Hour), src)
	if sn2.Parent == nil || *sn2.Parent != sn1.ID {
		t.Errorf("day 2's parent is %v, want %s", sn2.Parent, sn1.ID.Short())
	}
	if sn2.Summary.FilesChanged != 1 || sn2.Summary.FilesNew != 1 {
		t.Errorf("day 2: %d changed, %d new; want 1 and 1", sn2.Summary.FilesChanged, sn2.Summary.FilesNew)
	}
	t1, t2 := t.TempDir(), t.TempDir()
	restore(t, r, sn1, engine.RestoreOptions{Target: t1})
	restore(t, r, sn2, engine.RestoreOptions{Target: t2})
	compareTrees(t, day1Copy, filepath.Join(t1, src))
	compareTrees(t, src, filepath.Join(t2, src))

	list, _, _ := r.Snapshots(ctx)
	if got, _ := engine.SnapshotAt(list, day1.Add(23*time.Hour)); got == nil || got.ID != sn1.ID {
		t.Errorf("SnapshotAt(day 1 + 23h) = %v, want day 1", got)
	}
	if got, _ := engine.SnapshotAt(list, day1.Add(48*time.Hour)); got == nil || got.ID != sn2.ID {
		t.Errorf("SnapshotAt(day 3) = %v, want day 2", got)
	}
	if _, err := engine.SnapshotAt(list, day1.Add(-time.Second)); !errors.Is(err, repo.ErrSnapshotNotFound) {
		t.Errorf("SnapshotAt before the first: %v", err)
	}
}

// The directories above the backed-up path (/tmp, the test's temp dir) are
// recorded with their metadata and may change under other tests running in
// parallel, so this looks at the backed-up directory's own tree and the data.
func TestUnchangedTreeAddsNoPackAndReadsNothing(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 3)
	r := enginetest.NewRepo(t)
	sn1 := backup(t, r, day1, src)
	dataPacks := countDataPacks(t, r)
	sn2 := backup(t, r, day1.Add(time.Hour), src)
	if got := countDataPacks(t, r); got != dataPacks {
		t.Errorf("second backup added %d data packs", got-dataPacks)
	}
	s := sn2.Summary
	if s.BytesRead != 0 || s.FilesNew != 0 || s.FilesChanged != 0 || s.BlobsAdded != 0 {
		t.Errorf("second backup: read %d bytes, %d new, %d changed, %d chunks added", s.BytesRead, s.FilesNew, s.FilesChanged, s.BlobsAdded)
	}
	if s.FilesUnchanged == 0 || s.FilesUnchanged != sn1.Summary.FilesNew {
		t.Errorf("unchanged %d, first backup new %d", s.FilesUnchanged, sn1.Summary.FilesNew)
	}
	if a, b := subtree(t, r, sn1, src), subtree(t, r, sn2, src); a != b {
		t.Errorf("unchanged directory got a new tree id")
	}
}

func subtree(t *testing.T, r *repo.Repository, sn *repo.Snapshot, p string) (id blob.ID) {
	t.Helper()
	engine.Walk(ctx, r, sn, p, func(q string, n *tree.Node) error {
		if q == p {
			id = n.Subtree
		}
		return nil
	})
	if id.IsZero() {
		t.Fatalf("%s not in snapshot %s", p, sn.ID.Short())
	}
	return id
}

func countDataPacks(t *testing.T, r *repo.Repository) int {
	t.Helper()
	countPacks(t, r) // disk and index agree
	n := 0
	r.Index().EachPack(func(_ blob.ID, info index.PackInfo) error {
		if info.Type == blob.Data {
			n++
		}
		return nil
	})
	return n
}

// A file whose mtime is in the parent snapshot's start second may change
// again within that second without a visible mtime change: it is re-read.
func TestFileModifiedInSnapshotSecondIsReRead(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	os.WriteFile(p, []byte("one"), 0o644)
	start := time.Now().Truncate(time.Second)
	os.Chtimes(p, start.Add(300*time.Millisecond), start.Add(300*time.Millisecond))
	r := enginetest.NewRepo(t)
	backup(t, r, start.Add(500*time.Millisecond), dir)
	sn := backup(t, r, start.Add(2*time.Second), dir)
	if sn.Summary.FilesUnchanged != 0 || sn.Summary.BytesRead != 3 {
		t.Errorf("file with mtime in the parent's second: unchanged=%d read=%d, want re-read", sn.Summary.FilesUnchanged, sn.Summary.BytesRead)
	}
}

// writePages writes a page-structured database: 4 KiB pages of
// semi-compressible records.
func writePages(t testing.TB, p string, pages int, rng *rand.Rand) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := 0; i < pages; i++ {
		if _, err := f.Write(page(rng)); err != nil {
			t.Fatal(err)
		}
	}
}

func page(rng *rand.Rand) []byte {
	var b bytes.Buffer
	for b.Len() < 4096 {
		b.WriteString("dn: cn=user")
		b.WriteString(string(rune('a' + rng.Intn(26))))
		b.WriteString(",ou=people,o=Zoomserv\nmail: ")
		for i := 0; i < 8; i++ {
			b.WriteByte(byte('a' + rng.Intn(26)))
		}
		b.WriteString("@example.org\n")
	}
	return b.Bytes()[:4096]
}

func TestPageChangeInDatabaseAddsLittle(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "X500.db")
	const pages = 4096 // 16 MiB
	rng := rand.New(rand.NewSource(7))
	writePages(t, db, pages, rng)
	r := enginetest.NewRepo(t)
	backup(t, r, day1, dir)
	// 1% of the pages rewritten in place, in runs of 1-16 adjacent pages.
	f, err := os.OpenFile(db, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	changed := 0
	for changed < pages/100 {
		run := 1 + rng.Intn(16)
		at := rng.Intn(pages - run)
		for i := 0; i < run; i++ {
			f.WriteAt(page(rng), int64(at+i)*4096)
		}
		changed += run
	}
	f.Close()
	sn := backup(t, r, day1.Add(24*time.Hour), dir)
	added := sn.Summary.BytesAdded
	changedBytes := int64(changed) * 4096
	t.Logf("%d pages (%d KiB) changed; %d KiB of new chunks, %d KiB stored", changed, changedBytes>>10, added>>10, sn.Summary.StoredAdded>>10)
	if added > 6*changedBytes || added > int64(pages)*4096/20 {
		t.Errorf("a 1%% page change added %d bytes of chunks (%.1f%% of the file); want about the change", added, 100*float64(added)/float64(pages*4096))
	}
}

func TestFileChangingWhileReadIsMarked(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "busy.db")
	if err := os.WriteFile(p, bytes.Repeat([]byte("x"), 32<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "calm"), []byte("calm"), 0o644)
	r := enginetest.NewRepo(t)
	sn := backupWhileAppending(t, r, dir, p) // fails unless ErrIncomplete and a snapshot
	if sn == nil || len(sn.Summary.Problems) != 1 || sn.Summary.Problems[0].Path != p || sn.Summary.Problems[0].Kind != "changed" {
		t.Fatalf("problems = %+v, want busy.db changed", sn.Summary.Problems)
	}
	var flagged bool
	engine.Walk(ctx, r, sn, p, func(_ string, n *tree.Node) error { flagged = n.Flags&tree.Changed != 0; return nil })
	if !flagged {
		t.Error("busy.db not marked changed in the tree")
	}
	// It is still stored and restorable (flagged as possibly inconsistent).
	target := t.TempDir()
	res, err := engine.Restore(ctx, r, sn, engine.RestoreOptions{Target: target})
	if !errors.Is(err, engine.ErrRestoreIncomplete) || len(res.Problems) != 1 {
		t.Errorf("restore of a changed file: %v %+v", err, res)
	}
	if data, _ := os.ReadFile(filepath.Join(target, dir, "calm")); string(data) != "calm" {
		t.Errorf("calm file restored as %q", data)
	}
}

func TestMissingPathIsAnError(t *testing.T) {
	r := enginetest.NewRepo(t)
	_, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{"/no/such/path"}, Now: clock(day1)})
	if !errors.Is(err, engine.ErrPathNotFound) || !strings.Contains(err.Error(), "/no/such/path") {
		t.Fatalf("err = %v", err)
	}
	if list, _, _ := r.Snapshots(ctx); len(list) != 0 {
		t.Errorf("a failed backup left %d snapshots", len(list))
	}
}

func TestExclude(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 4)
	r := enginetest.NewRepo(t)
	sn, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{src}, Now: clock(day1), Excludes: []string{"many", "*.bin"}})
	if err != nil {
		t.Fatal(err)
	}
	engine.Walk(ctx, r, sn, "/", func(p string, n *tree.Node) error {
		if strings.Contains(p, "/many") || strings.HasSuffix(p, ".bin") {
			t.Errorf("%s was excluded but is in the snapshot", p)
		}
		return nil
	})
}

func TestRestoreIncludeOneFile(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 5)
	r := enginetest.NewRepo(t)
	sn := backup(t, r, day1, src)
	target := t.TempDir()
	want := filepath.Join(src, "sub", "deeper", "leaf")
	res := restore(t, r, sn, engine.RestoreOptions{Target: target, Includes: []string{want}})
	if res.Files != 1 {
		t.Errorf("restored %d files, want 1", res.Files)
	}
	a, _ := os.ReadFile(want)
	b, err := os.ReadFile(filepath.Join(target, want))
	if err != nil || !bytes.Equal(a, b) {
		t.Errorf("leaf restored wrong: %v", err)
	}
	if _, err := os.Stat(filepath.Join(target, src, "plain.txt")); err == nil {
		t.Error("plain.txt restored though not included")
	}
	_, err = engine.Restore(ctx, r, sn, engine.RestoreOptions{Target: t.TempDir(), Includes: []string{"/not/there"}})
	if err == nil || !strings.Contains(err.Error(), "/not/there") {
		t.Errorf("include of a missing path: %v", err)
	}
}

func TestRestoreRefusesNonEmptyTarget(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "a"), []byte("new"), 0o644)
	r := enginetest.NewRepo(t)
	sn := backup(t, r, day1, src)
	target := t.TempDir()
	os.MkdirAll(filepath.Join(target, src), 0o755)
	os.WriteFile(filepath.Join(target, src, "a"), []byte("old"), 0o644)
	if _, err := engine.Restore(ctx, r, sn, engine.RestoreOptions{Target: target}); !errors.Is(err, engine.ErrTargetNotEmpty) {
		t.Fatalf("restore into a non-empty target: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(target, src, "a")); string(b) != "old" {
		t.Fatal("refused restore changed the target")
	}
	restore(t, r, sn, engine.RestoreOptions{Target: target, Overwrite: true})
	if b, _ := os.ReadFile(filepath.Join(target, src, "a")); string(b) != "new" {
		t.Fatalf("--overwrite restore gave %q", b)
	}
}

// A file larger than a restore segment is written by several goroutines,
// each to its own range; holes stay holes.
func TestLargeSparseFileRestoresByRanges(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "X500.db")
	rng := rand.New(rand.NewSource(11))
	writePages(t, p, 6144, rng) // 24 MiB
	f, _ := os.OpenFile(p, os.O_RDWR, 0)
	f.Truncate(40 << 20) // 16 MiB hole at the end
	f.WriteAt(page(rng), 40<<20-4096)
	f.Close()
	r := enginetest.NewRepo(t)
	sn := backup(t, r, day1, dir)
	target := t.TempDir()
	restore(t, r, sn, engine.RestoreOptions{Target: target})
	compareTrees(t, dir, filepath.Join(target, dir))
	// The parts are allocated before they are written: the hole must not be.
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(target, p), &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 25<<20 {
		t.Errorf("the restored file uses %d bytes of disk: its 16 MiB hole was allocated", used)
	}
}

func TestDiffBetweenDays(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	makeTree(t, src, 8)
	r := enginetest.NewRepo(t)
	sn1 := backup(t, r, day1, src)
	os.WriteFile(filepath.Join(src, "plain.txt"), []byte("changed"), 0o644)
	os.Chmod(filepath.Join(src, "empty"), 0o600)
	os.Remove(filepath.Join(src, "many", "f03"))
	os.WriteFile(filepath.Join(src, "sub", "new"), []byte("n"), 0o644)
	os.RemoveAll(filepath.Join(src, "emptydir"))
	sn2 := backup(t, r, day1.Add(24*time.Hour), src)
	got := map[string]string{}
	if err := engine.Diff(ctx, r, sn1, sn2, func(c engine.Change) error { got[strings.TrimPrefix(c.Path, src+"/")] = c.What; return nil }); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{"plain.txt": "M", "empty": "U", "many/f03": "-", "sub/new": "+", "emptydir": "-"} {
		if got[p] != want {
			t.Errorf("%s: %q, want %q (all: %v)", p, got[p], want, got)
		}
	}
	if _, ok := got["big.bin"]; ok {
		t.Errorf("unchanged big.bin listed: %v", got)
	}
	n := 0
	engine.Diff(ctx, r, sn2, sn2, func(engine.Change) error { n++; return nil })
	if n != 0 {
		t.Errorf("a snapshot differs from itself in %d entries", n)
	}
}
