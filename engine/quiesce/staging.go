package quiesce

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// StagingDirName is the name of the default staging directory (see
// DefaultStaging).
const StagingDirName = ".stasis-staging"

// stagePrefix starts the name of each run's own directory under the
// staging directory.
const stagePrefix = "stasis-stage-"

// DefaultStaging returns the staging directory used when Options.Staging is
// empty: a private (0700) directory named .stasis-staging on the filesystem
// that holds files[0], so that reflink can clone and copies never leave that
// filesystem (never beside the repository, which is often a backup disk or a
// network share). It is created in the highest directory that is on the same
// filesystem as files[0], lies on the way from it up to the parent of the
// backup path holding it (one of paths), and is writable; that is the
// directory beside the backup path when it is on the same filesystem, e.g.
// /srv/.stasis-staging for /srv/zoomserv. It can be inside a backup path
// (when the backup path is itself a mount point); the backup must exclude it
// then (Stage.StagingDir).
func DefaultStaging(paths, files []string) (string, error) {
	if len(files) == 0 {
		return "", errors.New("no quiesced files to stage")
	}
	f := filepath.Clean(files[0])
	root := containingPath(paths, f)
	top := filepath.Dir(root) // the parent of the backup path (or / for /)
	var st syscall.Stat_t
	if err := syscall.Stat(f, &st); err != nil {
		return "", fmt.Errorf("staging: %w", err)
	}
	// The chain of directories from f's up to top, lowest first, stopping
	// where the filesystem changes.
	var chain []string
	for d := filepath.Dir(f); ; d = filepath.Dir(d) {
		var ds syscall.Stat_t
		if err := syscall.Stat(d, &ds); err != nil || ds.Dev != st.Dev {
			break
		}
		chain = append(chain, d)
		if d == top || d == "/" || !strings.HasPrefix(d, top) {
			break
		}
	}
	for i := len(chain) - 1; i >= 0; i-- {
		if unix.Access(chain[i], unix.W_OK|unix.X_OK) == nil {
			return filepath.Join(chain[i], StagingDirName), nil
		}
	}
	return "", fmt.Errorf("no writable directory on the filesystem of %s to stage copies in: give --staging DIR on that filesystem", f)
}

// containingPath returns the one of paths that is p or holds p, else p's
// directory.
func containingPath(paths []string, p string) string {
	for _, root := range paths {
		root, err := filepath.Abs(root)
		if err != nil {
			continue
		}
		if p == root || root == "/" || strings.HasPrefix(p, root+"/") {
			return root
		}
	}
	return filepath.Dir(p)
}

// staging is one run's staging directory, prepared before the quiesce hook.
type staging struct {
	dir  string   // this run's directory under parent
	lock *os.File // dir, flock'ed while the run lives
	mode Freeze   // copy, or reflink when cloning into dir works
}

// prepareStaging does, before the service is stopped, everything copy and
// reflink (mode) need that can fail: it creates the staging directory parent
// (private: the default one, DefaultStaging, which must be a directory of
// ours, not a symlink, and is made 0700), removes the directories of dead
// runs left in it (each live run holds an flock on its own), makes this
// run's directory, tries a clone there (reflink), and checks that the
// filesystem has room for copies of files. Messages about leftovers and
// fallbacks are returned as warnings.
func prepareStaging(parent string, private bool, mode Freeze, files []string, log io.Writer) (s *staging, warnings []string, err error) {
	if parent, err = checkStagingParent(parent, private); err != nil {
		return nil, nil, err
	}
	s, warnings, err = makeRunDir(parent, mode, log)
	if err != nil {
		return nil, warnings, err
	}
	defer func(prepared *staging) {
		if err != nil {
			prepared.remove()
		}
	}(s)

	if s.mode == FreezeReflink {
		if why := cloneProbe(s.dir, files); why != nil {
			warnings = append(warnings, fmt.Sprintf("freeze reflink: %v; falling back to copy (use XFS or btrfs, with --staging on the same filesystem as the data)", why))
			s.mode = FreezeCopy
		}
	}
	if s.mode == FreezeCopy {
		if err := checkRoom(parent, s.dir, files); err != nil {
			return nil, warnings, err
		}
	}
	return s, warnings, nil
}

// checkStagingParent creates the staging directory parent when missing and
// checks it: a directory, and when private (the default one, which holds
// plaintext copies) ours and mode 0700. It returns parent made absolute.
func checkStagingParent(parent string, private bool) (string, error) {
	parent, err := filepath.Abs(parent)
	if err != nil {
		return "", fmt.Errorf("staging directory: %w", err)
	}
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return "", fmt.Errorf("create staging directory: %w (set --staging to a writable directory)", err)
	}
	stat := os.Stat // a --staging given may be a symlink
	if private {
		stat = os.Lstat // ours must not be
	}
	fi, err := stat(parent)
	if err != nil {
		return "", fmt.Errorf("staging directory: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("staging directory %s is not a directory (set --staging to a writable directory)", parent)
	}
	if private {
		st := fi.Sys().(*syscall.Stat_t)
		if int(st.Uid) != os.Geteuid() {
			return "", fmt.Errorf("staging directory %s belongs to uid %d, not to this user (uid %d): it would hold plaintext copies, so remove it and let stasis create it, or give --staging",
				parent, st.Uid, os.Geteuid())
		}
		if fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(parent, 0o700); err != nil {
				return "", fmt.Errorf("staging directory %s: make it private: %w", parent, err)
			}
		}
	}
	return parent, nil
}

// makeRunDir removes the directories of dead runs from parent and makes and
// locks this run's directory, holding parent's lock meanwhile so that no
// other run takes the fresh, not yet locked directory for a leftover.
func makeRunDir(parent string, mode Freeze, log io.Writer) (*staging, []string, error) {
	pl, err := os.Open(parent)
	if err != nil {
		return nil, nil, fmt.Errorf("staging directory: %w", err)
	}
	defer pl.Close()
	if err := unix.Flock(int(pl.Fd()), unix.LOCK_EX); err != nil {
		return nil, nil, fmt.Errorf("lock staging directory %s: %w", parent, err)
	}
	warnings := removeLeftovers(parent, log)
	dir, err := os.MkdirTemp(parent, stagePrefix)
	if err != nil {
		return nil, warnings, fmt.Errorf("create staging directory: %w (set --staging to a writable directory)", err)
	}
	lock, err := os.Open(dir)
	if err == nil {
		err = unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	}
	if err != nil {
		if lock != nil {
			lock.Close()
		}
		os.RemoveAll(dir)
		return nil, warnings, fmt.Errorf("lock staging directory %s: %w", dir, err)
	}
	return &staging{dir: dir, lock: lock, mode: mode}, warnings, nil
}

// checkRoom fails when the filesystem of dir has less room than the copies
// of files need (their allocated bytes: holes are not copied).
func checkRoom(parent, dir string, files []string) error {
	var need int64
	for _, f := range files {
		var st syscall.Stat_t
		if err := syscall.Stat(f, &st); err == nil {
			need += st.Blocks * 512
		}
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("staging directory %s: %w", dir, err)
	}
	if avail := int64(fs.Bavail) * fs.Bsize; need > avail {
		return fmt.Errorf("staging directory %s: its filesystem has %d bytes free, the copies of the %d quiesced files need %d: give --staging on a filesystem with room, or use --freeze stop",
			parent, avail, len(files), need)
	}
	return nil
}

// remove deletes the run's directory and releases its lock.
func (s *staging) remove() error {
	err := os.RemoveAll(s.dir)
	s.lock.Close()
	return err
}

// removeLeftovers removes the run directories under parent whose run died
// (nobody holds their lock) and says so on log; it returns the messages.
func removeLeftovers(parent string, log io.Writer) []string {
	ents, err := os.ReadDir(parent)
	if err != nil {
		return []string{fmt.Sprintf("staging directory %s: cannot look for leftovers of earlier runs: %v", parent, err)}
	}
	var msgs []string
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), stagePrefix) {
			continue
		}
		p := filepath.Join(parent, e.Name())
		d, err := os.Open(p)
		if err != nil {
			continue
		}
		if unix.Flock(int(d.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			d.Close() // a live run's
			continue
		}
		rerr := os.RemoveAll(p)
		d.Close()
		msg := fmt.Sprintf("removed %s, left by a stasis run that died in its quiesced window (it held plaintext copies of quiesced files)", p)
		if rerr != nil {
			msg = fmt.Sprintf("cannot remove %s, left by a stasis run that died (it holds plaintext copies of quiesced files): %v; remove it by hand", p, rerr)
		}
		fmt.Fprintf(log, "stasis: %s\n", msg)
		msgs = append(msgs, msg)
	}
	return msgs
}

// cloneProbe reports why files cannot be cloned into dir, or nil: dir must
// be on the filesystem of the files, and that filesystem must clone.
func cloneProbe(dir string, files []string) error {
	var ds syscall.Stat_t
	if err := syscall.Stat(dir, &ds); err != nil {
		return err
	}
	for _, f := range files {
		var fs syscall.Stat_t
		if err := syscall.Stat(f, &fs); err == nil && fs.Dev != ds.Dev {
			return fmt.Errorf("cannot clone %s into %s: another filesystem", f, dir)
		}
	}
	src, dst := filepath.Join(dir, ".probe-src"), filepath.Join(dir, ".probe-dst")
	defer os.Remove(src)
	defer os.Remove(dst)
	if err := os.WriteFile(src, []byte("stasis clone probe\n"), 0o600); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		return fmt.Errorf("the filesystem of %s cannot clone files: %w", dir, err)
	}
	return nil
}
