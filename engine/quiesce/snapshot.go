package quiesce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoSnapshotBackend is wrapped when freeze snapshot cannot snapshot a
// quiesced file: no backend applies to its filesystem. Run returns it before
// the quiesce hook runs.
var ErrNoSnapshotBackend = errors.New("no snapshot backend")

// noBackendError is a Detect's reason why its backend does not apply; it
// matches ErrNoSnapshotBackend.
type noBackendError struct{ msg string }

func (e *noBackendError) Error() string { return e.msg }
func (e *noBackendError) Unwrap() error { return ErrNoSnapshotBackend }

// noBackend returns a *noBackendError, for SnapshotBackend.Detect.
func noBackend(format string, args ...any) error {
	return &noBackendError{fmt.Sprintf(format, args...)}
}

// SnapshotBackend makes read-only, point-in-time snapshots of the volume
// (filesystem, subvolume, logical volume) that holds a path, for freeze
// snapshot. Another kind of snapshot (LVM, ZFS) is one file implementing it
// and calling registerSnapshotBackend from init. Run calls Detect before the
// quiesce hook, Create while the service is quiesced (it must be quick and
// must not depend on the size of the data), and Remove after the capture,
// on every path out of Run. Methods may be called from any goroutine, one at
// a time per snapshot.
type SnapshotBackend interface {
	// Name is how --snapshot-backend and the report name it ("btrfs").
	Name() string
	// Detect returns the volume holding path (for btrfs the root directory
	// of its subvolume), a directory that Create can snapshot, or an error
	// wrapping ErrNoSnapshotBackend that names path and says why not.
	Detect(path string) (volume string, err error)
	// Create makes a read-only snapshot of volume at dest, a name that does
	// not exist yet, in a private directory stasis made in volume. It
	// returns the directory where volume's root appears in the snapshot
	// (dest itself for btrfs; a mount point for a backend that mounts).
	Create(ctx context.Context, volume, dest string) (root string, err error)
	// Remove removes the snapshot made at dest (by this run or by one that
	// died); it is called with a context that is not cancelled.
	Remove(ctx context.Context, volume, dest string) error
	// FindLeftovers lists the snapshots of this backend in dir (names
	// starting with "stasis-snap-"), to be given to Remove; Run decides
	// which of them belong to dead runs.
	FindLeftovers(volume, dir string) ([]string, error)
}

var (
	backendsMu sync.Mutex
	backends   []SnapshotBackend
)

func registerSnapshotBackend(b SnapshotBackend) {
	backendsMu.Lock()
	defer backendsMu.Unlock()
	backends = append(backends, b)
}

// SnapshotBackends returns the names of the snapshot backends built in.
func SnapshotBackends() []string {
	backendsMu.Lock()
	defer backendsMu.Unlock()
	names := make([]string, len(backends))
	for i, b := range backends {
		names[i] = b.Name()
	}
	return names
}

func snapshotBackend(name string) (SnapshotBackend, bool) {
	backendsMu.Lock()
	defer backendsMu.Unlock()
	for _, b := range backends {
		if b.Name() == name {
			return b, true
		}
	}
	return nil, false
}

// SnapshotDirName is the private (0700) directory in the root of a snapshotted
// volume that holds the snapshots of running stasis backups and their lock
// files: <volume>/.stasis-snapshots/stasis-snap-<pid>-<time>.
const SnapshotDirName = ".stasis-snapshots"

const snapshotPrefix = "stasis-snap-"

// SnapshotReport is the "snapshot" object of a Report in freeze snapshot.
type SnapshotReport struct {
	Backend string `json:"backend"`
	// Volumes are the snapshotted volumes (btrfs: subvolume roots), sorted.
	Volumes []string `json:"volumes"`
	// CreateSeconds is how long creating the snapshots took: the part of
	// the downtime that is not the hooks'.
	CreateSeconds float64 `json:"create_seconds"`
}

// snapVolume is one volume to snapshot in this run.
type snapVolume struct {
	backend SnapshotBackend
	volume  string
	dest    string   // volume/.stasis-snapshots/stasis-snap-PID-TIME
	lock    *os.File // dest + ".lock", flock'ed while the run lives
	root    string   // where volume's root appears, once created
	created bool
}

// snapshotRun is the snapshots of one run, prepared before the quiesce hook.
type snapshotRun struct {
	vols  []*snapVolume
	byVol map[string]*snapVolume
	live  []string // other filesystems mounted inside a snapshotted volume: read live
	name  string   // stasis-snap-PID-TIME
}

// snapshotFiles drops the files inside a snapshot directory (a snapshot of
// a run still going, or a dead run's not yet removed).
func snapshotFiles(files []string) []string {
	out := files[:0:0]
	for _, f := range files {
		if !strings.Contains(f, "/"+SnapshotDirName+"/") {
			out = append(out, f)
		}
	}
	return out
}

// prepareSnapshots does, before the service is stopped, everything freeze
// snapshot needs that can fail: it finds the volume of every file (with the
// named backend, or the first that applies) and the volumes nested in those
// inside paths (addNested), makes the snapshot directory in each, removes
// the snapshots of dead runs left there, and takes this run's lock.
// Messages about leftovers are returned as warnings. Files and paths are
// absolute (Run's callers make them so; relative ones are made absolute).
func prepareSnapshots(ctx context.Context, backendName string, paths, files []string, log io.Writer) (s *snapshotRun, warnings []string, err error) {
	var cands []SnapshotBackend
	if backendName != "" {
		b, ok := snapshotBackend(backendName)
		if !ok {
			return nil, nil, fmt.Errorf("snapshot backend %q: want one of %s", backendName, strings.Join(SnapshotBackends(), ", "))
		}
		cands = []SnapshotBackend{b}
	} else {
		backendsMu.Lock()
		cands = append(cands, backends...)
		backendsMu.Unlock()
	}
	s = &snapshotRun{byVol: map[string]*snapVolume{},
		name: fmt.Sprintf("%s%d-%s", snapshotPrefix, os.Getpid(), time.Now().UTC().Format("20060102T150405"))}
	defer func() {
		if err != nil {
			s.remove(context.WithoutCancel(ctx))
		}
	}()
	dirVol := map[string]*snapVolume{} // cache by directory
	for _, f := range files {
		if !filepath.IsAbs(f) {
			if f, err = filepath.Abs(f); err != nil {
				return s, warnings, fmt.Errorf("freeze snapshot: %w", err)
			}
		}
		if dirVol[filepath.Dir(f)] != nil {
			continue
		}
		var (
			b      SnapshotBackend
			volume string
			why    []string
		)
		for _, c := range cands {
			vol, derr := c.Detect(f)
			if derr == nil {
				b, volume = c, vol
				break
			}
			if !errors.Is(derr, ErrNoSnapshotBackend) {
				return s, warnings, fmt.Errorf("freeze snapshot: %w", derr)
			}
			why = append(why, derr.Error())
		}
		if b == nil {
			return s, warnings, fmt.Errorf("freeze snapshot: %w: %s (built-in backends: %s); use --freeze reflink, copy or stop",
				ErrNoSnapshotBackend, strings.Join(why, "; "), strings.Join(SnapshotBackends(), ", "))
		}
		v, w, err := s.add(ctx, b, volume, log)
		warnings = append(warnings, w...)
		if err != nil {
			return s, warnings, err
		}
		dirVol[filepath.Dir(f)] = v
	}
	w, err := s.addNested(ctx, paths, log)
	warnings = append(warnings, w...)
	if err != nil {
		return s, warnings, err
	}
	sort.Slice(s.vols, func(i, j int) bool { return s.vols[i].volume < s.vols[j].volume })
	return s, warnings, nil
}

// add returns the volume, preparing it the first time.
func (s *snapshotRun) add(ctx context.Context, b SnapshotBackend, volume string, log io.Writer) (*snapVolume, []string, error) {
	if v := s.byVol[volume]; v != nil {
		return v, nil, nil
	}
	if len(s.vols) > 0 && s.vols[0].backend.Name() != b.Name() {
		return nil, nil, fmt.Errorf("freeze snapshot: the quiesced files need two snapshot backends (%s for %s, %s for %s): quiesce them in separate backups",
			s.vols[0].backend.Name(), s.vols[0].volume, b.Name(), volume)
	}
	v := &snapVolume{backend: b, volume: volume}
	w, err := v.prepare(ctx, s.name, log)
	if err != nil {
		return nil, w, err
	}
	s.byVol[volume] = v
	s.vols = append(s.vols, v)
	return v, w, nil
}

// volumeOf returns the snapshotted volume holding p (the longest match), or nil.
func (s *snapshotRun) volumeOf(p string) *snapVolume {
	var best *snapVolume
	for _, v := range s.vols {
		if (p == v.volume || strings.HasPrefix(p, v.volume+"/")) && (best == nil || len(v.volume) > len(best.volume)) {
			best = v
		}
	}
	return best
}

// addNested walks the backup paths for directories inside a snapshotted
// volume that are on another device: a snapshot shows them empty. A nested
// volume of the same backend (a btrfs subvolume in a subvolume) is
// snapshotted too, so that the whole tree is read as of the quiesce point;
// another filesystem mounted there is read live, with a warning.
func (s *snapshotRun) addNested(ctx context.Context, paths []string, log io.Writer) ([]string, error) {
	var warnings []string
	devs := map[string]uint64{}
	for _, root := range paths {
		root, err := filepath.Abs(root)
		if err != nil {
			return warnings, fmt.Errorf("freeze snapshot: %w", err)
		}
		err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // the backup reports what it cannot read
			}
			if !d.IsDir() {
				return nil
			}
			if d.Name() == SnapshotDirName {
				return filepath.SkipDir
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			var st syscall.Stat_t
			if syscall.Lstat(p, &st) != nil {
				return nil
			}
			devs[p] = uint64(st.Dev)
			pd, ok := devs[filepath.Dir(p)]
			if !ok { // the backup path itself
				var ps syscall.Stat_t
				if syscall.Lstat(filepath.Dir(p), &ps) != nil {
					return nil
				}
				pd = uint64(ps.Dev)
			}
			if pd == uint64(st.Dev) {
				return nil
			}
			outer := s.volumeOf(filepath.Dir(p))
			if outer == nil || s.byVol[p] != nil {
				return nil
			}
			if vol, derr := outer.backend.Detect(p); derr == nil && vol == p {
				_, w, err := s.add(ctx, outer.backend, p, log)
				warnings = append(warnings, w...)
				return err
			}
			s.live = append(s.live, p)
			warnings = append(warnings, fmt.Sprintf("freeze snapshot: %s is another filesystem mounted inside %s: its files are read live, not from the snapshot", p, outer.volume))
			return filepath.SkipDir
		})
		if err != nil {
			return warnings, fmt.Errorf("freeze snapshot: look for nested volumes in %s: %w", root, err)
		}
	}
	return warnings, nil
}

// prepare makes volume/.stasis-snapshots, removes the leftovers of dead runs
// in it and creates and locks this run's lock file, all under an flock on
// the directory so that no other run takes a fresh lock file for a dead one.
func (v *snapVolume) prepare(ctx context.Context, name string, log io.Writer) ([]string, error) {
	dir := filepath.Join(v.volume, SnapshotDirName)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("freeze snapshot: create %s: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return nil, fmt.Errorf("freeze snapshot: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("freeze snapshot: %s is not a directory: remove it", dir)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("freeze snapshot: %s belongs to uid %d, not to this user (uid %d): snapshots hold the service's data, so remove it and let stasis create it", dir, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("freeze snapshot: make %s private: %w", dir, err)
		}
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("freeze snapshot: %w", err)
	}
	defer d.Close()
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("freeze snapshot: lock %s: %w", dir, err)
	}
	warnings := removeDeadSnapshots(ctx, v.backend, v.volume, dir, log)
	v.dest = filepath.Join(dir, name)
	for i := 2; fileExists(v.dest) || fileExists(v.dest+".lock"); i++ {
		v.dest = filepath.Join(dir, fmt.Sprintf("%s.%d", name, i)) // two volumes' names never collide, but two runs' of one pid may
	}
	lock, err := os.OpenFile(v.dest+".lock", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return warnings, fmt.Errorf("freeze snapshot: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		os.Remove(lock.Name())
		return warnings, fmt.Errorf("freeze snapshot: lock %s: %w", lock.Name(), err)
	}
	v.lock = lock
	return warnings, nil
}

func fileExists(p string) bool { _, err := os.Lstat(p); return err == nil }

// removeDeadSnapshots removes the snapshots in dir whose run died (nobody
// holds the lock file beside it) and lock files without a live run, and says
// so on log; it returns the messages.
func removeDeadSnapshots(ctx context.Context, b SnapshotBackend, volume, dir string, log io.Writer) []string {
	var msgs []string
	say := func(msg string) {
		fmt.Fprintf(log, "stasis: %s\n", msg)
		msgs = append(msgs, msg)
	}
	snaps, err := b.FindLeftovers(volume, dir)
	if err != nil {
		say(fmt.Sprintf("cannot look for snapshots left by earlier runs: %v", err))
	}
	for _, p := range snaps {
		if live(p + ".lock") {
			continue
		}
		if err := b.Remove(context.WithoutCancel(ctx), volume, p); err != nil {
			say(fmt.Sprintf("cannot remove %s snapshot %s, left by a stasis run that died: %v; remove it by hand", b.Name(), p, err))
			continue
		}
		os.Remove(p + ".lock")
		say(fmt.Sprintf("removed %s snapshot %s, left by a stasis run that died while it backed up from it", b.Name(), p))
	}
	locks, _ := filepath.Glob(filepath.Join(GlobQuote(dir), snapshotPrefix+"*.lock"))
	for _, l := range locks {
		if !fileExists(strings.TrimSuffix(l, ".lock")) && !live(l) {
			os.Remove(l) // a run that died before or after its snapshot existed
		}
	}
	return msgs
}

// live reports whether a running stasis holds the lock file at p.
func live(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil
}

// create makes the snapshots, in the window. It returns how long it took.
func (s *snapshotRun) create(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	for _, v := range s.vols {
		if err := ctx.Err(); err != nil {
			return time.Since(start), err
		}
		root, err := v.backend.Create(ctx, v.volume, v.dest)
		if err != nil {
			return time.Since(start), fmt.Errorf("freeze snapshot: %w", err)
		}
		v.root, v.created = root, true
	}
	return time.Since(start), nil
}

// roots maps each snapshotted volume to where its root appears in the
// snapshot, and each other filesystem mounted inside one to itself (read
// live): engine BackupOptions.SourceRoots.
func (s *snapshotRun) roots() map[string]string {
	m := make(map[string]string, len(s.vols)+len(s.live))
	for _, v := range s.vols {
		m[v.volume] = v.root
	}
	for _, p := range s.live {
		m[p] = p
	}
	return m
}

// excludes are globs of the snapshot directories, which a backup of a path
// holding a volume's root must not descend into.
func (s *snapshotRun) excludes() []string {
	out := make([]string, 0, len(s.vols))
	for _, v := range s.vols {
		out = append(out, GlobQuote(filepath.Join(v.volume, SnapshotDirName)))
	}
	return out
}

func (s *snapshotRun) report() *SnapshotReport {
	r := &SnapshotReport{Volumes: []string{}}
	for _, v := range s.vols {
		r.Backend = v.backend.Name()
		r.Volumes = append(r.Volumes, v.volume)
	}
	return r
}

// remove removes the snapshots made and the lock files; ctx must not be
// cancelled (Ctrl-C must not leave a snapshot behind).
func (s *snapshotRun) remove(ctx context.Context) error {
	var errs []error
	for _, v := range s.vols {
		if v.created {
			if err := v.backend.Remove(ctx, v.volume, v.dest); err != nil {
				errs = append(errs, fmt.Errorf("%w (the next freeze snapshot backup of %s removes it)", err, v.volume))
				v.lock.Close() // dropping the lock makes it a dead run's leftover
				continue
			}
			v.created = false
		}
		if v.lock != nil {
			os.Remove(v.lock.Name())
			v.lock.Close()
			v.lock = nil
		}
	}
	return errors.Join(errs...)
}

// FSName names the filesystem with statfs magic m, for messages.
func FSName(m int64) string {
	switch m {
	case unix.EXT4_SUPER_MAGIC:
		return "ext2/ext3/ext4"
	case unix.XFS_SUPER_MAGIC:
		return "XFS"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.NFS_SUPER_MAGIC:
		return "NFS"
	case unix.FUSE_SUPER_MAGIC:
		return "FUSE"
	case 0x2fc12fc1:
		return "ZFS"
	case unix.F2FS_SUPER_MAGIC:
		return "F2FS"
	}
	return fmt.Sprintf("a filesystem with magic %#x", m)
}
