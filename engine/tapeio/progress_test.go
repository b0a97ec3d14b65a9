package tapeio

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/tape"
	"github.com/stasisbackup/stasis/internal/enginetest"
)

// Export, Import and Verify count every member, and end at their totals:
// the members and bytes written, and those of the volumes' catalogs.
func TestProgressExportImportVerifyReachTotals(t *testing.T) {
	ctx := context.Background()
	r := enginetest.NewRepo(t)
	src := t.TempDir()
	rng := rand.New(rand.NewSource(9))
	for i := 0; i < 3; i++ {
		b := make([]byte, 200<<10)
		rng.Read(b)
		os.WriteFile(filepath.Join(src, fmt.Sprintf("f%d", i)), b, 0o600)
		if _, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{src}}); err != nil {
			t.Fatal(err)
		}
	}
	d := &drive{dir: t.TempDir(), blockSize: 4096, capacity: 64 << 20}
	var ep engine.Counts
	perMember := 0
	res, err := Export(ctx, r, d, ExportOptions{Write: tape.WriteOptions{BlockSize: 4096, VolumeSize: 400 << 10,
		Progress: func(int, string, int64) { perMember++ }}, Progress: &ep})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Catalogs) < 2 {
		t.Fatalf("%d volumes; the test needs several", len(res.Catalogs))
	}
	got := ep.Load()
	if got.Files != int64(res.Members) || got.Bytes != res.Bytes || got.TotalFiles != got.Files || got.TotalBytes != got.Bytes {
		t.Errorf("export progress %+v; wrote %d members, %d bytes", got, res.Members, res.Bytes)
	}
	if perMember != res.Members {
		t.Errorf("the caller's own Progress was called %d times for %d members", perMember, res.Members)
	}

	var paths []string
	for i := len(res.Catalogs); i >= 1; i-- {
		paths = append(paths, d.path(i))
	}
	var vp engine.Counts
	reports, err := Verify(ctx, paths, ReadOptions{BlockSize: 4096, Progress: &vp}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, vr := range reports {
		if !vr.OK {
			t.Fatalf("verify %s: %+v", vr.Path, vr)
		}
	}
	if got := vp.Load(); got.Files != int64(res.Members) || got.Bytes != res.Bytes || got.TotalFiles != got.Files || got.TotalBytes != got.Bytes {
		t.Errorf("verify progress %+v; the set has %d members, %d bytes", got, res.Members, res.Bytes)
	}

	var ip engine.Counts
	imp, err := Import(ctx, enginetest.Local(filepath.Join(t.TempDir(), "imported")), paths,
		ImportOptions{Read: ReadOptions{BlockSize: 4096, Progress: &ip}, Open: enginetest.OpenOptions()})
	if err != nil {
		t.Fatalf("import: %v (%+v)", err, imp)
	}
	if got := ip.Load(); got.Files != int64(imp.Files) || got.Bytes != imp.Bytes || got.TotalFiles != got.Files || got.TotalBytes != got.Bytes {
		t.Errorf("import progress %+v; imported %d files, %d bytes", got, imp.Files, imp.Bytes)
	}
}
