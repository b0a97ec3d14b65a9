package engine_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

// Check's pack-file step, alone: an indexed pack whose file is gone or has
// another size is missing (an error each), a pack file no index names and
// a file under packs/ not named like a pack are warnings.
func TestCheckPackFiles(t *testing.T) {
	f := newFixture(t, 5)
	f.mutate()
	f.backup()
	var packs []blob.ID
	f.r.EachPack(func(id blob.ID, _ repo.PackInfo) error { packs = append(packs, id); return nil })
	if len(packs) < 2 {
		t.Fatalf("%d packs; the test needs 2", len(packs))
	}
	gone, cut := packs[0], packs[1]
	goneFile, cutFile := filepath.Join(f.dir, repo.PackName(gone)), filepath.Join(f.dir, repo.PackName(cut))
	goneData, err := os.ReadFile(goneFile)
	if err != nil {
		t.Fatal(err)
	}
	cutData, err := os.ReadFile(cutFile)
	if err != nil {
		t.Fatal(err)
	}
	var stray blob.ID
	stray[0] = 0xab
	strayFile, junk := filepath.Join(f.dir, repo.PackName(stray)), filepath.Join(f.dir, "packs", "junk")
	if err := os.MkdirAll(filepath.Dir(strayFile), 0o755); err != nil {
		t.Fatal(err)
	}
	for p, data := range map[string][]byte{strayFile: []byte("stray"), junk: []byte("junk"), cutFile: cutData[:len(cutData)-1]} {
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(goneFile); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // whole again for the check at the end of the test
		os.WriteFile(goneFile, goneData, 0o644)
		os.WriteFile(cutFile, cutData, 0o644)
		os.Remove(strayFile)
		os.Remove(junk)
	})

	missing, rep, err := engine.CheckPackFiles(ctx, f.r)
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != 2 || !missing[gone] || !missing[cut] {
		t.Errorf("missing %v, want %s and %s", missing, gone.Short(), cut.Short())
	}
	if rep.Packs != len(packs) {
		t.Errorf("counted %d packs, want %d", rep.Packs, len(packs))
	}
	errs, warns := strings.Join(rep.Errors, "\n"), strings.Join(rep.Warnings, "\n")
	for _, want := range []string{"pack " + gone.String() + " is missing", "pack " + cut.String() + " has "} {
		if !strings.Contains(errs, want) {
			t.Errorf("errors do not say %q:\n%s", want, errs)
		}
	}
	for _, want := range []string{"pack " + stray.String() + " is in no index file", "packs/junk: not a pack file name"} {
		if !strings.Contains(warns, want) {
			t.Errorf("warnings do not say %q:\n%s", want, warns)
		}
	}
	if len(rep.Errors) != 2 || len(rep.Warnings) != 2 {
		t.Errorf("%d errors and %d warnings, want 2 each:\n%s\n%s", len(rep.Errors), len(rep.Warnings), errs, warns)
	}
}
