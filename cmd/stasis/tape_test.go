package main

import (
	"bytes"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// tapeSource is a source tree of incompressible files (so packs have real
// sizes) from a fixed seed.
func tapeSource(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "zoomserv")
	os.MkdirAll(filepath.Join(dir, "ldif"), 0o755)
	rng := rand.New(rand.NewSource(6))
	for _, f := range []struct {
		name string
		size int
	}{{"X500.db", 300 << 10}, {"ldif/people.ldif", 40 << 10}, {"conf", 3000}} {
		b := make([]byte, f.size)
		rng.Read(b)
		if err := os.WriteFile(filepath.Join(dir, f.name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// sameTree fails unless every regular file below src is restored with the
// same bytes below target (paths are recreated in full).
func sameTree(t *testing.T, src, target string) {
	t.Helper()
	n := 0
	filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		n++
		want, _ := os.ReadFile(p)
		got, err := os.ReadFile(filepath.Join(target, p))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("restored %s differs or is missing: %v", p, err)
		}
		return nil
	})
	if n == 0 {
		t.Fatal("empty source")
	}
}

func volumes(t *testing.T, dir string) []string {
	t.Helper()
	v, _ := filepath.Glob(filepath.Join(dir, "vol-*.tar"))
	sort.Strings(v)
	return v
}

func deviceArgs(vols []string) []string {
	var a []string
	for _, v := range vols {
		a = append(a, "--device", v)
	}
	return a
}

func TestCLITapeRoundTrip(t *testing.T) {
	setupEnv(t)
	src := tapeSource(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "backup", "--init", "--repo", repoDir, src)
	tapes := t.TempDir()
	out := mustRun(t, "tape", "export", "--repo", repoDir, "--device", filepath.Join(tapes, "vol-%03d.tar"), "--label", "weekly")
	if !strings.Contains(out, "new set") {
		t.Errorf("export output:\n%s", out)
	}
	vols := volumes(t, tapes)
	if len(vols) != 1 {
		t.Fatalf("%d volumes, want 1", len(vols))
	}
	// The catalog is recorded in the repository.
	if recs, _ := filepath.Glob(filepath.Join(repoDir, "tape", "*", "000001.json")); len(recs) != 1 {
		t.Errorf("recorded catalogs: %v", recs)
	}
	// No plaintext from the source on the volume (encrypted repository).
	vol, _ := os.ReadFile(vols[0])
	x500, _ := os.ReadFile(filepath.Join(src, "X500.db"))
	if bytes.Contains(vol, x500[:64]) || bytes.Contains(vol, []byte("people.ldif")) || bytes.Contains(vol, []byte(src)) {
		t.Error("the volume holds plaintext of the source")
	}
	if tar, err := exec.LookPath("tar"); err == nil {
		lst, err := exec.Command(tar, "-b", "512", "-tf", vols[0]).CombinedOutput()
		if err != nil {
			t.Fatalf("GNU tar -tf: %v\n%s", err, lst)
		}
		for _, want := range []string{"STASIS-VOLUME.json", "config", "keys/", "packs/", "snapshots/", "STASIS-CATALOG-000001.json"} {
			if !strings.Contains(string(lst), want) {
				t.Errorf("tar -tf lacks %s:\n%s", want, lst)
			}
		}
	} else {
		t.Log("GNU tar not installed (Debian package tar): skipping the tar listing")
	}
	out = mustRun(t, "tape", "list", "--device", vols[0])
	if !strings.Contains(out, "label \"weekly\"") || !strings.Contains(out, "config") {
		t.Errorf("list:\n%s", out)
	}
	out = mustRun(t, "tape", "verify", "--repo", repoDir, "--device", vols[0])
	if !strings.Contains(out, "as recorded in the repository") {
		t.Errorf("verify:\n%s", out)
	}

	imported := filepath.Join(t.TempDir(), "imported")
	mustRun(t, "tape", "import", "--repo", imported, "--device", vols[0])
	if out := mustRun(t, "check", "--read-data", "--repo", imported); !strings.Contains(out, "no errors") {
		t.Errorf("check of the imported repository:\n%s", out)
	}
	target := t.TempDir()
	mustRun(t, "restore", "latest", "--repo", imported, "--target", target)
	sameTree(t, src, target)

	direct := t.TempDir()
	out = mustRun(t, "tape", "restore", "--device", vols[0], "latest", "--target", direct)
	if !strings.Contains(out, "restored snapshot") {
		t.Errorf("tape restore:\n%s", out)
	}
	sameTree(t, src, direct)
}

func TestCLITapeMultiVolumeIncrementalAndDamage(t *testing.T) {
	setupEnv(t)
	src := tapeSource(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	// X500.db alone first, so that its data is in a pack of its own.
	extra := t.TempDir()
	os.Rename(filepath.Join(src, "ldif"), filepath.Join(extra, "ldif"))
	os.Rename(filepath.Join(src, "conf"), filepath.Join(extra, "conf"))
	mustRun(t, "backup", "--init", "--repo", repoDir, src)
	os.Rename(filepath.Join(extra, "ldif"), filepath.Join(src, "ldif"))
	os.Rename(filepath.Join(extra, "conf"), filepath.Join(src, "conf"))
	mustRun(t, "backup", "--repo", repoDir, src)
	tapes := t.TempDir()
	dev := filepath.Join(tapes, "vol-%03d.tar")
	mustRun(t, "tape", "export", "--repo", repoDir, "--device", dev, "--block-size", "4K", "--volume-size", "320K")
	first := volumes(t, tapes)
	if len(first) < 2 {
		t.Fatalf("%d volumes with --volume-size 320K, want several", len(first))
	}

	// A small change, then an incremental export: only the new packs and
	// the new snapshot are written.
	os.WriteFile(filepath.Join(src, "conf"), []byte("changed configuration\n"), 0o600)
	mustRun(t, "backup", "--repo", repoDir, src)
	out := mustRun(t, "tape", "export", "--repo", repoDir, "--device", dev, "--block-size", "4K", "--volume-size", "320K", "--incremental")
	if !strings.Contains(out, "appended to set") || !strings.Contains(out, "already on the set") {
		t.Errorf("incremental export:\n%s", out)
	}
	all := volumes(t, tapes)
	added := all[len(first):]
	if len(added) != 1 {
		t.Fatalf("incremental export wrote %d volumes, want 1", len(added))
	}
	if fi, _ := os.Stat(added[0]); fi.Size() > 64<<10 {
		t.Errorf("incremental volume is %d bytes: it must carry only the small new packs", fi.Size())
	}

	// Import from shuffled volumes.
	shuffled := append([]string(nil), all...)
	rand.New(rand.NewSource(1)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	imported := filepath.Join(t.TempDir(), "imported")
	mustRun(t, append([]string{"tape", "import", "--repo", imported, "--block-size", "4K"}, deviceArgs(shuffled)...)...)
	mustRun(t, "check", "--read-data", "--repo", imported)
	target := t.TempDir()
	mustRun(t, "restore", "latest", "--repo", imported, "--target", target)
	sameTree(t, src, target)

	// A missing volume is named.
	code, out, errs := stasis(t, append([]string{"tape", "import", "--repo", filepath.Join(t.TempDir(), "r"), "--block-size", "4K"}, deviceArgs(all[1:])...)...)
	if code != 1 || !strings.Contains(out, "missing volume 1 ") {
		t.Errorf("import without volume 1: exit %d\n%s%s", code, out, errs)
	}

	// A flipped byte in the largest pack: verify names it, tape restore
	// restores every other file and names the damaged ones.
	damaged := flipLargestPack(t, all)
	code, out, _ = stasis(t, "tape", "verify", "--block-size", "4K", "--device", damaged.vol)
	if code != 1 || !strings.Contains(out, "bad member "+damaged.name) {
		t.Errorf("verify of a flipped byte: exit %d\n%s", code, out)
	}
	direct := t.TempDir()
	code, _, errs = stasis(t, append([]string{"tape", "restore", "latest", "--target", direct, "--block-size", "4K"}, deviceArgs(all)...)...)
	if code != 1 || !strings.Contains(errs, damaged.name) || !strings.Contains(errs, "X500.db") {
		t.Errorf("tape restore with a damaged pack: exit %d\n%s", code, errs)
	}
	for _, f := range []string{"conf", "ldif/people.ldif"} {
		want, _ := os.ReadFile(filepath.Join(src, f))
		if got, err := os.ReadFile(filepath.Join(direct, src, f)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("unaffected %s not restored: %v", f, err)
		}
	}

	// A truncated volume is reported.
	fi, _ := os.Stat(all[0])
	os.Truncate(all[0], fi.Size()/2)
	code, out, _ = stasis(t, "tape", "verify", "--block-size", "4K", "--device", all[0])
	if code != 1 || !strings.Contains(out, "truncated") {
		t.Errorf("verify of a truncated volume: exit %d\n%s", code, out)
	}
}

type member struct{ vol, name string }

// flipLargestPack flips a byte in the middle of the largest pack member
// (X500.db's data) on the volumes and returns where it was.
func flipLargestPack(t *testing.T, vols []string) member {
	t.Helper()
	var best member
	var bestSize int64
	for _, v := range vols {
		_, out, _ := stasis(t, "tape", "list", "--block-size", "4K", "--device", v)
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) == 3 && strings.HasPrefix(f[2], "packs/") {
				var n int64
				for _, c := range f[0] {
					n = n*10 + int64(c-'0')
				}
				if n > bestSize {
					best, bestSize = member{v, f[2]}, n
				}
			}
		}
	}
	data, _ := os.ReadFile(best.vol)
	base := filepath.Base(best.name)
	i := bytes.Index(data, []byte(best.name))
	if i < 0 || bestSize == 0 {
		t.Fatalf("pack %s not found on %s", base, best.vol)
	}
	data[i/512*512+512+int(bestSize/2)] ^= 0x40
	os.WriteFile(best.vol, data, 0o600)
	return best
}
