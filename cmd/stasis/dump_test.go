package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// dumpEnv is a repository in a temp dir, given by STASIS_REPO, with its
// own cache.
func dumpEnv(t *testing.T) string {
	t.Helper()
	setupEnv(t)
	dir := t.TempDir()
	t.Setenv("STASIS_REPO", filepath.Join(dir, "repo"))
	t.Setenv("STASIS_CACHE_DIR", filepath.Join(dir, "cache"))
	return dir
}

// browseTree makes a directory with every kind of entry a dump carries:
// modes with setgid, owners (as root), nanosecond mtimes, a symlink, a
// hard link, a FIFO, a device (as root), a sparse file, names with a
// newline and with invalid UTF-8, an empty directory.
func browseTree(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "zoomserv")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "ldif"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "empty"), 0o700))
	must(os.WriteFile(filepath.Join(dir, "X500.db"), bytes.Repeat([]byte("page of records\n"), 8192), 0o600))
	must(os.WriteFile(filepath.Join(dir, "ldif", "people.ldif"), []byte("dn: cn=alice,o=Zoomserv\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "new\nline \xff\xfe"), []byte("odd name"), 0o640))
	must(os.WriteFile(filepath.Join(dir, "setgid"), []byte("s"), 0o644))
	must(os.Chmod(filepath.Join(dir, "setgid"), 0o2755))
	must(os.Symlink("ldif/people.ldif", filepath.Join(dir, "link")))
	must(os.Link(filepath.Join(dir, "ldif", "people.ldif"), filepath.Join(dir, "hardlink")))
	must(unix.Mkfifo(filepath.Join(dir, "fifo"), 0o620))
	sp, err := os.Create(filepath.Join(dir, "sparse"))
	must(err)
	_, err = sp.WriteAt([]byte("data between holes"), 3<<20)
	must(err)
	must(sp.Truncate(6 << 20))
	must(sp.Close())
	if os.Geteuid() == 0 {
		must(unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(os.Lchown(filepath.Join(dir, "X500.db"), 1234, 5678))
		must(os.Lchown(filepath.Join(dir, "link"), 4321, 8765))
	}
	var paths []string
	filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { paths = append(paths, p); return nil })
	sort.Sort(sort.Reverse(sort.StringSlice(paths))) // children before their directory
	for i, p := range paths {
		ts := []unix.Timespec{{Sec: 1700000000, Nsec: 0}, {Sec: 1600000000 + int64(i), Nsec: int64(i)*1000 + 7}}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
	}
	return dir
}

// sameMetaTree fails the test where b differs from a: entries, kinds and
// modes, owners, mtimes, content, link targets, device numbers, and hard
// links sharing an inode.
func sameMetaTree(t *testing.T, a, b string) {
	t.Helper()
	list := func(dir string) map[string]os.FileInfo {
		m := map[string]os.FileInfo{}
		err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil {
				rel, _ := filepath.Rel(dir, p)
				m[rel] = fi
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	la, lb := list(a), list(b)
	if len(la) != len(lb) {
		t.Errorf("%d entries in %s, %d in %s", len(la), a, len(lb), b)
	}
	inodes := map[uint64]uint64{}
	for rel, fa := range la {
		fb, ok := lb[rel]
		if !ok {
			t.Errorf("%q is missing", rel)
			continue
		}
		sa, sb := fa.Sys().(*syscall.Stat_t), fb.Sys().(*syscall.Stat_t)
		if fa.Mode() != fb.Mode() || sa.Uid != sb.Uid || sa.Gid != sb.Gid || sa.Mtim != sb.Mtim || sa.Rdev != sb.Rdev {
			t.Errorf("%q: %v %d:%d %v rdev %d, got %v %d:%d %v rdev %d", rel, fa.Mode(), sa.Uid, sa.Gid, sa.Mtim, sa.Rdev,
				fb.Mode(), sb.Uid, sb.Gid, sb.Mtim, sb.Rdev)
		}
		switch {
		case fa.Mode().IsRegular():
			da, _ := os.ReadFile(filepath.Join(a, rel))
			db, _ := os.ReadFile(filepath.Join(b, rel))
			if !bytes.Equal(da, db) {
				t.Errorf("%q: content differs", rel)
			}
			if sa.Nlink > 1 {
				if other, ok := inodes[sa.Ino]; ok && other != sb.Ino {
					t.Errorf("%q: a hard link came back as a separate file", rel)
				}
				inodes[sa.Ino] = sb.Ino
			}
		case fa.Mode()&os.ModeSymlink != 0:
			ta, _ := os.Readlink(filepath.Join(a, rel))
			tb, _ := os.Readlink(filepath.Join(b, rel))
			if ta != tb {
				t.Errorf("%q: link target %q, got %q", rel, ta, tb)
			}
		}
	}
}

// runPiped runs the CLI in-process with stdout into a pipe that cmd reads.
func runPiped(t *testing.T, cmd *exec.Cmd, args ...string) (code int, stderr string) {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = pr
	var cmdOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &cmdOut, &cmdOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	var errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(""), pw, &errb)
	pw.Close()
	if err := cmd.Wait(); err != nil {
		t.Errorf("%v: %v\n%s", cmd.Args, err, cmdOut.String())
	}
	return code, errb.String()
}

// `stasis dump SNAPSHOT DIR | tar -x -p --same-owner --numeric-owner`
// gives back the source tree.
func TestCLIDumpDirectoryExtractedByGNUTar(t *testing.T) {
	dumpEnv(t)
	src := browseTree(t)
	mustRun(t, "backup", "--init", src)
	target := t.TempDir()
	tar := exec.Command("tar", "-x", "-p", "--same-owner", "--numeric-owner", "-C", target)
	if os.Geteuid() != 0 {
		tar = exec.Command("tar", "-x", "-p", "-C", target)
	}
	code, errs := runPiped(t, tar, "dump", "latest", src)
	if code != 0 {
		t.Fatalf("dump: exit %d\n%s", code, errs)
	}
	sameMetaTree(t, src, filepath.Join(target, "zoomserv"))
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(target, "zoomserv", "sparse"), &st); err != nil || st.Blocks*512 > 1<<20 {
		t.Errorf("the sparse file (6 MiB, 18 bytes of data) was extracted with %d blocks (%v)", st.Blocks, err)
	}

	// --target writes the same archive to a file.
	out := filepath.Join(t.TempDir(), "zoomserv.tar")
	if msg := mustRun(t, "dump", "latest", src, "--target", out); !strings.Contains(msg, "entries") {
		t.Errorf("dump --target said %q", msg)
	}
	target2 := t.TempDir()
	if b, err := exec.Command("tar", "-x", "-p", "--numeric-owner", "-f", out, "-C", target2).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, b)
	}
	sameMetaTree(t, src, filepath.Join(target2, "zoomserv"))
}

// One file dumped equals the file: a 24 MiB database (whose extents are in
// extent lists), a sparse file, a small one; to stdout and to --target.
func TestCLIDumpFileEqualsSource(t *testing.T) {
	dumpEnv(t)
	src := filepath.Join(t.TempDir(), "zoomserv")
	os.MkdirAll(src, 0o755)
	rng := rand.New(rand.NewSource(1))
	db := make([]byte, 24<<20)
	for off := 0; off < len(db); off += 4096 { // pages: random head, text tail
		rng.Read(db[off : off+1024])
		copy(db[off+1024:off+4096], bytes.Repeat([]byte("cn=alice,ou=people "), 200))
	}
	os.WriteFile(filepath.Join(src, "X500.db"), db, 0o600)
	sp, _ := os.Create(filepath.Join(src, "sparse"))
	sp.WriteAt([]byte("data after a hole"), 7<<20)
	sp.Truncate(9 << 20)
	sp.Close()
	os.WriteFile(filepath.Join(src, "small.conf"), []byte("port 389\n"), 0o644)
	mustRun(t, "backup", "--init", src)
	for _, name := range []string{"X500.db", "sparse", "small.conf"} {
		p := filepath.Join(src, name)
		want, _ := os.ReadFile(p)
		if got := mustRun(t, "dump", "latest", p); got != string(want) {
			t.Errorf("%s: dumped %d bytes, the file has %d (or they differ)", name, len(got), len(want))
		}
		out := filepath.Join(t.TempDir(), name)
		mustRun(t, "dump", "latest", p, "--target", out)
		if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: --target wrote %d bytes (%v), the file has %d", name, len(got), err, len(want))
		}
	}
	// --archive tar on a file gives an archive of that one file.
	tarOut := filepath.Join(t.TempDir(), "one.tar")
	mustRun(t, "dump", "--archive", "tar", "latest", filepath.Join(src, "small.conf"), "--target", tarOut)
	if b, err := exec.Command("tar", "-t", "-f", tarOut).CombinedOutput(); err != nil || string(b) != "small.conf\n" {
		t.Errorf("tar -t of --archive tar: %v %q", err, b)
	}
}

// A path the snapshot lacks is an error naming it, with the exit code of an
// unknown snapshot; bad flags are usage errors.
func TestCLIDumpMissingPath(t *testing.T) {
	dumpEnv(t)
	src := sampleTree(t)
	mustRun(t, "backup", "--init", src)
	missing := filepath.Join(src, "no-such-file")
	code, out, errs := stasis(t, "dump", "latest", missing)
	if code != exitFatal || out != "" || !strings.Contains(errs, missing) || !strings.Contains(errs, "not in snapshot") {
		t.Errorf("dump of a missing path: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if code2, _, errs := stasis(t, "dump", "0000dead", src); code2 != code || !strings.Contains(errs, "not found") {
		t.Errorf("dump from a missing snapshot: exit %d (a missing path gave %d), %s", code2, code, errs)
	}
	target := filepath.Join(t.TempDir(), "out")
	if code, _, _ := stasis(t, "dump", "latest", missing, "--target", target); code != exitFatal {
		t.Errorf("dump --target of a missing path: exit %d", code)
	}
	if _, err := os.Stat(target); err == nil {
		t.Error("a failed dump left its target file")
	}
	for _, args := range [][]string{{"dump", "latest"}, {"dump", "--archive", "zip", "latest", src}} {
		if code, _, _ := stasis(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
}

// A chunk that fails verification fails the dump (exit 1, the file named);
// --target then leaves nothing behind, and an earlier file there stays.
func TestCLIDumpFailsOnADamagedChunk(t *testing.T) {
	dir := dumpEnv(t)
	src := filepath.Join(t.TempDir(), "zoomserv")
	os.MkdirAll(src, 0o755)
	data := make([]byte, 3<<20)
	rand.New(rand.NewSource(2)).Read(data)
	os.WriteFile(filepath.Join(src, "X500.db"), data, 0o600)
	mustRun(t, "backup", "--init", src)
	// Flip a byte in the middle of the largest pack: the database's chunks.
	var largest string
	var size int64
	filepath.Walk(filepath.Join(dir, "repo", "packs"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && fi.Size() > size {
			largest, size = p, fi.Size()
		}
		return nil
	})
	pack, err := os.ReadFile(largest)
	if err != nil {
		t.Fatal(err)
	}
	pack[len(pack)/2] ^= 0x40
	os.Chmod(largest, 0o600)
	if err := os.WriteFile(largest, pack, 0o600); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(src, "X500.db")
	for _, p := range []string{db, src} {
		code, out, errs := stasis(t, "dump", "latest", p)
		if code != exitFatal || !strings.Contains(errs, db) || !strings.Contains(errs, "incomplete") {
			t.Errorf("dump %s with a damaged chunk: exit %d, stderr %q", p, code, errs)
		}
		if len(out) >= len(data) {
			t.Errorf("dump %s with a damaged chunk wrote %d bytes", p, len(out))
		}
		target := filepath.Join(t.TempDir(), "out")
		os.WriteFile(target, []byte("earlier"), 0o644)
		if code, _, _ := stasis(t, "dump", "latest", p, "--target", target); code != exitFatal {
			t.Errorf("dump --target %s with a damaged chunk: exit %d", p, code)
		}
		ents, _ := os.ReadDir(filepath.Dir(target))
		if b, _ := os.ReadFile(target); string(b) != "earlier" || len(ents) != 1 {
			t.Errorf("a failed dump --target replaced the file (%q) or left files: %v", b, ents)
		}
	}
}

// openPTY returns both ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// Binary output is not written to a terminal; text is.
func TestCLIDumpRefusesBinaryToATerminal(t *testing.T) {
	dumpEnv(t)
	src := filepath.Join(t.TempDir(), "zoomserv")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "text.conf"), []byte("port 389\n"), 0o644)
	os.WriteFile(filepath.Join(src, "X500.db"), append([]byte("header\x00"), make([]byte, 4096)...), 0o600)
	mustRun(t, "backup", "--init", src)
	master, tty := openPTY(t)
	go io.Copy(io.Discard, master) // what reaches the terminal
	for _, c := range []struct {
		path string
		code int
	}{{filepath.Join(src, "text.conf"), exitOK}, {filepath.Join(src, "X500.db"), exitUsage}, {src, exitUsage}} {
		var errb bytes.Buffer
		code := run(context.Background(), []string{"dump", "latest", c.path}, strings.NewReader(""), tty, &errb)
		if code != c.code || (code != 0 && !strings.Contains(errb.String(), "terminal")) {
			t.Errorf("dump %s to a terminal: exit %d (want %d), %s", c.path, code, c.code, errb.String())
		}
	}
}

func TestLooksBinary(t *testing.T) {
	text := bytes.Repeat([]byte("é"), 5000) // 10000 bytes: cut inside a rune at 8 KiB
	for _, c := range []struct {
		data []byte
		want bool
	}{{[]byte("plain\n"), false}, {text, false}, {[]byte("nul\x00"), true}, {[]byte("bad \xff utf-8"), true}} {
		if got := looksBinary(c.data); got != c.want {
			t.Errorf("looksBinary(%.20q) = %v", c.data, got)
		}
	}
}
