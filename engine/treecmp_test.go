package engine_test

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// makeTree fills dir with every kind of entry stasis keeps, deterministically
// from seed.
func makeTree(t *testing.T, dir string, seed int64) {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(p string, size int, mode os.FileMode) {
		t.Helper()
		data := make([]byte, size)
		// Half random, half text: compressible and not.
		rng.Read(data[:size/2])
		for i := size / 2; i < size; i++ {
			data[i] = "directory record cn=alice,ou=people\n"[i%36]
		}
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, data, mode))
		must(os.Chmod(p, mode))
	}
	write(filepath.Join(dir, "plain.txt"), 1000, 0o644)
	write(filepath.Join(dir, "big.bin"), 3<<20+12345, 0o600)
	write(filepath.Join(dir, "X500.db"), 1<<20, 0o640)
	write(filepath.Join(dir, "empty"), 0, 0o644)
	write(filepath.Join(dir, "sub/deeper/leaf"), 5000, 0o755)
	write(filepath.Join(dir, "name with spaces"), 10, 0o644)
	write(filepath.Join(dir, "new\nline"), 11, 0o644)
	write(filepath.Join(dir, "bad-utf8-\xff\xfe"), 12, 0o644)
	write(filepath.Join(dir, "setgid"), 13, 0o2755)
	for i := 0; i < 20; i++ {
		write(filepath.Join(dir, "many", fmt.Sprintf("f%02d", i)), rng.Intn(4000), 0o644)
	}
	must(os.MkdirAll(filepath.Join(dir, "emptydir"), 0o750))
	must(os.Symlink("plain.txt", filepath.Join(dir, "link")))
	must(os.Symlink("/nonexistent/target", filepath.Join(dir, "dangling")))
	must(os.Link(filepath.Join(dir, "plain.txt"), filepath.Join(dir, "sub/hardlink")))
	must(unix.Mkfifo(filepath.Join(dir, "fifo"), 0o640))
	// Sparse: 8 MiB with data at 0 and at 6 MiB.
	sp, err := os.Create(filepath.Join(dir, "sparse"))
	must(err)
	_, err = sp.Write(bytes.Repeat([]byte("head"), 1024))
	must(err)
	_, err = sp.WriteAt(bytes.Repeat([]byte("tail"), 1024), 6<<20)
	must(err)
	must(sp.Truncate(8 << 20))
	must(sp.Close())
	if os.Geteuid() == 0 {
		must(unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(os.Lchown(filepath.Join(dir, "plain.txt"), 1234, 5678))
		must(os.Lchown(filepath.Join(dir, "link"), 4321, 8765))
	}
	// Nanosecond times, set last (children first) so directories keep theirs.
	var paths []string
	filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { paths = append(paths, p); return nil })
	sort.Sort(sort.Reverse(sort.StringSlice(paths)))
	for i, p := range paths {
		ts := []unix.Timespec{{Sec: 1700000000 + int64(i), Nsec: 123456789}, {Sec: 1600000000 + int64(i)*7, Nsec: int64(i)*1000 + 1}}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// compareTrees fails the test when b differs from a in content or metadata.
func compareTrees(t *testing.T, a, b string) {
	t.Helper()
	la, lb := listTree(t, a), listTree(t, b)
	if len(la) != len(lb) {
		t.Errorf("entries: %d in %s, %d in %s\n%v\n%v", len(la), a, len(lb), b, keys(la), keys(lb))
	}
	inodes := map[uint64]uint64{}
	for rel, fa := range la {
		fb, ok := lb[rel]
		if !ok {
			t.Errorf("%q missing from the restore", rel)
			continue
		}
		sa, sb := fa.Sys().(*syscall.Stat_t), fb.Sys().(*syscall.Stat_t)
		if fa.Mode() != fb.Mode() {
			t.Errorf("%q: mode %v, restored %v", rel, fa.Mode(), fb.Mode())
		}
		if sa.Uid != sb.Uid || sa.Gid != sb.Gid {
			t.Errorf("%q: owner %d:%d, restored %d:%d", rel, sa.Uid, sa.Gid, sb.Uid, sb.Gid)
		}
		if sa.Mtim != sb.Mtim {
			t.Errorf("%q: mtime %v, restored %v", rel, sa.Mtim, sb.Mtim)
		}
		if sa.Rdev != sb.Rdev {
			t.Errorf("%q: rdev %d, restored %d", rel, sa.Rdev, sb.Rdev)
		}
		switch {
		case fa.Mode().IsRegular():
			da, _ := os.ReadFile(filepath.Join(a, rel))
			db, _ := os.ReadFile(filepath.Join(b, rel))
			if !bytes.Equal(da, db) {
				t.Errorf("%q: content differs (%d vs %d bytes)", rel, len(da), len(db))
			}
			if sa.Blocks < sa.Size/512/2 && sb.Blocks > sa.Blocks*2+16 {
				t.Errorf("%q: sparse file restored dense: %d blocks, source %d", rel, sb.Blocks, sa.Blocks)
			}
			if sa.Nlink > 1 {
				if other, ok := inodes[sa.Ino]; ok && other != sb.Ino {
					t.Errorf("%q: hard link restored as a separate file", rel)
				}
				inodes[sa.Ino] = sb.Ino
			}
		case fa.Mode()&os.ModeSymlink != 0:
			ta, _ := os.Readlink(filepath.Join(a, rel))
			tb, _ := os.Readlink(filepath.Join(b, rel))
			if ta != tb {
				t.Errorf("%q: link target %q, restored %q", rel, ta, tb)
			}
		}
	}
}

func keys(m map[string]os.FileInfo) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

func listTree(t *testing.T, dir string) map[string]os.FileInfo {
	t.Helper()
	m := map[string]os.FileInfo{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel != "." {
			m[rel] = fi
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}
