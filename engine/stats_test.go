package engine_test

import (
	"testing"

	"github.com/stasisbackup/stasis/engine"
)

// RepoStats adds up the snapshots' summaries and the index: the same data
// backed up twice counts twice in logical size, once in unique data.
func TestStats(t *testing.T) {
	f := newFixture(t, 9)
	f.mutate()
	first, _ := f.backup()
	second, _ := f.backup() // nothing changed
	st, err := engine.RepoStats(ctx, f.r)
	if err != nil {
		t.Fatal(err)
	}
	if st.Snapshots != 2 || st.LogicalBytes != first.Summary.TotalBytes+second.Summary.TotalBytes || st.LogicalBytes == 0 {
		t.Errorf("stats %+v: want 2 snapshots of %d and %d bytes", st, first.Summary.TotalBytes, second.Summary.TotalBytes)
	}
	if st.Packs != int64(f.packFiles()) || st.Chunks == 0 || st.Trees == 0 || st.StoredBytes == 0 {
		t.Errorf("stats %+v: want the %d packs, their chunks and trees", st, f.packFiles())
	}
	if st.UniqueBytes > first.Summary.TotalBytes || st.DedupRatio < 2 {
		t.Errorf("stats %+v: the second backup should deduplicate entirely", st)
	}
}
