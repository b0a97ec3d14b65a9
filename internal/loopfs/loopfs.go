// Package loopfs mounts fresh filesystem images on loop devices for tests
// that need a particular filesystem (btrfs for freeze snapshot, XFS or btrfs
// for freeze reflink). It is imported only by tests: every function takes a
// testing.TB, skips it when the machine cannot provide the filesystem (not
// root, a tool missing, no loop devices), fails it when the test's own files
// cannot be written, and unmounts the image in t.Cleanup.
package loopfs

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// minXFS is the smallest image Reflink makes with mkfs.xfs, which wants
// 300 MB at least.
const minXFS = 320 << 20

// debianPackage names the Debian package of the tools the skip messages
// mention.
var debianPackage = map[string]string{
	"mkfs.btrfs": "btrfs-progs",
	"btrfs":      "btrfs-progs",
	"mkfs.xfs":   "xfsprogs",
}

// Mount makes an image of size bytes with mkfs (a command line without the
// image), mounts it on a loop device, unmounts it in t.Cleanup and returns the
// mount point; it skips t, saying why (what: "freeze snapshot test", ...),
// without root, without mkfs[0], when mkfs fails or loop devices are missing.
func Mount(t testing.TB, what string, size int64, mkfs ...string) string {
	t.Helper()
	need(t, what, mkfs[0])
	tmp := t.TempDir()
	img, mnt := filepath.Join(tmp, "fs.img"), filepath.Join(tmp, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs[0], append(mkfs[1:], img)...).CombinedOutput(); err != nil {
		t.Skipf("%s: %s failed: %v: %s", what, mkfs[0], err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("%s: cannot mount a loop device here: %v: %s", what, err, out)
	}
	t.Cleanup(func() { unmount(t, mnt) })
	return mnt
}

// Btrfs is Mount of a btrfs image; it also skips without the btrfs tool.
func Btrfs(t testing.TB, what string, size int64) string {
	t.Helper()
	need(t, what, "mkfs.btrfs", "btrfs")
	return Mount(t, what, size, "mkfs.btrfs", "-q", "-f")
}

// Reflink is Mount of an XFS image with reflink=1 (at least 320 MiB), or of
// btrfs when mkfs.xfs is missing.
func Reflink(t testing.TB, what string, size int64) string {
	t.Helper()
	need(t, what)
	switch {
	case have("mkfs.xfs"):
		return Mount(t, what, max(size, minXFS), "mkfs.xfs", "-q", "-f", "-m", "reflink=1")
	case have("mkfs.btrfs"):
		return Mount(t, what, size, "mkfs.btrfs", "-q", "-f")
	}
	t.Skipf("%s needs mkfs.xfs (Debian xfsprogs) or mkfs.btrfs (btrfs-progs)", what)
	return ""
}

// need skips t unless it runs as root and every tool is installed.
func need(t testing.TB, what string, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("%s needs root to mount an image on a loop device", what)
	}
	for _, tool := range tools {
		if have(tool) {
			continue
		}
		if pkg := debianPackage[tool]; pkg != "" {
			t.Skipf("%s needs %s (Debian %s)", what, tool, pkg)
		}
		t.Skipf("%s needs %s", what, tool)
	}
}

// have reports whether the program name is on $PATH.
func have(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

// unmount unmounts mnt; when it is busy (a process the test started still
// has a file open there) the test fails and the mount is detached lazily,
// so that it does not outlive the test.
func unmount(t testing.TB, mnt string) {
	out, err := exec.Command("umount", mnt).CombinedOutput()
	if err == nil {
		return
	}
	t.Errorf("umount %s: %v: %s", mnt, err, out)
	if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
		t.Errorf("umount -l %s: %v: %s", mnt, err, out)
	}
}
