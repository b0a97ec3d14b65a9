package quiesce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Freeze is how the quiesced files are held still during capture.
type Freeze string

// Freeze modes (see the package comment).
const (
	FreezeStop    Freeze = "stop"
	FreezeCopy    Freeze = "copy"
	FreezeReflink Freeze = "reflink"
	// FreezeSnapshot: a read-only snapshot of the volume holding the
	// quiesced files (btrfs subvolume) is made while the service is held
	// still; the backup reads the files from it (see snapshot.go).
	FreezeSnapshot Freeze = "snapshot"
)

// ParseFreeze returns the freeze mode named s; "" is stop.
func ParseFreeze(s string) (Freeze, error) {
	switch f := Freeze(s); f {
	case "":
		return FreezeStop, nil
	case FreezeStop, FreezeCopy, FreezeReflink, FreezeSnapshot:
		return f, nil
	}
	return "", fmt.Errorf("freeze mode %q: want stop, copy, reflink or snapshot", s)
}

// OnOpen says what to do when a quiesced file is still open for writing
// after the quiesce hook.
type OnOpen string

// OnOpen policies.
const (
	OnOpenWarn OnOpen = "warn"
	OnOpenFail OnOpen = "fail"
)

// ParseOnOpen returns the on-open policy named s; "" is warn.
func ParseOnOpen(s string) (OnOpen, error) {
	switch o := OnOpen(s); o {
	case "":
		return OnOpenWarn, nil
	case OnOpenWarn, OnOpenFail:
		return o, nil
	}
	return "", fmt.Errorf("on-open policy %q: want warn or fail", s)
}

// Options configure Run. The zero value (plus Paths) runs no hooks, freeze
// stop, on-open warn.
type Options struct {
	Repository   string   // passed to hooks as STASIS_REPO
	Paths        []string // backup paths: STASIS_PATHS, and where quiesced files are looked for
	QuiescePaths []string // globs selecting the quiesced files (see QuiescedFiles); none = all files
	// Excludes are the backup's exclude globs (package exclude): a file the
	// backup leaves out is not quiesced (not staged, not waited for).
	Excludes    []string
	Quiesce     string // shell command run before capture; "" = none
	Resume      string // shell command run after; "" = none
	HookTimeout time.Duration
	KillGrace   time.Duration
	Freeze      Freeze // "" = stop
	// Staging is the directory under which copy and reflink modes create
	// their own temporary directory (created when missing). "" = a private
	// .stasis-staging directory on the data's filesystem (DefaultStaging).
	// For reflink it must be on the same filesystem as the data.
	// Directories left there by runs that died are removed by the next run.
	Staging string
	// SnapshotBackend names the snapshot backend of freeze snapshot
	// ("btrfs", see SnapshotBackends); "" = the first that applies to the
	// quiesced files' filesystem.
	SnapshotBackend string
	// StateDir, when set, is where the resume command is recorded while
	// the service is quiesced (see ResumePending); DefaultStateDir is the
	// CLI's choice.
	StateDir string
	OnOpen   OnOpen    // "" = warn
	Log      io.Writer // hook output and progress lines; nil = discard
}

// Report is what quiescing did; it is stored in the snapshot and shown by
// `stasis snapshots --json` as the "quiesce" object. Slices are never nil,
// so they serialise as [] rather than null.
type Report struct {
	FreezeRequested Freeze        `json:"freeze_requested"`
	Freeze          Freeze        `json:"freeze"` // mode actually used
	Downtime        time.Duration `json:"-"`
	// DowntimeSeconds is from the start of the quiesce hook to the end of the
	// resume hook; 0 when no hooks were given.
	DowntimeSeconds float64      `json:"downtime_seconds"`
	QuiescedFiles   int          `json:"quiesced_files"`
	Hooks           []HookResult `json:"hooks"`
	OpenWriters     []Holder     `json:"open_writers"`
	Warnings        []string     `json:"warnings"`
	// Snapshot says which snapshot backend freeze snapshot used, on which
	// volumes, and how long creating the snapshots took; nil in other modes.
	Snapshot *SnapshotReport `json:"snapshot,omitempty"`
}

// Run quiesces, lets capture read the files, and resumes; see the package
// comment for the modes and the exactly-once resume guarantee. capture is
// called at most once, on the calling goroutine, with ctx; it is not called
// when quiescing, staging or the open-writer check failed. Run returns the
// Report in every case, and an error wrapping ErrQuiesceFailed,
// ErrOpenWriters, ErrResumeFailed, ctx.Err() or capture's error (joined with
// errors.Join when there are several).
func Run(ctx context.Context, opts Options, capture func(ctx context.Context, s *Stage) error) (rep Report, err error) {
	freeze, ferr := ParseFreeze(string(opts.Freeze))
	onOpen, oerr := ParseOnOpen(string(opts.OnOpen))
	opts.Freeze, opts.OnOpen = freeze, onOpen
	rep = Report{FreezeRequested: opts.Freeze, Freeze: opts.Freeze,
		Hooks: []HookResult{}, OpenWriters: []Holder{}, Warnings: []string{}}
	if err := errors.Join(ferr, oerr); err != nil {
		return rep, err
	}
	if opts.SnapshotBackend != "" && opts.Freeze != FreezeSnapshot {
		return rep, fmt.Errorf("snapshot backend %q only applies to freeze snapshot", opts.SnapshotBackend)
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	// Listed now for what must be prepared before the service is stopped
	// (staging room, snapshot volumes), and again once it is quiesced.
	files, err := QuiescedFiles(opts.Paths, opts.QuiescePaths, opts.Excludes)
	if err != nil {
		return rep, err
	}
	// Everything that can fail early fails here, before the service is
	// stopped: staging (created, checked for room, leftovers of dead runs
	// removed) and the pending-resume record.
	var (
		stg      *staging
		snaps    *snapshotRun
		excludes []string
	)
	if opts.Freeze == FreezeSnapshot && len(files) > 0 {
		files = snapshotFiles(files) // never back up a snapshot's files as data
		var warns []string
		snaps, warns, err = prepareSnapshots(ctx, opts.SnapshotBackend, opts.Paths, files, opts.Log)
		rep.Warnings = append(rep.Warnings, warns...)
		if err != nil {
			return rep, err
		}
		excludes = snaps.excludes()
		defer func() {
			// Also after an error, a panic in capture, Ctrl-C or SIGTERM.
			if rerr := snaps.remove(context.WithoutCancel(ctx)); rerr != nil {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("remove snapshot: %v", rerr))
			}
		}()
	}
	if opts.Freeze != FreezeStop && opts.Freeze != FreezeSnapshot && len(files) > 0 {
		parent := opts.Staging
		if parent == "" {
			if parent, err = DefaultStaging(opts.Paths, files); err != nil {
				return rep, err
			}
		}
		if parent, err = filepath.Abs(parent); err != nil {
			return rep, fmt.Errorf("staging directory: %w", err)
		}
		files = outside(files, parent) // never stage a dead run's copies
		private := opts.Staging == ""
		excludes = []string{GlobQuote(filepath.Join(parent, stagePrefix)) + "*"}
		if private {
			excludes = append(excludes, GlobQuote(parent)) // all ours
		}
		opts.Staging = parent
		var warns []string
		stg, warns, err = prepareStaging(parent, private, opts.Freeze, files, opts.Log)
		rep.Warnings = append(rep.Warnings, warns...)
		if err != nil {
			return rep, err
		}
		defer func() {
			if rerr := stg.remove(); rerr != nil {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("remove staging directory: %v", rerr))
			}
		}()
	}
	rep.QuiescedFiles = len(files)
	var pending *pendingFile
	if opts.StateDir != "" && opts.Resume != "" {
		if dead, _ := DeadPending(opts.StateDir); len(dead) > 0 {
			for _, d := range dead {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("a backup (pid %d, started %s) died in its quiesced window and its resume hook %q never ran: check that service, and run `stasis resume-pending`",
					d.PID, d.Started.Local().Format("2006-01-02 15:04:05"), d.Resume))
			}
		}
		host, _ := os.Hostname()
		timeout := opts.HookTimeout
		if timeout <= 0 {
			timeout = DefaultHookTimeout
		}
		pending, err = writePending(opts.StateDir, Pending{PID: os.Getpid(), Host: host, BootID: bootID(), Started: time.Now(),
			Repository: opts.Repository, Paths: opts.Paths, Resume: opts.Resume, HookTimeoutSeconds: timeout.Seconds()})
		if err != nil {
			return rep, err
		}
	}
	if err := ctx.Err(); err != nil {
		if pending != nil {
			pending.remove()
		}
		return rep, err
	}

	if opts.Freeze == FreezeSnapshot || opts.Freeze == FreezeReflink {
		// A snapshot commits the filesystem's transaction and a clone
		// writes the file's dirty pages back first: whatever the running
		// service left dirty would be written inside the window. Written
		// now, the window holds only what the quiesce hook itself wrote.
		for _, w := range syncFilesystems(files) {
			rep.Warnings = append(rep.Warnings, w)
		}
	}

	var mu sync.Mutex // guards rep while Stage.Resume may run on capture's goroutines
	hooked := opts.Quiesce != "" || opts.Resume != ""
	start := time.Now()
	var (
		once      sync.Once
		resumeErr error
	)
	resume := func() error {
		once.Do(func() {
			if opts.Resume != "" {
				res, err := RunHook(context.WithoutCancel(ctx), opts.hook(PhaseResume, opts.Resume), opts.Log)
				mu.Lock()
				rep.Hooks = append(rep.Hooks, res)
				mu.Unlock()
				if err != nil {
					resumeErr = fmt.Errorf("%w: %w", ErrResumeFailed, err)
				}
			}
			if pending != nil {
				if err := pending.remove(); err != nil {
					mu.Lock()
					rep.Warnings = append(rep.Warnings, err.Error())
					mu.Unlock()
				}
			}
			if hooked {
				mu.Lock()
				rep.Downtime = time.Since(start)
				rep.DowntimeSeconds = rep.Downtime.Seconds()
				mu.Unlock()
			}
		})
		return resumeErr
	}
	// Whatever happens below, including a panic in capture, resume once.
	defer func() {
		if rerr := resume(); rerr != nil {
			mu.Lock()
			rep.Warnings = append(rep.Warnings, rerr.Error())
			mu.Unlock()
			if !errors.Is(err, ErrResumeFailed) {
				err = errors.Join(err, rerr)
			}
		}
	}()

	if opts.Quiesce != "" {
		res, qerr := RunHook(ctx, opts.hook(PhaseQuiesce, opts.Quiesce), opts.Log)
		rep.Hooks = append(rep.Hooks, res)
		if qerr != nil {
			return rep, fmt.Errorf("%w: %w", ErrQuiesceFailed, qerr)
		}
	}

	if opts.Freeze != FreezeSnapshot {
		// What the service holds still is what is there now: the stop may
		// have removed files (a lock or pid file) or written new ones (a
		// shutdown checkpoint's WAL segment), which must be captured in the
		// window, not read live afterwards. (A snapshot captures its whole
		// volume, new files included.)
		now, err := QuiescedFiles(opts.Paths, opts.QuiescePaths, opts.Excludes)
		if err != nil {
			return rep, err
		}
		if stg != nil {
			now = outside(now, opts.Staging)
		}
		if added, gone := changedLists(files, now); added+gone > 0 {
			fmt.Fprintf(opts.Log, "stasis: the quiesce hook changed the files to hold still: %d new, %d gone\n", added, gone)
		}
		files = now
		rep.QuiescedFiles = len(files)
	}

	holders, oerr := OpenWriters(ctx, files)
	if oerr != nil {
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("open-file check: %v", oerr))
	}
	if len(holders) > 0 {
		rep.OpenWriters = holders
		for _, h := range holders {
			rep.Warnings = append(rep.Warnings, h.String()+" after quiesce: the service was not stopped from writing it")
		}
		if opts.OnOpen == OnOpenFail {
			return rep, fmt.Errorf("%w: %s (and %d more); make the quiesce hook stop the writer, or use --on-open warn",
				ErrOpenWriters, holders[0], len(holders)-1)
		}
	}

	snapshot := func() Report {
		mu.Lock()
		defer mu.Unlock()
		r := rep
		r.Hooks = append([]HookResult{}, rep.Hooks...)
		r.OpenWriters = append([]Holder{}, rep.OpenWriters...)
		r.Warnings = append([]string{}, rep.Warnings...)
		return r
	}
	if opts.Freeze == FreezeStop {
		fmt.Fprintf(opts.Log, "stasis: quiesced; capturing %d files (stop)\n", len(files))
		stage := &Stage{Freeze: FreezeStop, Files: files, resume: resume, report: snapshot}
		if cerr := capture(ctx, stage); cerr != nil {
			return rep, cerr
		}
		rerr := resume()
		return rep, rerr
	}

	if opts.Freeze == FreezeSnapshot {
		var roots map[string]string
		if snaps != nil {
			sr := snaps.report()
			fmt.Fprintf(opts.Log, "stasis: snapshotting %s (%s; %d quiesced files)\n", strings.Join(sr.Volumes, ", "), sr.Backend, len(files))
			took, err := snaps.create(ctx)
			sr.CreateSeconds = took.Seconds()
			mu.Lock()
			rep.Snapshot = sr
			mu.Unlock()
			if err != nil {
				return rep, err
			}
			roots = snaps.roots()
		}
		rerr := resume()
		if cerr := capture(ctx, &Stage{Freeze: FreezeSnapshot, Files: files, Excludes: excludes, roots: roots, report: snapshot}); cerr != nil {
			return rep, errors.Join(cerr, rerr)
		}
		return rep, rerr
	}

	var dir string
	mode := opts.Freeze
	if stg != nil {
		dir, mode = stg.dir, stg.mode
	}
	fmt.Fprintf(opts.Log, "stasis: staging %d quiesced files in %s (%s)\n", len(files), dir, mode)
	staged, used, warns, err := stageFiles(ctx, files, dir, mode)
	mu.Lock()
	rep.Freeze = used
	rep.Warnings = append(rep.Warnings, warns...)
	mu.Unlock()
	if err != nil {
		return rep, err
	}
	rerr := resume()
	if cerr := capture(ctx, &Stage{Freeze: used, Files: files, StagingDir: opts.Staging, Excludes: excludes, staged: staged, report: snapshot}); cerr != nil {
		return rep, errors.Join(cerr, rerr)
	}
	return rep, rerr
}

func (o Options) hook(p Phase, cmd string) Hook {
	return Hook{Phase: p, Command: cmd, Timeout: o.HookTimeout, Grace: o.KillGrace,
		Repo: o.Repository, Paths: o.Paths}
}

// syncFilesystems writes back every filesystem holding one of files
// (syncfs, once per filesystem) and returns a warning for each that failed.
func syncFilesystems(files []string) []string {
	var warnings []string
	done := map[uint64]bool{}
	for _, f := range files {
		dir := filepath.Dir(f)
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil || done[st.Dev] {
			continue
		}
		done[st.Dev] = true
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err == nil {
			err = unix.Syncfs(fd)
			unix.Close(fd)
		}
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("sync the filesystem of %s before the quiesce: %v (the downtime may be longer)", dir, err))
		}
	}
	return warnings
}

// changedLists counts the entries of the sorted list now that are not in
// the sorted list before, and those of before that are not in now.
func changedLists(before, now []string) (added, gone int) {
	i, j := 0, 0
	for i < len(before) || j < len(now) {
		switch {
		case j == len(now) || (i < len(before) && before[i] < now[j]):
			gone++
			i++
		case i == len(before) || now[j] < before[i]:
			added++
			j++
		default:
			i++
			j++
		}
	}
	return added, gone
}

// outside returns the files that are not in a run's directory under the
// staging directory dir (a dead run's copies, or a live one's).
func outside(files []string, dir string) []string {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return files
	}
	out := files[:0:0]
	for _, f := range files {
		if abs, err := filepath.Abs(f); err != nil || !strings.HasPrefix(abs, filepath.Join(dir, stagePrefix)) {
			out = append(out, f)
		}
	}
	return out
}

// GlobQuote returns a glob (filepath.Match) that matches exactly p.
func GlobQuote(p string) string {
	var b strings.Builder
	for _, r := range p {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
