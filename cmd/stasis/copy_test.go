package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/internal/backendtest"
	"github.com/stasisbackup/stasis/internal/enginetest"
)

const copySourcePassword = "the source's own password"

// copySource makes a source repository (with copySourcePassword, given as
// a file) holding two days of backups of a sample tree, and returns it,
// the password file and the backed-up tree.
func copySource(t *testing.T) (srcRepo, pwFile, data string) {
	t.Helper()
	data = sampleTree(t)
	srcRepo = filepath.Join(t.TempDir(), "src")
	pwFile = filepath.Join(t.TempDir(), "src-password")
	if err := os.WriteFile(pwFile, []byte(copySourcePassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "init", "--repo", srcRepo, "--password-file", pwFile)
	mustRun(t, "backup", "--repo", srcRepo, "--password-file", pwFile, "--host", "zoom1", "--tag", "daily", data)
	copyChangeDB(t, data, 2)
	mustRun(t, "backup", "--repo", srcRepo, "--password-file", pwFile, "--host", "zoom1", "--tag", "daily", data)
	return srcRepo, pwFile, data
}

// copyChangeDB rewrites a page of X500.db (a day's change).
func copyChangeDB(t *testing.T, data string, day byte) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(data, "X500.db"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(strings.Repeat(string('A'+rune(day)), 64)), int64(day)*4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	old := time.Now().Add(-time.Hour + time.Duration(day)*time.Minute)
	os.Chtimes(filepath.Join(data, "X500.db"), old, old)
}

// snapshotIDs lists a repository's snapshots (--json) as id → original.
func snapshotIDs(t *testing.T, args ...string) map[string]string {
	t.Helper()
	var list []snapshotJSON
	if err := json.Unmarshal([]byte(mustRun(t, append([]string{"snapshots", "--json"}, args...)...)), &list); err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, sn := range list {
		m[sn.ID] = sn.Original
	}
	return m
}

// copyRestoresEqual restores snapshot a of repository ra and b of rb and
// compares the trees: content, mode, mtime and symlink targets.
func copyRestoresEqual(t *testing.T, ra, a, rb, b string, extra ...string) {
	t.Helper()
	da, db := t.TempDir(), t.TempDir()
	mustRun(t, "restore", a, "--repo", ra, "--target", da, "--password-file", extra[0])
	mustRun(t, "restore", b, "--repo", rb, "--target", db)
	if ha, hb := enginetest.FileHashes(t, da), enginetest.FileHashes(t, db); !reflect.DeepEqual(ha, hb) || len(ha) == 0 {
		t.Errorf("restores of %s and its copy %s differ:\n%v\n%v", a, b, ha, hb)
	}
	meta := func(dir string) map[string]string {
		m := map[string]string{}
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := os.Lstat(p)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(dir, p)
			m[rel] = fi.Mode().String() + " " + fi.ModTime().UTC().Format(time.RFC3339Nano)
			return nil
		})
		delete(m, ".")
		return m
	}
	if ma, mb := meta(da), meta(db); !reflect.DeepEqual(ma, mb) {
		t.Errorf("metadata of the restores of %s and its copy %s differ:\n%v\n%v", a, b, ma, mb)
	}
}

var copiedLine = regexp.MustCompile(`copied snapshot ([0-9a-f]{8}) as ([0-9a-f]{8}) \((\d+) new blobs, `)

// TestCopyCLI copies two days between repositories with different
// passwords, checks and restores the copies, copies again (nothing), and
// after a third day copies only the new snapshot.
func TestCopyCLI(t *testing.T) {
	setupEnv(t) // the destination's password: STASIS_PASSWORD
	srcRepo, pwFile, data := copySource(t)
	dst := filepath.Join(t.TempDir(), "dst")
	mustRun(t, "init", "--repo", dst)

	out := mustRun(t, "copy", "--repo", dst, "--from-repo", srcRepo, "--from-password-file", pwFile)
	m := copiedLine.FindAllStringSubmatch(out, -1)
	if len(m) != 2 || !strings.Contains(out, "2 snapshots copied") {
		t.Fatalf("copy output:\n%s", out)
	}
	if out := mustRun(t, "check", "--repo", dst, "--read-data"); !strings.Contains(out, "no errors") {
		t.Errorf("check of the destination:\n%s", out)
	}
	copies := snapshotIDs(t, "--repo", dst)
	for _, c := range m {
		var orig string
		for id, o := range copies {
			if strings.HasPrefix(id, c[2]) {
				orig = o
			}
		}
		if !strings.HasPrefix(orig, c[1]) {
			t.Errorf("copy %s records original %q, want %s", c[2], orig, c[1])
		}
		copyRestoresEqual(t, srcRepo, c[1], dst, c[2], pwFile)
	}
	var js []snapshotJSON
	json.Unmarshal([]byte(mustRun(t, "snapshots", "--json", "--repo", dst, "--host", "zoom1", "--tag", "daily")), &js)
	if len(js) != 2 {
		t.Errorf("host and tags were not kept: %d copies of host zoom1 tagged daily", len(js))
	}

	// Again: nothing to copy, and it says so.
	t.Setenv("STASIS_FROM_PASSWORD", copySourcePassword)
	t.Setenv("STASIS_FROM_REPO", srcRepo)
	out = mustRun(t, "copy", "--repo", dst)
	if strings.Count(out, "already copied as") != 2 || !strings.Contains(out, "0 snapshots copied") || copiedLine.MatchString(out) {
		t.Errorf("second copy:\n%s", out)
	}

	// A third day: only its snapshot, with few new blobs.
	copyChangeDB(t, data, 3)
	mustRun(t, "backup", "--repo", srcRepo, "--password-file", pwFile, "--host", "zoom1", data)
	var sum struct {
		Copied, Skipped int
		BlobsAdded      int64 `json:"blobs_added"`
		Snapshots       []copyJSON
	}
	out = mustRun(t, "copy", "--repo", dst, "--json")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil {
		t.Fatalf("copy --json: %v\n%s", err, out)
	}
	if !strings.Contains(lines[len(lines)-2], `"message_type":"status"`) || !strings.Contains(lines[len(lines)-2], `"command":"copy"`) {
		t.Errorf("copy --json: no status line before the summary:\n%s", out)
	}
	if sum.Copied != 1 || sum.Skipped != 2 || sum.BlobsAdded == 0 || sum.BlobsAdded > 8 {
		t.Errorf("third copy: %+v, want 1 copied with a few blobs, 2 skipped", sum)
	}
	last := sum.Snapshots[len(sum.Snapshots)-1]
	copyRestoresEqual(t, srcRepo, last.Source, dst, last.Snapshot, pwFile)
	if out := mustRun(t, "check", "--repo", dst, "--read-data"); !strings.Contains(out, "no errors") {
		t.Errorf("check of the destination:\n%s", out)
	}
	// Only the snapshot asked for.
	if out := mustRun(t, "copy", "--repo", dst, "latest"); strings.Count(out, "already copied") != 1 {
		t.Errorf("copy latest:\n%s", out)
	}
}

// objectList is every file below dir with its size.
func objectList(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	m := map[string]int64{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			fi, _ := d.Info()
			m[strings.TrimPrefix(p, dir)] = fi.Size()
		}
		return nil
	})
	return m
}

// A wrong or missing source password exits 12 naming the source, and the
// destination is left as it was.
func TestCopyWrongSourcePassword(t *testing.T) {
	setupEnv(t)
	srcRepo, _, _ := copySource(t)
	dst := filepath.Join(t.TempDir(), "dst")
	mustRun(t, "init", "--repo", dst)
	before := objectList(t, dst)

	t.Setenv("STASIS_FROM_PASSWORD", "not the password")
	code, out, errs := stasis(t, "copy", "--repo", dst, "--from-repo", srcRepo)
	if code != exitPassword || !strings.Contains(errs, srcRepo) || !strings.Contains(errs, "wrong password") || strings.Contains(errs, dst) {
		t.Errorf("wrong source password: exit %d\n%s%s", code, out, errs)
	}
	t.Setenv("STASIS_FROM_PASSWORD", "")
	code, out, errs = stasis(t, "copy", "--repo", dst, "--from-repo", srcRepo)
	if code != exitPassword || !strings.Contains(errs, "--from-password-file") {
		t.Errorf("no source password: exit %d\n%s%s", code, out, errs)
	}
	if after := objectList(t, dst); !reflect.DeepEqual(before, after) {
		t.Errorf("the destination changed:\nbefore %v\nafter  %v", before, after)
	}
	if code, _, errs := stasis(t, "copy", "--repo", dst); code != exitUsage || !strings.Contains(errs, "--from-repo") {
		t.Errorf("no source: exit %d, %s", code, errs)
	}
	if code, _, errs := stasis(t, "copy", "--repo", filepath.Join(t.TempDir(), "none"), "--from-repo", srcRepo); code != exitNoRepo || !strings.Contains(errs, "destination") {
		t.Errorf("no destination: exit %d, %s", code, errs)
	}
}

// TestCopyToS3 copies a local repository into one on S3 (SeaweedFS) and
// restores from there.
func TestCopyToS3(t *testing.T) {
	setupEnv(t)
	srv := backendtest.Seaweed(t) // skips with a message when weed is missing
	tg := srv.NewTarget(t)
	tg.Setenv(t)
	srcRepo, pwFile, _ := copySource(t)
	mustRun(t, "init", "--repo", tg.URL)
	out := mustRun(t, "copy", "--repo", tg.URL, "--from-repo", srcRepo, "--from-password-file", pwFile)
	m := copiedLine.FindAllStringSubmatch(out, -1)
	if len(m) != 2 {
		t.Fatalf("copy to S3:\n%s", out)
	}
	for _, c := range m {
		copyRestoresEqual(t, srcRepo, c[1], tg.URL, c[2], pwFile)
	}
	if out := mustRun(t, "check", "--repo", tg.URL, "--read-data"); !strings.Contains(out, "no errors") {
		t.Errorf("check of the S3 destination:\n%s", out)
	}
	// And back from S3 into a new local repository.
	back := filepath.Join(t.TempDir(), "back")
	mustRun(t, "init", "--repo", back, "--password-file", pwFile)
	t.Setenv("STASIS_FROM_PASSWORD", "correct horse battery staple")
	out = mustRun(t, "copy", "--repo", back, "--password-file", pwFile, "--from-repo", tg.URL)
	if !strings.Contains(out, "2 snapshots copied") {
		t.Errorf("copy from S3:\n%s", out)
	}
}

// TestCopyKilled SIGKILLs `stasis copy` (the built binary) at moments drawn
// from a fixed seed below half the time an uninterrupted copy takes: every next
// copy runs with no manual step, the destination checks clean after each
// kill, and the copy that finishes gives snapshots that restore as their
// sources.
func TestCopyKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs it many times")
	}
	setupEnv(t)
	srcDir := filepath.Join(t.TempDir(), "src")
	e := &crashEnv{t: t, bin: buildStasis(t), dir: srcDir, src: filepath.Join(t.TempDir(), "data"), rng: rand.New(rand.NewSource(7))}
	e.must("init")
	for step := 0; step < 4; step++ {
		e.mutate(step)
		e.must("backup", "--tag", fmt.Sprintf("step%d", step), e.src)
	}
	t.Setenv("STASIS_FROM_PASSWORD", "correct horse battery staple")
	t.Setenv("STASIS_FROM_REPO", srcDir)
	// Calibrate on a throw-away destination.
	cal := &crashEnv{t: t, bin: e.bin, dir: filepath.Join(t.TempDir(), "calibration")}
	cal.must("init")
	began := time.Now()
	cal.must("copy")
	span := time.Since(began)

	d := &crashEnv{t: t, bin: e.bin, dir: filepath.Join(t.TempDir(), "dst"), rng: e.rng}
	d.must("init")
	kills := 0
	for i := 0; i < 6; i++ {
		if d.killed(span/2, "copy") { // below half: most die mid-way, whatever the machine's load
			break
		}
		kills++
		if out, err := d.cmd("check").CombinedOutput(); err != nil {
			t.Fatalf("check of the destination after kill %d: %v\n%s", kills, err, out)
		}
	}
	if kills == 0 {
		t.Fatal("no copy was killed; the test proves little")
	}
	out := string(d.must("copy"))
	if n := len(copiedLine.FindAllString(out, -1)) + strings.Count(out, "already copied as"); n != 4 {
		t.Errorf("final copy dealt with %d snapshots, want 4:\n%s", n, out)
	}
	if out, err := d.cmd("check", "--read-data").CombinedOutput(); err != nil {
		t.Fatalf("check --read-data after %d kills: %v\n%s", kills, err, out)
	}
	var list []snapshotJSON
	if err := json.Unmarshal(d.must("snapshots", "--json"), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 4 {
		t.Fatalf("destination has %d snapshots after the kills, want 4 (one per source snapshot)", len(list))
	}
	for _, sn := range list {
		a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
		e.must("restore", sn.Original, "--target", a)
		d.must("restore", sn.ID, "--target", b)
		if ha, hb := enginetest.FileHashes(t, a), enginetest.FileHashes(t, b); !reflect.DeepEqual(ha, hb) || len(ha) == 0 {
			t.Errorf("copy %s of %s restores differently", sn.ShortID, sn.Original[:8])
		}
	}
	t.Logf("%d kills in a copy of %s", kills, span.Round(time.Millisecond))
}
