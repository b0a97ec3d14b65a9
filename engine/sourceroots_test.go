package engine_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
)

// A backup with SourceRoots reads the tree below the root from its stand-in
// (here a copy made with cp -a, as a filesystem snapshot would be) and
// records the original paths: files changed, removed and added in the
// original since do not show. A second backup from an unchanged stand-in
// reuses every file from the first.
func TestSourceRootsReadTheStandIn(t *testing.T) {
	base := t.TempDir()
	src, snap := filepath.Join(base, "svc"), filepath.Join(base, "snap")
	makeTree(t, src, 3)
	old := day1.Add(-48 * time.Hour)
	filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			os.Chtimes(p, old, old) // older than the parent cutoff: reusable
		}
		return nil
	})
	if out, err := exec.Command("cp", "-a", src, snap).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	// The service moves on after the "snapshot".
	os.WriteFile(filepath.Join(src, "plain.txt"), []byte("written after the snapshot"), 0o644)
	os.Remove(filepath.Join(src, "empty"))
	os.WriteFile(filepath.Join(src, "added-later"), []byte("new"), 0o644)

	r := enginetest.NewRepo(t)
	opts := engine.BackupOptions{Paths: []string{src}, Host: "test", Now: clock(day1), SourceRoots: map[string]string{src: snap}}
	sn1, err := engine.Backup(ctx, r, opts)
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	restore(t, r, sn1, engine.RestoreOptions{Target: target})
	compareTrees(t, snap, filepath.Join(target, src))
	if len(sn1.Paths) != 1 || sn1.Paths[0] != src {
		t.Errorf("snapshot paths %v, want %s", sn1.Paths, src)
	}

	opts.Now = clock(day1.Add(24 * time.Hour))
	sn2, err := engine.Backup(ctx, r, opts)
	if err != nil {
		t.Fatal(err)
	}
	if sn2.Summary.FilesChanged != 0 || sn2.Summary.FilesNew != 0 || sn2.Summary.FilesUnchanged != sn1.Summary.FilesNew {
		t.Errorf("second backup: %d new, %d changed, %d unchanged; want all %d unchanged",
			sn2.Summary.FilesNew, sn2.Summary.FilesChanged, sn2.Summary.FilesUnchanged, sn1.Summary.FilesNew)
	}
}
