package engine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/tree"
)

// readerStdin is a StdinFile reading data whose Finish returns fail.
func readerStdin(name string, data []byte, fail error) *engine.StdinFile {
	return &engine.StdinFile{Path: name,
		Open: func(context.Context) (io.Reader, error) { return bytes.NewReader(data), nil },
		Finish: func(readErr error) (*repo.StdinSource, error) {
			if fail != nil {
				return nil, fail
			}
			return &repo.StdinSource{Command: []string{"test-dump"}}, readErr
		}}
}

func TestStdinWithPathsRestoresBoth(t *testing.T) {
	src := filepath.Join(t.TempDir(), "etc")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "slapd.conf"), []byte("suffix dc=example\n"), 0o644)
	old := day1.Add(-time.Hour) // before the first snapshot: unchanged on the second day
	os.Chtimes(filepath.Join(src, "slapd.conf"), old, old)
	dump := bytes.Repeat([]byte("dn: cn=someone,dc=example\nobjectClass: person\n\n"), 50000)
	r := enginetest.NewRepo(t)
	sn, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{src}, Host: "test", Now: clock(day1),
		Stdin: readerStdin("dumps/ldap.ldif", dump, nil)})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/dumps/ldap.ldif", src}; strings.Join(sn.Paths, " ") != strings.Join(want, " ") {
		t.Errorf("snapshot paths %v, want %v", sn.Paths, want)
	}
	if sn.Stdin == nil || sn.Stdin.Path != "/dumps/ldap.ldif" || sn.Stdin.Bytes != int64(len(dump)) || sn.Stdin.Command[0] != "test-dump" {
		t.Fatalf("stdin record %+v", sn.Stdin)
	}
	if sn.Summary.FilesNew != 2 || sn.Summary.TotalBytes != int64(len(dump))+18 {
		t.Errorf("summary %+v", sn.Summary)
	}
	target := t.TempDir()
	restore(t, r, sn, engine.RestoreOptions{Target: target})
	got, err := os.ReadFile(filepath.Join(target, "dumps", "ldap.ldif"))
	if err != nil || !bytes.Equal(got, dump) {
		t.Fatalf("restored dump: %d bytes, %v", len(got), err)
	}
	fi, _ := os.Stat(filepath.Join(target, "dumps", "ldap.ldif"))
	if fi.Mode().Perm() != 0o600 || !fi.ModTime().Equal(day1) {
		t.Errorf("restored dump: mode %v, mtime %v; want 0600 and %v", fi.Mode(), fi.ModTime(), day1)
	}
	if b, _ := os.ReadFile(filepath.Join(target, src, "slapd.conf")); string(b) != "suffix dc=example\n" {
		t.Errorf("restored config %q", b)
	}
	// ls shows the directory on the way (it does not exist here) as a directory.
	root, err := r.LoadTree(ctx, sn.Tree)
	if err != nil {
		t.Fatal(err)
	}
	if n := root.Find("dumps"); n == nil || n.Kind != tree.Dir || n.Mode != 0o700 {
		t.Errorf("dumps node %+v", n)
	}

	// The next day's backup finds it as the parent and reuses the files.
	sn2, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{src}, Host: "test", Now: clock(day1.Add(24 * time.Hour)),
		Stdin: readerStdin("/dumps/ldap.ldif", dump, nil)})
	if err != nil {
		t.Fatal(err)
	}
	if sn2.Parent == nil || *sn2.Parent != sn.ID || sn2.Summary.FilesChanged != 1 || sn2.Summary.FilesUnchanged != 1 || sn2.Summary.BytesAdded != 0 {
		t.Errorf("second day: parent %v, summary %+v", sn2.Parent, sn2.Summary)
	}
}

func TestStdinOnlyAtRoot(t *testing.T) {
	r := enginetest.NewRepo(t)
	sn, err := engine.Backup(ctx, r, engine.BackupOptions{Host: "test", Now: clock(day1), Stdin: readerStdin("", []byte("hello\n"), nil)})
	if err != nil {
		t.Fatal(err)
	}
	if len(sn.Paths) != 1 || sn.Paths[0] != "/stdin" {
		t.Errorf("paths %v", sn.Paths)
	}
	target := t.TempDir()
	restore(t, r, sn, engine.RestoreOptions{Target: target})
	if b, _ := os.ReadFile(filepath.Join(target, "stdin")); string(b) != "hello\n" {
		t.Errorf("restored %q", b)
	}
}

// A failed stream (its command failed) gives no snapshot, and nothing refers to its data.
func TestStdinFailureWritesNoSnapshot(t *testing.T) {
	src := filepath.Join(t.TempDir(), "etc")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "a"), []byte("a"), 0o644)
	r := enginetest.NewRepo(t)
	boom := errors.New("dump exited with status 2")
	sn, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{src}, Host: "test", Now: clock(day1),
		Stdin: readerStdin("x.ldif", bytes.Repeat([]byte("partial\n"), 100000), boom)})
	if sn != nil || !errors.Is(err, boom) {
		t.Fatalf("Backup = %v, %v; want no snapshot and the dump's error", sn, err)
	}
	if list, _, _ := r.Snapshots(ctx); len(list) != 0 {
		t.Fatalf("%d snapshots after a failed dump", len(list))
	}
}

// A read error of the stream is no snapshot either, even when Finish
// sees no fault.
func TestStdinReadErrorWritesNoSnapshot(t *testing.T) {
	r := enginetest.NewRepo(t)
	bad := errors.New("pipe broke")
	st := &engine.StdinFile{Path: "x",
		Open: func(context.Context) (io.Reader, error) {
			return io.MultiReader(strings.NewReader("some data"), iotestErr{bad}), nil
		},
		Finish: func(error) (*repo.StdinSource, error) { return nil, nil }}
	sn, err := engine.Backup(ctx, r, engine.BackupOptions{Host: "test", Now: clock(day1), Stdin: st})
	if sn != nil || !errors.Is(err, bad) {
		t.Fatalf("Backup = %v, %v", sn, err)
	}
}

type iotestErr struct{ err error }

func (e iotestErr) Read([]byte) (int, error) { return 0, e.err }

func TestStdinEmptyIsSnapshotWithWarning(t *testing.T) {
	r := enginetest.NewRepo(t)
	sn, err := engine.Backup(ctx, r, engine.BackupOptions{Host: "test", Now: clock(day1), Stdin: readerStdin("empty.dump", nil, nil)})
	if sn == nil || !errors.Is(err, engine.ErrStdinEmpty) || errors.Is(err, engine.ErrIncomplete) {
		t.Fatalf("Backup = %v, %v; want a snapshot and ErrStdinEmpty", sn, err)
	}
	if len(sn.Summary.Problems) != 1 || sn.Summary.Problems[0].Kind != repo.ProblemWarning || sn.Summary.Problems[0].Path != "/empty.dump" {
		t.Errorf("problems %+v", sn.Summary.Problems)
	}
}

func TestStdinPathCollisions(t *testing.T) {
	for _, c := range []struct {
		name  string
		paths []string
		ok    bool
	}{
		{"stdin", []string{"/etc"}, true},
		{"/etc/x.ldif", []string{"/etc"}, false},
		{"/etc", []string{"/etc/ldap"}, false},
		{"/etc/ldap", []string{"/etc/ldap"}, false},
		{"x", []string{"/"}, false},
		{"/", nil, false},
		{"/etc/ldap.ldif", []string{"/etc/ldap"}, true},
	} {
		_, err := engine.StdinPath(c.name, c.paths)
		if (err == nil) != c.ok {
			t.Errorf("StdinPath(%q, %v) = %v", c.name, c.paths, err)
		}
	}
}

// dailyDump is an LDIF-like dump of n entries; entries listed in changed
// have another telephone number.
func dailyDump(n int, changed map[int]bool) []byte {
	var b bytes.Buffer
	rng := rand.New(rand.NewSource(7))
	for i := 0; i < n; i++ {
		phone := rng.Intn(1e7)
		if changed[i] {
			phone++
		}
		fmt.Fprintf(&b, "dn: uid=user%06d,ou=people,dc=example,dc=org\nobjectClass: inetOrgPerson\nuid: user%06d\ncn: User %d %x\ntelephoneNumber: +1 555 %07d\ndescription: %x\n\n",
			i, i, i, rng.Int63(), phone, rng.Int63())
	}
	return b.Bytes()
}

// TestStdinDailyDumpDedups: the second day's dump differs in a few lines;
// it adds about one chunk per changed line, not the dump.
func TestStdinDailyDumpDedups(t *testing.T) {
	const entries = 120000 // about 21 MiB
	changed := map[int]bool{1000: true, 40000: true, 90000: true}
	day1Dump, day2Dump := dailyDump(entries, nil), dailyDump(entries, changed)
	for _, c := range []struct {
		profile string
		globs   []string
		bound   int64 // bytes added on day 2
	}{
		{"default", nil, 3 * 2 * (8 << 20) / 4}, // 3 changes × at most about 2 chunks of the 1 MiB-average profile
		{"db", []string{"*.ldif"}, 3 * 4 * (64 << 10)},
	} {
		t.Run(c.profile, func(t *testing.T) {
			r := enginetest.NewRepo(t)
			opts := engine.BackupOptions{Host: "test", Now: clock(day1), DBGlobs: c.globs, Stdin: readerStdin("ldap.ldif", day1Dump, nil)}
			sn1, err := engine.Backup(ctx, r, opts)
			if err != nil {
				t.Fatal(err)
			}
			opts.Now, opts.Stdin = clock(day1.Add(24*time.Hour)), readerStdin("ldap.ldif", day2Dump, nil)
			sn2, err := engine.Backup(ctx, r, opts)
			if err != nil {
				t.Fatal(err)
			}
			added := sn2.Summary.BytesAdded
			t.Logf("%s profile: dump %d bytes; day 1 added %d, day 2 (%d changed lines) added %d (%.2f%%)",
				c.profile, len(day2Dump), sn1.Summary.BytesAdded, len(changed), added, 100*float64(added)/float64(len(day2Dump)))
			if added == 0 || added > c.bound {
				t.Errorf("day 2 added %d bytes, want 1..%d", added, c.bound)
			}
			target := t.TempDir()
			restore(t, r, sn2, engine.RestoreOptions{Target: target})
			if got, _ := os.ReadFile(filepath.Join(target, "ldap.ldif")); !bytes.Equal(got, day2Dump) {
				t.Error("restored day 2 dump differs")
			}
		})
	}
}
