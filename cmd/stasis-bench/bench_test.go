package main

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/cmd/zoomsim/zdb"
)

func smallWorkload(t *testing.T) Workload {
	return Workload{Root: filepath.Join(t.TempDir(), "srv", "zoomserv"), DBSize: 256 * zdb.PageSize, LogSize: 64 << 10, Files: 60, Seed: 7}
}

// tree reads every regular file below root into a map of relative path → bytes.
func tree(t *testing.T, root string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(root, p)
		m[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func sameTrees(t *testing.T, a, b map[string][]byte) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("trees have %d and %d files", len(a), len(b))
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			t.Fatalf("%s differs between the two trees", k)
		}
	}
}

func TestWorkloadIsDeterministicAndConsistent(t *testing.T) {
	w1, w2 := smallWorkload(t), smallWorkload(t)
	for _, w := range []Workload{w1, w2} {
		if reused, err := w.Generate(); err != nil || reused {
			t.Fatalf("Generate = %v, %v", reused, err)
		}
	}
	a := tree(t, w1.Root)
	sameTrees(t, a, tree(t, w2.Root))
	if len(a) != w1.Files+2 {
		t.Errorf("%d files, want %d small files + X500.db + tx.log", len(a), w1.Files)
	}
	if got := int64(len(a["X500.db"])); got != w1.DBSize {
		t.Errorf("X500.db is %d bytes, want %d", got, w1.DBSize)
	}
	if got := int64(len(a["log/tx.log"])); got != w1.LogSize {
		t.Errorf("tx.log is %d bytes, want %d", got, w1.LogSize)
	}
	if err := zdb.Check(w1.DBPath()); err != nil {
		t.Fatal(err)
	}
	// Same parameters: reused, not rewritten.
	if reused, err := w1.Generate(); err != nil || !reused {
		t.Fatalf("second Generate = %v, %v; want reused", reused, err)
	}
}

func TestDailyChange(t *testing.T) {
	w := smallWorkload(t)
	w.DBSize = 4096 * zdb.PageSize // 4095 data pages: 1% is 40
	w2 := smallWorkload(t)
	w2.DBSize = w.DBSize
	for _, x := range []Workload{w, w2} {
		if _, err := x.Generate(); err != nil {
			t.Fatal(err)
		}
	}
	before := tree(t, w.Root)
	c, err := w.DailyChange(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w2.DailyChange(1); err != nil {
		t.Fatal(err)
	}
	after := tree(t, w.Root)
	sameTrees(t, after, tree(t, w2.Root))

	if err := zdb.Check(w.DBPath()); err != nil {
		t.Fatalf("database inconsistent after the change: %v", err)
	}
	if c.PagesRewritten != 40 || c.PagesAppended != 64 || c.FilesAdded != 50 || c.LogAppended != 1<<20 {
		t.Errorf("change = %+v", c)
	}
	if got, want := len(after["X500.db"]), len(before["X500.db"])+64*zdb.PageSize; got != want {
		t.Errorf("X500.db is %d bytes, want %d", got, want)
	}
	changed, runs := 0, 0
	prev := false
	for n := 1; n < 4096; n++ {
		off := n * zdb.PageSize
		diff := !bytes.Equal(before["X500.db"][off:off+zdb.PageSize], after["X500.db"][off:off+zdb.PageSize])
		if diff {
			changed++
			if !prev {
				runs++
			}
		}
		prev = diff
	}
	if changed < 20 || changed > 40 || runs < 2 {
		t.Errorf("%d pages changed in %d runs; want 20..40 pages (40 writes, some may overlap) in several runs", changed, runs)
	}
	if got := len(after["log/tx.log"]) - len(before["log/tx.log"]); got != 1<<20 {
		t.Errorf("log grew by %d bytes, want 1 MiB", got)
	}
	if !bytes.HasPrefix(after["log/tx.log"], before["log/tx.log"]) {
		t.Error("the log was not appended to")
	}
	if got := len(after) - len(before); got != 50 {
		t.Errorf("%d new files, want 50", got)
	}
	// A second day changes other pages and stays consistent.
	if _, err := w.DailyChange(2); err != nil {
		t.Fatal(err)
	}
	if err := zdb.Check(w.DBPath()); err != nil {
		t.Fatal(err)
	}
}

func TestMeasureRealProcess(t *testing.T) {
	cat, err := exec.LookPath("cat")
	if err != nil {
		t.Skip("cat not found")
	}
	f := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(f, bytes.Repeat([]byte("x"), 3<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cat, f)
	s, err := measure(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if s.RChar < 3<<20 {
		t.Errorf("rchar %d, want at least the 3 MiB cat read", s.RChar)
	}
	if s.Wall <= 0 || s.MaxRSS <= 0 {
		t.Errorf("sample %+v: want wall time and RSS", s)
	}
	_, err = measure(exec.Command(cat, filepath.Join(t.TempDir(), "missing")))
	if err == nil || !strings.Contains(err.Error(), "No such file") {
		t.Errorf("measure of a failing command: %v; want its error output quoted", err)
	}
}

func TestDiskUsage(t *testing.T) {
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "f"), bytes.Repeat([]byte{1}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := diskUsage(d)
	if err != nil {
		t.Fatal(err)
	}
	if n < 1<<20 || n > 2<<20 {
		t.Errorf("du %d bytes for a 1 MiB file", n)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1GiB": 1 << 30, "64MiB": 64 << 20, "512KiB": 512 << 10, "4096": 4096, "2G": 2 << 30} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1", "1TiB"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) succeeded", bad)
		}
	}
}

func TestMedian(t *testing.T) {
	m := median([]Sample{{Wall: 3 * time.Second, MaxRSS: 10}, {Wall: time.Second, MaxRSS: 30}, {Wall: 2 * time.Second, MaxRSS: 20}})
	if m.Wall != 2*time.Second || m.MaxRSS != 20 {
		t.Errorf("median = %+v", m)
	}
}

// TestRunStasisOnly runs the whole side-by-side flow on a tiny workload with
// stasis built from this module, and the peers that are installed.
func TestRunStasisOnly(t *testing.T) {
	skipUnlessLong(t, "builds stasis")
	work := t.TempDir()
	var out, errs bytes.Buffer
	code := run(t.Context(), []string{"run", "--work", work, "--db-size", "512KiB", "--files", "40", "--runs", "1", "--tools", "stasis"}, &out, &errs)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errs.String())
	}
	for _, sc := range scenarios {
		if !strings.Contains(out.String(), "| "+sc+" | stasis |") {
			t.Errorf("no row for %q in\n%s", sc, out.String())
		}
	}
	if code := run(t.Context(), []string{"run", "--tools", "nosuch", "--work", work}, &out, &errs); code != 1 {
		t.Errorf("unknown tool: exit %d, want 1", code)
	}
}

// skipUnlessLong skips a test that builds stasis (why says what else it
// does) under -short or without the go toolchain.
func skipUnlessLong(t *testing.T, why string) {
	t.Helper()
	if testing.Short() {
		t.Skip(why)
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go toolchain not on PATH: needed to build stasis")
	}
}
