package engine_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/retention"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// A whole restore's progress ends at the snapshot's totals, which are also
// the result's counts: a large file written in parallel segments and a
// sparse file's holes included.
func TestProgressRestoreReachesTotals(t *testing.T) {
	f := newFixture(t, 11)
	for i := 0; i < 3; i++ {
		f.mutate()
	}
	big, err := os.Create(filepath.Join(f.src, "big.db")) // 9 MiB: more than one restore segment, with a hole
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	rand.New(rand.NewSource(5)).Read(data)
	for _, off := range []int64{0, 3 << 20, 8 << 20} {
		if _, err := big.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	big.Close()
	sn, _ := f.backup()

	var p engine.Counts
	res, err := engine.Restore(ctx, f.r, sn, engine.RestoreOptions{Target: t.TempDir(), Progress: &p})
	if err != nil {
		t.Fatal(err)
	}
	got := p.Load()
	s := sn.Summary
	wantFiles := s.FilesNew + s.FilesChanged + s.FilesUnchanged
	if got.TotalFiles != wantFiles || got.TotalBytes != s.TotalBytes {
		t.Errorf("progress totals %d files, %d bytes; the snapshot has %d files, %d bytes", got.TotalFiles, got.TotalBytes, wantFiles, s.TotalBytes)
	}
	if got.Files != res.Files || got.Bytes != res.Bytes {
		t.Errorf("progress ended at %d files, %d bytes; restore restored %d files, %d bytes", got.Files, got.Bytes, res.Files, res.Bytes)
	}
	if got.Files != got.TotalFiles || got.Bytes != got.TotalBytes {
		t.Errorf("progress ended at %d of %d files, %d of %d bytes; want all", got.Files, got.TotalFiles, got.Bytes, got.TotalBytes)
	}

	// With --include the totals are not known, the counts still match.
	var pi engine.Counts
	res, err = engine.Restore(ctx, f.r, sn, engine.RestoreOptions{Target: t.TempDir(), Includes: []string{filepath.Join(f.src, "big.db")}, Progress: &pi})
	if err != nil {
		t.Fatal(err)
	}
	if got := pi.Load(); got.TotalBytes != 0 || got.Files != 1 || got.Bytes != 9<<20 || res.Bytes != 9<<20 {
		t.Errorf("restore of one 9 MiB file: progress %+v, result %d bytes", got, res.Bytes)
	}
}

// A file that cannot be restored takes its bytes back out of the progress.
func TestProgressRestoreOfADamagedFileMatchesTheResult(t *testing.T) {
	f := newFixture(t, 12)
	f.mutate()
	data := make([]byte, 4<<20) // several chunks, the last one lost
	rand.New(rand.NewSource(6)).Read(data)
	os.WriteFile(filepath.Join(f.src, "lost"), data, 0o644)
	sn, _ := f.backup()
	var lost blob.ID
	if err := engine.Walk(ctx, f.r, sn, "", func(p string, n *tree.Node) error {
		if strings.HasSuffix(p, "/lost") {
			if len(n.Content) < 2 {
				return fmt.Errorf("%s has %d chunks; the test needs several", p, len(n.Content))
			}
			lost = n.Content[len(n.Content)-1].ID
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var p engine.Counts
	res, err := engine.Restore(ctx, missingBlob{f.r, lost}, sn, engine.RestoreOptions{Target: t.TempDir(), Progress: &p})
	if err == nil || res == nil || len(res.Problems) != 1 {
		t.Fatalf("restore with a lost chunk: %v, %+v; want one problem", err, res)
	}
	if got := p.Load(); got.Files != res.Files || got.Bytes != res.Bytes {
		t.Errorf("progress ended at %d files, %d bytes; restore restored %d files, %d bytes", got.Files, got.Bytes, res.Files, res.Bytes)
	}
}

// missingBlob is a repository whose blob id cannot be loaded.
type missingBlob struct {
	*repo.Repository
	id blob.ID
}

func (m missingBlob) LoadBlob(ctx context.Context, id blob.ID, buf []byte) ([]byte, error) {
	if id == m.id {
		return buf, fmt.Errorf("blob %s: %w", id.Short(), repo.ErrBlobNotFound)
	}
	return m.Repository.LoadBlob(ctx, id, buf)
}

func (m missingBlob) LoadBlobAt(ctx context.Context, id blob.ID, loc repo.Location, buf []byte) ([]byte, error) {
	if id == m.id {
		return buf, fmt.Errorf("blob %s: %w", id.Short(), repo.ErrBlobNotFound)
	}
	return m.Repository.LoadBlobAt(ctx, id, loc, buf)
}

// check --read-data counts every pack it reads, of all the packs there are.
func TestProgressCheckReadDataReachesTotals(t *testing.T) {
	f := newFixture(t, 13)
	for i := 0; i < 4; i++ {
		f.mutate()
		f.backup()
	}
	var packs, size int64
	f.r.EachPackFile(ctx, func(_ blob.ID, n int64) error { packs++; size += n; return nil }, nil)
	if packs < 2 {
		t.Fatalf("%d packs: the test needs several", packs)
	}
	var p engine.Counts
	rep, err := engine.Check(ctx, f.r, engine.CheckOptions{ReadData: true, Progress: &p})
	if err != nil || !rep.OK() {
		t.Fatalf("check: %v %v", err, rep.Errors)
	}
	got := p.Load()
	if got.TotalFiles != packs || got.TotalBytes != size || got.Files != packs || got.Bytes != size {
		t.Errorf("check progress %+v; want %d of %d packs, %d of %d bytes", got, packs, packs, size, size)
	}
}

// Each phase of prune ends at its totals: the snapshots marked, the packs
// repacked and the packs deleted. A Log line starts each phase, so the
// counts seen when a line is written are the end of the phase before.
func TestProgressPruneReachesTotals(t *testing.T) {
	f := newFixture(t, 14)
	for i := 0; i < 5; i++ {
		f.mutate()
		f.backup()
	}
	if _, err := engine.Forget(ctx, f.r, engine.ForgetOptions{Policy: retention.Policy{Last: 2}, Now: f.now.Add(1)}); err != nil {
		t.Fatal(err)
	}
	var p engine.Counts
	log := &phaseLog{p: &p}
	rep, err := engine.Prune(ctx, f.r, engine.PruneOptions{MaxUnused: 0.000001, Log: slog.New(slog.NewTextHandler(log, nil)), Progress: &p})
	if err != nil {
		t.Fatal(err)
	}
	if rep.PacksRepacked == 0 || rep.PacksDeleted == 0 {
		t.Fatalf("prune deleted %d and repacked %d packs; the test needs both", rep.PacksDeleted, rep.PacksRepacked)
	}
	ends := map[string]engine.CountsValue{}
	for _, v := range append(log.seen, p.Load()) {
		ends[v.Phase] = v
	}
	if m := ends["marking"]; m.Files != 2 || m.TotalFiles != 2 {
		t.Errorf("marking ended at %+v; want 2 of 2 snapshots", m)
	}
	if r := ends["repacking"]; r.Files != int64(rep.PacksRepacked) || r.Files != r.TotalFiles || r.Bytes != r.TotalBytes || r.Bytes == 0 {
		t.Errorf("repacking ended at %+v; want all of %d packs", r, rep.PacksRepacked)
	}
	d := p.Load()
	if n := int64(rep.PacksDeleted + rep.PacksUnindexed + rep.PacksRepacked); d.Phase != "deleting" || d.Files != n || d.TotalFiles != n || d.Bytes != d.TotalBytes {
		t.Errorf("prune ended at %+v; want deleting, all of %d packs", d, n)
	}
}

// phaseLog records the counts each time a phase line is written.
type phaseLog struct {
	mu   sync.Mutex
	p    *engine.Counts
	seen []engine.CountsValue
}

func (l *phaseLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen = append(l.seen, l.p.Load())
	return len(b), nil
}

// A nil *Counts is valid and counts nothing.
func TestProgressNilCounts(t *testing.T) {
	var p *engine.Counts
	p.Add(1, 2)
	p.SetTotals(3, 4)
	p.StartPhase("x", 1, 1)
	if v := p.Load(); v != (engine.CountsValue{}) {
		t.Errorf("nil counts loaded %+v", v)
	}
}
