package quiesce

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A run that is killed in its quiesced window (SIGKILL, the OOM killer, a
// power cut) cannot run its resume hook: the service stays stopped. So that
// something else can, Run records the resume command in a pending-resume
// file under Options.StateDir before the quiesce hook starts and removes it
// once the resume hook has run. The run holds an flock on the file while it
// lives; the kernel drops it when the process dies, however it dies.
// ResumePending (`stasis resume-pending`, e.g. from a systemd unit's
// ExecStopPost=) runs the resume command of every record whose run is gone.

// PendingDirName is the directory under a state directory that holds the
// pending-resume records.
const PendingDirName = "pending-resume"

const pendingFormat = "stasis-pending-resume"

// Pending is one pending-resume record: the resume hook of a run that is in
// its quiesced window, or died there.
type Pending struct {
	Format             string    `json:"format"` // "stasis-pending-resume"
	Version            int       `json:"version"`
	PID                int       `json:"pid"`
	Host               string    `json:"host"`
	BootID             string    `json:"boot_id"` // /proc/sys/kernel/random/boot_id
	Started            time.Time `json:"started"`
	Repository         string    `json:"repository"`
	Paths              []string  `json:"paths"`
	Resume             string    `json:"resume"`
	HookTimeoutSeconds float64   `json:"hook_timeout_seconds"`

	File string `json:"-"` // where it was read from
}

// DefaultStateDir is where stasis keeps local state (pending-resume
// records): $STASIS_STATE_DIR, else /var/lib/stasis for root, else
// $XDG_STATE_HOME/stasis, else ~/.local/state/stasis.
func DefaultStateDir() string {
	if d := os.Getenv("STASIS_STATE_DIR"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/stasis"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "stasis")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "stasis")
	}
	return filepath.Join(os.TempDir(), "stasis-state-"+fmt.Sprint(os.Geteuid()))
}

func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// pendingFile is this run's record, locked while the run lives.
type pendingFile struct {
	path string
	f    *os.File
}

// writePending creates the record p in stateDir/pending-resume, fsynced,
// and keeps it locked. It is written under a temporary name and renamed, so
// ResumePending never sees a partial record.
func writePending(stateDir string, p Pending) (*pendingFile, error) {
	dir := filepath.Join(stateDir, PendingDirName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w (set STASIS_STATE_DIR to a writable directory)", err)
	}
	p.Format, p.Version = pendingFormat, 1
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, ".new-")
	if err != nil {
		return nil, fmt.Errorf("record the pending resume: %w (set STASIS_STATE_DIR to a writable directory)", err)
	}
	fail := func(err error) (*pendingFile, error) {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("record the pending resume in %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fail(err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	final := filepath.Join(dir, fmt.Sprintf("%s-%d.json", time.Now().UTC().Format("20060102T150405.000000000"), os.Getpid()))
	if err := os.Rename(f.Name(), final); err != nil {
		return fail(err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return &pendingFile{path: final, f: f}, nil
}

// remove deletes the record (while still holding its lock) and unlocks it.
func (p *pendingFile) remove() error {
	err := os.Remove(p.path)
	p.f.Close()
	if err != nil {
		return fmt.Errorf("remove pending-resume record: %w", err)
	}
	return nil
}

// openDead opens the record at path and locks it when its run is gone. It
// returns nil, nil when a live run holds it or it was removed meanwhile.
func openDead(path string) (*os.File, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		f.Close()
		return nil, nil // its run is alive
	}
	// The run removes its record while holding the lock: a record that is
	// still linked under its name after we got the lock is a dead run's.
	var a, b syscall.Stat_t
	if syscall.Fstat(int(f.Fd()), &a) != nil || syscall.Stat(path, &b) != nil || a.Ino != b.Ino || a.Dev != b.Dev {
		f.Close()
		return nil, nil
	}
	return f, nil
}

func readPending(f *os.File) (Pending, error) {
	var p Pending
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return p, err
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return p, err
	}
	if p.Format != pendingFormat || p.Version != 1 {
		return p, fmt.Errorf("not a version 1 %s record", pendingFormat)
	}
	p.File = f.Name()
	return p, nil
}

func pendingFiles(stateDir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(stateDir, PendingDirName, "*.json"))
	sort.Strings(files)
	return files, err
}

// DeadPending lists the records of runs that died in their window without
// running their resume hook; it does not run them.
func DeadPending(stateDir string) ([]Pending, error) {
	files, err := pendingFiles(stateDir)
	if err != nil {
		return nil, err
	}
	var out []Pending
	for _, path := range files {
		f, err := openDead(path)
		if err != nil || f == nil {
			continue
		}
		p, err := readPending(f)
		f.Close()
		if err == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// PendingResult is what ResumePending did with one record.
type PendingResult struct {
	Pending Pending    `json:"pending"`
	Hook    HookResult `json:"hook"`
	Error   string     `json:"error,omitempty"`
}

// ResumePending runs the resume hook of every run recorded in
// stateDir/pending-resume that died in its quiesced window (records of live
// runs are left alone), with the run's hook timeout and environment
// (STASIS_REPO, STASIS_PATHS, STASIS_PHASE=resume). A record whose hook
// succeeded is removed; one whose hook failed is kept, so that a later call
// tries again. The error says which failed. Hook output goes to log.
func ResumePending(ctx context.Context, stateDir string, log io.Writer) ([]PendingResult, error) {
	if log == nil {
		log = io.Discard
	}
	files, err := pendingFiles(stateDir)
	if err != nil {
		return nil, err
	}
	var out []PendingResult
	var errs []error
	for _, path := range files {
		f, err := openDead(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("pending-resume record %s: %w", path, err))
			continue
		}
		if f == nil {
			continue
		}
		res, err := resumeOne(ctx, f, log)
		f.Close()
		if res != nil {
			out = append(out, *res)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

func resumeOne(ctx context.Context, f *os.File, log io.Writer) (*PendingResult, error) {
	p, err := readPending(f)
	if err != nil {
		return nil, fmt.Errorf("pending-resume record %s cannot be read: %w; check the service by hand, then remove the file", f.Name(), err)
	}
	when := p.Started.Local().Format("2006-01-02 15:04:05")
	note := ""
	if b := bootID(); p.BootID != "" && b != "" && p.BootID != b {
		note = " (before the last reboot)"
	}
	fmt.Fprintf(log, "stasis: a backup (pid %d, started %s%s) died in its quiesced window; running its resume hook\n", p.PID, when, note)
	timeout := time.Duration(p.HookTimeoutSeconds * float64(time.Second))
	h := Hook{Phase: PhaseResume, Command: p.Resume, Timeout: timeout, Repo: p.Repository, Paths: p.Paths}
	hr, herr := RunHook(ctx, h, log)
	res := &PendingResult{Pending: p, Hook: hr}
	if herr != nil {
		res.Error = herr.Error()
		return res, fmt.Errorf("%w: %w (record kept in %s)", ErrResumeFailed, herr, f.Name())
	}
	if err := os.Remove(f.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		res.Error = err.Error()
		return res, fmt.Errorf("resumed, but cannot remove the pending-resume record: %w", err)
	}
	return res, nil
}
