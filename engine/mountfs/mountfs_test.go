package mountfs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/mountfs"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
	"golang.org/x/sys/unix"
)

var ctx = context.Background()

// requireFUSE skips, saying why, where a FUSE file system cannot be
// mounted: no /dev/fuse, or neither root (a direct mount) nor fusermount.
func requireFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("mount tests need FUSE: %v (install fuse3, modprobe fuse; in a container pass --device /dev/fuse)", err)
	}
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			t.Skip("mount tests need root (a direct mount) or fusermount3 (Debian package fuse3)")
		}
	}
}

// mount serves r's snapshots on a new directory until the test ends.
func mount(t *testing.T, r mountfs.Repo, opts mountfs.Options) string {
	t.Helper()
	dir := t.TempDir()
	if opts.Log == nil {
		var mu sync.Mutex
		opts.Log = func(format string, args ...any) {
			mu.Lock()
			defer mu.Unlock()
			t.Logf(format, args...)
		}
	}
	fsys := mountfs.New(ctx, r, opts)
	srv, err := mountfs.Mount(ctx, dir, fsys, mountfs.MountOptions{})
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// makeTree fills dir with every kind of entry stasis keeps: regular files
// (one big enough for extent lists, chunked with the small db profile),
// sparse files (one with holes inside its extent lists), symlinks, hard
// links, odd names and modes, a fifo, a device node and owners (as root),
// with nanosecond mtimes.
func makeTree(t *testing.T, dir string) {
	t.Helper()
	rng := rand.New(rand.NewSource(12))
	write := func(rel string, size int, mode os.FileMode) {
		t.Helper()
		data := make([]byte, size)
		rng.Read(data[:size/2])
		for i := size / 2; i < size; i++ {
			data[i] = "directory record cn=alice,ou=people\n"[i%36]
		}
		p := filepath.Join(dir, rel)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, data, mode))
		must(t, os.Chmod(p, mode))
	}
	write("plain.txt", 1000, 0o644)
	write("big.db", 6<<20+777, 0o640) // ≈400 chunks of the db profile: extent lists
	write("big.bin", 3<<20+12345, 0o600)
	write("empty", 0, 0o644)
	write("sub/deeper/leaf", 5000, 0o755)
	write("name with spaces", 10, 0o644)
	write("new\nline", 11, 0o644)
	write("bad-utf8-\xff\xfe", 12, 0o644)
	write("ünïcødé ✓", 13, 0o644)
	write("setgid", 14, 0o2755)
	write("sticky-setuid", 15, 0o5711)
	write("nothing-allowed", 16, 0o000)
	for i := 0; i < 300; i++ {
		write(fmt.Sprintf("many/f%03d", i), rng.Intn(3000), 0o644)
	}
	must(t, os.MkdirAll(filepath.Join(dir, "emptydir"), 0o750))
	must(t, os.Symlink("plain.txt", filepath.Join(dir, "link")))
	must(t, os.Symlink("/nonexistent/target", filepath.Join(dir, "dangling")))
	must(t, os.Link(filepath.Join(dir, "plain.txt"), filepath.Join(dir, "sub/hardlink")))
	must(t, os.Link(filepath.Join(dir, "big.bin"), filepath.Join(dir, "sub/deeper/big-link1")))
	must(t, os.Link(filepath.Join(dir, "big.bin"), filepath.Join(dir, "big-link2")))
	must(t, unix.Mkfifo(filepath.Join(dir, "fifo"), 0o640))
	sparse := func(rel string, size int64, at ...int64) {
		f, err := os.Create(filepath.Join(dir, rel))
		must(t, err)
		for _, off := range at {
			data := make([]byte, 300<<10)
			rng.Read(data)
			_, err = f.WriteAt(data, off)
			must(t, err)
		}
		must(t, f.Truncate(size))
		must(t, f.Close())
	}
	sparse("sparse", 8<<20, 0, 6<<20)
	sparse("sparse.db", 12<<20, 0, 5<<20, 11<<20) // holes between and inside extent lists
	if os.Geteuid() == 0 {
		must(t, unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(t, os.Lchown(filepath.Join(dir, "plain.txt"), 1234, 5678))
		must(t, os.Lchown(filepath.Join(dir, "link"), 4321, 8765))
		must(t, os.Lchown(filepath.Join(dir, "sub"), 42, 43))
	}
	var paths []string
	filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { paths = append(paths, p); return nil })
	sort.Sort(sort.Reverse(sort.StringSlice(paths)))
	for i, p := range paths {
		ts := []unix.Timespec{{Sec: 1700000000 + int64(i), Nsec: 123456789}, {Sec: 1600000000 + int64(i)*7, Nsec: int64(i)*1000 + 1}}
		must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

func backup(t *testing.T, r *repo.Repository, now time.Time, host string, paths ...string) *repo.Snapshot {
	t.Helper()
	sn, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: paths, Host: host, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	return sn
}

// compareTrees walks src and its copy in the mount and fails on every
// difference of content or stored metadata, like `cmp` plus `stat`, and
// of where a file has holes (SEEK_DATA/SEEK_HOLE). The files named by
// denseBlocks are sparse but have extent lists: the mount counts their
// st_blocks as dense until their lists are read.
func compareTrees(t *testing.T, src, mounted string, denseBlocks ...string) {
	t.Helper()
	var n int
	links := map[uint64]uint64{} // source inode → mount inode
	seen := map[uint64]bool{}    // mount inodes of hard-linked files
	err := filepath.Walk(src, func(p string, fa os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		n++
		rel, _ := filepath.Rel(src, p)
		q := filepath.Join(mounted, rel)
		fb, err := os.Lstat(q)
		if err != nil {
			t.Errorf("%q: %v", rel, err)
			return nil
		}
		sa, sb := fa.Sys().(*syscall.Stat_t), fb.Sys().(*syscall.Stat_t)
		if fa.Mode() != fb.Mode() {
			t.Errorf("%q: mode %v, mounted %v", rel, fa.Mode(), fb.Mode())
		}
		if sa.Uid != sb.Uid || sa.Gid != sb.Gid {
			t.Errorf("%q: owner %d:%d, mounted %d:%d", rel, sa.Uid, sa.Gid, sb.Uid, sb.Gid)
		}
		if sa.Mtim != sb.Mtim {
			t.Errorf("%q: mtime %v, mounted %v", rel, sa.Mtim, sb.Mtim)
		}
		if sb.Atim != sb.Mtim {
			t.Errorf("%q: atime %v, want the mtime %v", rel, sb.Atim, sb.Mtim)
		}
		if sa.Rdev != sb.Rdev {
			t.Errorf("%q: rdev %d, mounted %d", rel, sa.Rdev, sb.Rdev)
		}
		if !fa.IsDir() && fa.Size() != fb.Size() {
			t.Errorf("%q: size %d, mounted %d", rel, fa.Size(), fb.Size())
		}
		if !fa.IsDir() && sa.Nlink != sb.Nlink {
			t.Errorf("%q: %d links, mounted %d", rel, sa.Nlink, sb.Nlink)
		}
		switch {
		case fa.Mode().IsRegular():
			compareContent(t, rel, p, q)
			if a, b := holes(t, p), holes(t, q); fmt.Sprint(a) != fmt.Sprint(b) {
				t.Errorf("%q: data and holes at %v, mounted %v", rel, a, b)
			}
			if sa.Blocks < sa.Size/512/2 && sb.Blocks > sa.Blocks*2+16 && !slices.Contains(denseBlocks, rel) {
				t.Errorf("%q: sparse file mounted dense: %d blocks, source %d", rel, sb.Blocks, sa.Blocks)
			}
			if sa.Nlink > 1 {
				if other, ok := links[sa.Ino]; ok && other != sb.Ino {
					t.Errorf("%q: hard link shows inode %d, its other name %d", rel, sb.Ino, other)
				} else if !ok && seen[sb.Ino] {
					t.Errorf("%q: inode %d is shared with a file it is not linked to", rel, sb.Ino)
				}
				links[sa.Ino], seen[sb.Ino] = sb.Ino, true
			}
		case fa.Mode()&os.ModeSymlink != 0:
			ta, _ := os.Readlink(p)
			tb, err := os.Readlink(q)
			if err != nil || ta != tb {
				t.Errorf("%q: link target %q, mounted %q (%v)", rel, ta, tb, err)
			}
		case fa.IsDir():
			ea, _ := os.ReadDir(p)
			eb, err := os.ReadDir(q)
			if err != nil || len(ea) != len(eb) {
				t.Errorf("%q: %d entries, mounted %d (%v)", rel, len(ea), len(eb), err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(links) < 2 {
		t.Errorf("the walk met %d hard-linked files; the tree has two sets", len(links))
	}
	t.Logf("compared %d entries", n)
}

// holes returns where the data and the holes of file p begin, in turn
// (SEEK_DATA, SEEK_HOLE), starting with data.
func holes(t *testing.T, p string) []int64 {
	t.Helper()
	f, err := os.Open(p)
	must(t, err)
	defer f.Close()
	var offs []int64
	for off, whence := int64(0), unix.SEEK_DATA; ; {
		next, err := unix.Seek(int(f.Fd()), off, whence)
		if errors.Is(err, syscall.ENXIO) {
			return offs
		}
		if err != nil {
			t.Fatalf("%s: lseek %d from %d: %v", p, whence, off, err)
		}
		offs = append(offs, next)
		off = next
		if whence == unix.SEEK_DATA {
			whence = unix.SEEK_HOLE
		} else {
			whence = unix.SEEK_DATA
		}
	}
}

// compareContent reads a whole file from the mount and compares it with
// the source, then reads ranges at odd offsets (across chunk boundaries).
func compareContent(t *testing.T, rel, src, mounted string) {
	t.Helper()
	a, err := os.ReadFile(src)
	must(t, err)
	b, err := os.ReadFile(mounted)
	if err != nil {
		t.Errorf("%q: read from the mount: %v", rel, err)
		return
	}
	if !bytes.Equal(a, b) {
		t.Errorf("%q: content differs (%d vs %d bytes)", rel, len(a), len(b))
		return
	}
	if len(a) < 1<<20 {
		return
	}
	f, err := os.Open(mounted)
	must(t, err)
	defer f.Close()
	rng := rand.New(rand.NewSource(int64(len(a))))
	for i := 0; i < 20; i++ {
		off := rng.Int63n(int64(len(a)))
		buf := make([]byte, 1+rng.Intn(200<<10))
		n, err := f.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			t.Errorf("%q: read %d bytes at %d: %v", rel, len(buf), off, err)
			return
		}
		if !bytes.Equal(buf[:n], a[off:off+int64(n)]) {
			t.Errorf("%q: %d bytes at %d differ", rel, n, off)
		}
	}
}

// TestMountEqualsSource backs up a tree of every kind of entry, mounts the
// repository and compares every file of the mounted snapshot, byte for
// byte and in its metadata, with the source; snapshots/, latest and
// hosts/ lead to the same snapshot.
func TestMountEqualsSource(t *testing.T) {
	requireFUSE(t)
	r := enginetest.NewRepo(t)
	src := filepath.Join(t.TempDir(), "srv", "zoomserv")
	makeTree(t, src)
	when := time.Date(2026, 11, 20, 2, 0, 0, 0, time.UTC)
	sn := backup(t, r, when, "zoom1", src)

	var big tree.Node
	must(t, engine.Walk(ctx, r, sn, filepath.Join(src, "big.db"), func(_ string, n *tree.Node) error { big = *n; return nil }))
	if len(big.Lists) < 2 {
		t.Fatalf("big.db has %d extent lists; the test needs a file with lists", len(big.Lists))
	}

	mnt := mount(t, r, mountfs.Options{})
	name := when.Local().Format(mountfs.TimeFormat)
	compareTrees(t, src, filepath.Join(mnt, "snapshots", name, src), "sparse.db")

	target, err := os.Readlink(filepath.Join(mnt, "latest"))
	if err != nil || target != "snapshots/"+name {
		t.Errorf("latest -> %q (%v), want snapshots/%s", target, err, name)
	}
	if target, err := os.Readlink(filepath.Join(mnt, "snapshots", "latest")); err != nil || target != name {
		t.Errorf("snapshots/latest -> %q (%v), want %s", target, err, name)
	}
	hosts, err := os.ReadDir(filepath.Join(mnt, "hosts"))
	if err != nil || len(hosts) != 1 || hosts[0].Name() != "zoom1" {
		t.Fatalf("hosts/: %v (%v), want zoom1", hosts, err)
	}
	for _, p := range []string{filepath.Join(mnt, "latest", src), filepath.Join(mnt, "hosts", "zoom1", name, src), filepath.Join(mnt, "hosts", "zoom1", "latest", src)} {
		a, err := os.ReadFile(filepath.Join(p, "sub", "deeper", "leaf"))
		b, _ := os.ReadFile(filepath.Join(src, "sub", "deeper", "leaf"))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s: sub/deeper/leaf not the source's (%v)", p, err)
		}
	}
	// The directories on the way keep the metadata they had.
	fa, _ := os.Stat(filepath.Dir(src))
	fb, err := os.Stat(filepath.Join(mnt, "snapshots", name, filepath.Dir(src)))
	if err != nil || fa.Mode() != fb.Mode() || !fa.ModTime().Equal(fb.ModTime()) {
		t.Errorf("%s in the mount: %v %v (%v), source %v %v", filepath.Dir(src), fb.Mode(), fb.ModTime(), err, fa.Mode(), fa.ModTime())
	}
	// Read-only.
	if err := os.WriteFile(filepath.Join(mnt, "latest", src, "plain.txt"), []byte("x"), 0o644); err == nil {
		t.Error("writing a file of the mount succeeded")
	}
	if err := os.Mkdir(filepath.Join(mnt, "latest", src, "newdir"), 0o755); err == nil {
		t.Error("mkdir in the mount succeeded")
	}
}

// countingRepo counts the blobs loaded through it.
type countingRepo struct {
	mountfs.Repo
	mu    sync.Mutex
	loads map[blob.ID]int
}

func (c *countingRepo) LoadBlob(ctx context.Context, id blob.ID, buf []byte) ([]byte, error) {
	c.mu.Lock()
	c.loads[id]++
	c.mu.Unlock()
	return c.Repo.LoadBlob(ctx, id, buf)
}

func (c *countingRepo) loaded(id blob.ID) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.loads[id]
}

func (c *countingRepo) reset() {
	c.mu.Lock()
	c.loads = map[blob.ID]int{}
	c.mu.Unlock()
}

// count returns how many of ids were loaded.
func (c *countingRepo) count(ids []blob.ID) (n int) {
	for _, id := range ids {
		if c.loaded(id) > 0 {
			n++
		}
	}
	return n
}

// TestMountLoadsLazily shows that the mount reads only what is asked for:
// a lookup loads the trees on its path and not its siblings', and a small
// read of a large file loads one extent list and the chunks of that range,
// not the file.
func TestMountLoadsLazily(t *testing.T) {
	requireFUSE(t)
	r := enginetest.NewRepo(t)
	src := filepath.Join(t.TempDir(), "data")
	makeTree(t, src)
	sn := backup(t, r, time.Date(2026, 11, 20, 2, 0, 0, 0, time.UTC), "zoom1", src)
	trees := map[string]blob.ID{}
	var big tree.Node
	must(t, engine.Walk(ctx, r, sn, src, func(p string, n *tree.Node) error {
		if n.Kind == tree.Dir {
			trees[p] = n.Subtree
		}
		if p == filepath.Join(src, "big.db") {
			big = *n
		}
		return nil
	}))
	var chunks []blob.ID
	for _, e := range big.Content {
		if !e.Hole {
			chunks = append(chunks, e.ID)
		}
	}

	cr := &countingRepo{Repo: r, loads: map[blob.ID]int{}}
	mnt := mount(t, cr, mountfs.Options{})
	snap := filepath.Join(mnt, "latest", src)
	if _, err := os.Stat(filepath.Join(snap, "sub", "deeper", "leaf")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{src, filepath.Join(src, "sub"), filepath.Join(src, "sub", "deeper")} {
		if cr.loaded(trees[p]) != 1 {
			t.Errorf("tree of %s loaded %d times, want once", p, cr.loaded(trees[p]))
		}
	}
	for _, p := range []string{filepath.Join(src, "many"), filepath.Join(src, "emptydir")} {
		if cr.loaded(trees[p]) != 0 {
			t.Errorf("tree of %s loaded by a lookup of another directory", p)
		}
	}
	if n := cr.count(big.Lists) + cr.count(chunks); n != 0 {
		t.Errorf("a lookup loaded %d extent lists and chunks of big.db", n)
	}

	// 100 bytes in the middle of big.db, the kernel's read-ahead off.
	cr.reset()
	f, err := os.Open(filepath.Join(snap, "big.db"))
	must(t, err)
	defer f.Close()
	must(t, unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM))
	buf := make([]byte, 100)
	if _, err := f.ReadAt(buf, 3<<20); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(filepath.Join(src, "big.db"))
	if !bytes.Equal(buf, want[3<<20:3<<20+100]) {
		t.Error("100 bytes at 3 MiB differ from the source")
	}
	lists, data := cr.count(big.Lists), cr.count(chunks)
	t.Logf("read 100 bytes: %d of %d extent lists, %d of %d chunks loaded", lists, len(big.Lists), data, len(chunks))
	if lists < 1 || lists > 2 || data < 1 || data > 4 {
		t.Errorf("a 100-byte read loaded %d of %d extent lists and %d of %d chunks; want one or two lists and a few chunks", lists, len(big.Lists), data, len(chunks))
	}
	// Reading it again is served from the caches (or the page cache).
	cr.reset()
	if _, err := f.ReadAt(buf, 3<<20); err != nil {
		t.Fatal(err)
	}
	if n := cr.count(big.Lists) + cr.count(chunks); n != 0 {
		t.Errorf("reading the same range again loaded %d blobs", n)
	}
}

// TestMountShowsNewSnapshots: a backup made while mounted appears when
// snapshots/ is listed; two snapshots of the same second are told apart
// by their short ids; hosts/ groups them.
func TestMountShowsNewSnapshots(t *testing.T) {
	requireFUSE(t)
	r := enginetest.NewRepo(t)
	src := filepath.Join(t.TempDir(), "data")
	must(t, os.MkdirAll(src, 0o755))
	must(t, os.WriteFile(filepath.Join(src, "day"), []byte("one"), 0o644))
	when := time.Date(2026, 11, 20, 2, 0, 0, 0, time.UTC)
	sn1 := backup(t, r, when, "zoom1", src)
	mnt := mount(t, r, mountfs.Options{})
	names := func(dir string) []string {
		t.Helper()
		ents, err := os.ReadDir(dir)
		must(t, err)
		var s []string
		for _, e := range ents {
			s = append(s, e.Name())
		}
		return s
	}
	name1 := when.Local().Format(mountfs.TimeFormat)
	if got := strings.Join(names(filepath.Join(mnt, "snapshots")), " "); got != name1+" latest" {
		t.Fatalf("snapshots/: %s", got)
	}

	must(t, os.WriteFile(filepath.Join(src, "day"), []byte("two"), 0o644))
	sn2 := backup(t, r, when, "zoom2", src) // the same second
	got := names(filepath.Join(mnt, "snapshots"))
	want := mountfs.SnapshotNames([]*repo.Snapshot{sn1, sn2})
	if sn2.ID.String() < sn1.ID.String() {
		want[0], want[1] = want[1], want[0]
	}
	if strings.Join(got, " ") != strings.Join(append(want, "latest"), " ") {
		t.Fatalf("snapshots/ after a second backup: %q, want %q", got, want)
	}
	if !strings.HasSuffix(want[0], "-"+sn1.ID.Short()) && !strings.HasSuffix(want[0], "-"+sn2.ID.Short()) {
		t.Errorf("snapshots of the same second not told apart by id: %q", want)
	}
	for _, sn := range []*repo.Snapshot{sn1, sn2} {
		content := map[string]string{sn1.Host: "one", sn2.Host: "two"}[sn.Host]
		data, err := os.ReadFile(filepath.Join(mnt, "hosts", sn.Host, "latest", src, "day"))
		if err != nil || string(data) != content {
			t.Errorf("hosts/%s/latest: day = %q (%v), want %q", sn.Host, data, err, content)
		}
	}
	if got := strings.Join(names(filepath.Join(mnt, "hosts")), " "); got != "zoom1 zoom2" {
		t.Errorf("hosts/: %s", got)
	}
}

// TestMountFilter shows only the snapshots --host selects.
func TestMountFilter(t *testing.T) {
	requireFUSE(t)
	r := enginetest.NewRepo(t)
	src := filepath.Join(t.TempDir(), "data")
	must(t, os.MkdirAll(src, 0o755))
	backup(t, r, time.Date(2026, 11, 20, 2, 0, 0, 0, time.UTC), "zoom1", src)
	backup(t, r, time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC), "zoom2", src)
	mnt := mount(t, r, mountfs.Options{Filter: repo.SnapshotFilter{Hosts: []string{"zoom1"}}})
	ents, err := os.ReadDir(filepath.Join(mnt, "hosts"))
	if err != nil || len(ents) != 1 || ents[0].Name() != "zoom1" {
		t.Errorf("hosts/ with --host zoom1: %v (%v)", ents, err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "hosts", "zoom2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("hosts/zoom2 with --host zoom1: %v", err)
	}
}

// TestMountReadVerifiesChunks damages one chunk in its pack: reading that
// file through the mount fails with EIO, and the log names the snapshot,
// the file and the damage; the other files read fine.
func TestMountReadVerifiesChunks(t *testing.T) {
	requireFUSE(t)
	dir := t.TempDir()
	// Not enginetest.NewRepo: its final check would report the damage.
	r, err := repo.Init(ctx, enginetest.Local(filepath.Join(dir, "repo")), enginetest.InitOptions(), enginetest.OpenOptionsIn(filepath.Join(dir, "cache")))
	must(t, err)
	t.Cleanup(func() { r.Close() })
	src := filepath.Join(dir, "data")
	must(t, os.MkdirAll(src, 0o755))
	victim := make([]byte, 512<<10) // a frame of its own: its damage must not reach other.txt
	rand.New(rand.NewSource(3)).Read(victim)
	must(t, os.WriteFile(filepath.Join(src, "victim.bin"), victim, 0o644))
	must(t, os.WriteFile(filepath.Join(src, "other.txt"), []byte("fine\n"), 0o644))
	sn := backup(t, r, time.Date(2026, 11, 20, 2, 0, 0, 0, time.UTC), "zoom1", src)
	var chunk blob.ID
	must(t, engine.Walk(ctx, r, sn, filepath.Join(src, "victim.bin"), func(_ string, n *tree.Node) error { chunk = n.Content[0].ID; return nil }))
	loc, ok, err := r.Index().Lookup(chunk)
	if err != nil || !ok {
		t.Fatalf("look up chunk %s: %v %v", chunk.Short(), ok, err)
	}
	pack, err := os.OpenFile(filepath.Join(r.Location(), repo.PackName(loc.Pack)), os.O_RDWR, 0)
	must(t, err)
	b := []byte{0}
	off := int64(loc.Offset) + int64(loc.Length)/2
	_, err = pack.ReadAt(b, off)
	must(t, err)
	b[0] ^= 0x55
	_, err = pack.WriteAt(b, off)
	must(t, err)
	must(t, pack.Close())

	var mu sync.Mutex
	var logs []string
	mnt := mount(t, r, mountfs.Options{Log: func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		logs = append(logs, fmt.Sprintf(format, args...))
	}})
	_, err = os.ReadFile(filepath.Join(mnt, "latest", src, "victim.bin"))
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("read of a file with a damaged chunk: %v, want EIO", err)
	}
	if data, err := os.ReadFile(filepath.Join(mnt, "latest", src, "other.txt")); err != nil || string(data) != "fine\n" {
		t.Errorf("other.txt: %q, %v", data, err)
	}
	mu.Lock()
	log := strings.Join(logs, "\n")
	mu.Unlock()
	t.Log(log)
	for _, want := range []string{sn.ID.Short(), filepath.Join(src, "victim.bin"), chunk.String(), "corrupt", "stasis check"} {
		if !strings.Contains(log, want) {
			t.Errorf("log does not name %q:\n%s", want, log)
		}
	}
}
