package mountfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// ErrFUSEUnavailable is matched when the kernel's FUSE device is missing,
// or when neither a direct mount nor fusermount could mount the file
// system; the message says why and what to install or load.
var ErrFUSEUnavailable = errors.New("FUSE is not available")

// ErrStaleMount is matched when the mountpoint is a FUSE mount whose
// server is gone (a mount process that was killed); it must be unmounted
// (fusermount -u, umount -l) before it can be used again.
var ErrStaleMount = errors.New("mountpoint is a stale FUSE mount")

// fuseDevice is the kernel's FUSE device (tests point it elsewhere).
var fuseDevice = "/dev/fuse"

// MountOptions say how to mount.
type MountOptions struct {
	// AllowOther lets other users than the one who mounted see the file
	// system (needs user_allow_other in /etc/fuse.conf unless root).
	AllowOther bool
	// Debug logs every FUSE request to Logger.
	Debug bool
	// Logger receives go-fuse's own diagnostics; nil: log.Default().
	Logger *log.Logger
}

// Server is a mounted file system.
type Server struct {
	srv *fuse.Server
	dir string
}

// Mount mounts root read-only on dir and serves it on go-fuse's
// goroutines until Unmount, or until it is unmounted from outside (then
// Wait returns). It reads the snapshot list once first, so that a
// repository that cannot be listed fails here rather than in the kernel.
//
// As root it mounts directly with mount(2) (no helper needed); where that
// is not permitted (a container without CAP_SYS_ADMIN), or not as root,
// it runs fusermount3 or fusermount. When both fail, the error matches
// ErrFUSEUnavailable and gives both reasons.
func Mount(ctx context.Context, dir string, root *FS, o MountOptions) (*Server, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("mountpoint %s: %w", dir, err)
	}
	if err := checkMountpoint(abs); err != nil {
		return nil, err
	}
	if _, err := os.Stat(fuseDevice); err != nil {
		return nil, fmt.Errorf("%w: %s missing (%v); install fuse3 and load the fuse kernel module (modprobe fuse); in a container, pass the device (docker run --device /dev/fuse --cap-add SYS_ADMIN)",
			ErrFUSEUnavailable, fuseDevice, unwrapPathError(err))
	}
	if err := root.Refresh(ctx); err != nil {
		return nil, err
	}
	logger := o.Logger
	if logger == nil {
		logger = log.Default()
	}
	opts := func(direct bool) *gofs.Options {
		return &gofs.Options{
			MountOptions: fuse.MountOptions{
				FsName:            "stasis",
				Name:              "stasis",
				Options:           []string{"ro"},
				DirectMountStrict: direct,
				DirectMountFlags:  syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_RDONLY,
				AllowOther:        o.AllowOther,
				Debug:             o.Debug,
				Logger:            logger,
				MaxReadAhead:      1 << 20,
				// Snapshots keep no extended attributes: ENOSYS makes
				// the kernel stop asking (ls -l asks for ACLs of every
				// file otherwise).
				DisableXAttrs: true,
			},
			NullPermissions: true, // modes as stored, also 0000
			Logger:          logger,
		}
	}
	var reasons []string
	if os.Geteuid() == 0 {
		srv, err := gofs.Mount(abs, root, opts(true))
		if err == nil {
			return &Server{srv: srv, dir: abs}, nil
		}
		reasons = append(reasons, fmt.Sprintf("mount(2) as root: %v", err))
		if errors.Is(err, syscall.EPERM) {
			reasons[len(reasons)-1] += " (no CAP_SYS_ADMIN: in a container, add --cap-add SYS_ADMIN)"
		}
	}
	helper := fusermount()
	if helper == "" {
		reasons = append(reasons, "fusermount3/fusermount: not found (install fuse3)")
		return nil, fmt.Errorf("%w: cannot mount on %s: %s", ErrFUSEUnavailable, abs, strings.Join(reasons, "; "))
	}
	srv, err := gofs.Mount(abs, root, opts(false))
	if err != nil {
		reasons = append(reasons, fmt.Sprintf("%s: %v (its own message is above; it needs %s usable, mode crw-rw-rw- on most systems, and itself setuid root; or mount as root)",
			helper, strings.TrimSpace(err.Error()), fuseDevice))
		return nil, fmt.Errorf("%w: cannot mount on %s: %s", ErrFUSEUnavailable, abs, strings.Join(reasons, "; "))
	}
	return &Server{srv: srv, dir: abs}, nil
}

// fusermount returns the path of the fusermount helper go-fuse runs, or "".
func fusermount() string {
	for _, name := range []string{"fusermount3", "fusermount"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		if p := "/bin/" + name; isExecutable(p) {
			return p
		}
	}
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// checkMountpoint refuses what cannot be mounted on, saying what to do.
func checkMountpoint(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, syscall.ENOTCONN):
		return fmt.Errorf("%s: %w (its mount process was killed?): unmount it first with `fusermount -u %s` or `umount -l %s`",
			dir, ErrStaleMount, dir, dir)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("mountpoint %s does not exist (create it with `mkdir %s`)", dir, dir)
	case err != nil:
		return fmt.Errorf("mountpoint %s: %w", dir, err)
	case !fi.IsDir():
		return fmt.Errorf("mountpoint %s is not a directory", dir)
	}
	return nil
}

// Dir returns the absolute mountpoint.
func (s *Server) Dir() string { return s.dir }

// Wait returns once the file system is unmounted (by Unmount or from
// outside, `umount DIR`).
func (s *Server) Wait() { s.srv.Wait() }

// Unmount unmounts the file system and waits for its server to stop. When
// the mountpoint is busy (a shell's working directory, an open file) it
// detaches it lazily instead (umount -l: it disappears from the namespace
// now, and the kernel ends the mount once the last file is closed, which
// then fails with ENOTCONN) and says so in the error, which matches
// syscall.EBUSY; the caller may exit then.
func (s *Server) Unmount() error {
	err := s.srv.Unmount()
	if err == nil {
		return nil
	}
	if derr := detach(s.dir); derr != nil {
		return fmt.Errorf("unmount %s: %v; lazy unmount: %w", s.dir, err, derr)
	}
	return fmt.Errorf("unmount %s: %w: it was in use (an open file or a working directory below it), detached it lazily instead", s.dir, syscall.EBUSY)
}

// detach unmounts dir lazily: umount2(MNT_DETACH) as root, else
// fusermount -u -z.
func detach(dir string) error {
	if os.Geteuid() == 0 {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err == nil {
			return nil
		}
	}
	helper := fusermount()
	if helper == "" {
		return errors.New("fusermount3/fusermount not found (install fuse3)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, helper, "-u", "-z", dir).CombinedOutput(); err != nil {
		return fmt.Errorf("%s -u -z %s: %v: %s", helper, dir, err, strings.TrimSpace(string(out)))
	}
	return nil
}
