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
)

// Run quiesces, lets capture read the files, and resumes; see the package
// comment for the modes and the exactly-once resume guarantee. capture is
// called at most once, on the calling goroutine, with ctx; it is not called
// when quiescing, staging or the open-writer check failed. Run returns the
// Report in every case, and an error wrapping ErrQuiesceFailed,
// ErrOpenWriters, ErrResumeFailed, ctx.Err() or capture's error (joined with
// errors.Join when there are several).
func Run(ctx context.Context, opts Options, capture func(ctx context.Context, s *Stage) error) (Report, error) {
	w, err := newRun(opts)
	if err == nil {
		err = w.run(ctx, capture)
	}
	return w.rep, err // every deferred step of w.run has run
}

// window is one Run: the options, what was prepared before the service is
// stopped, and the Report. mu guards rep once the window is open (Stage's
// Resume and Report may run on capture's goroutines).
type window struct {
	opts     Options
	files    []string     // the quiesced files
	stg      *staging     // copy, reflink
	snaps    *snapshotRun // snapshot
	excludes []string     // for Stage.Excludes
	pending  *pendingFile

	mu        sync.Mutex
	rep       Report
	hooked    bool
	start     time.Time
	once      sync.Once
	resumeErr error
}

// newRun checks opts and fills in the defaults.
func newRun(opts Options) (*window, error) {
	freeze, ferr := ParseFreeze(string(opts.Freeze))
	onOpen, oerr := ParseOnOpen(string(opts.OnOpen))
	opts.Freeze, opts.OnOpen = freeze, onOpen
	w := &window{opts: opts, hooked: opts.Quiesce != "" || opts.Resume != "",
		rep: Report{FreezeRequested: opts.Freeze, Freeze: opts.Freeze,
			Hooks: []HookResult{}, OpenWriters: []Holder{}, Warnings: []string{}}}
	if err := errors.Join(ferr, oerr); err != nil {
		return w, err
	}
	if opts.SnapshotBackend != "" && opts.Freeze != FreezeSnapshot {
		return w, fmt.Errorf("snapshot backend %q only applies to freeze snapshot", opts.SnapshotBackend)
	}
	if w.opts.Log == nil {
		w.opts.Log = io.Discard
	}
	return w, nil
}

// run is Run after the options were checked: prepare, quiesce, capture as
// the freeze mode says, resume; the deferred steps remove what was prepared.
func (w *window) run(ctx context.Context, capture func(ctx context.Context, s *Stage) error) (err error) {
	// Listed now for what must be prepared before the service is stopped
	// (staging room, snapshot volumes), and again once it is quiesced.
	if w.files, err = QuiescedFiles(w.opts.Paths, w.opts.QuiescePaths, w.opts.Excludes); err != nil {
		return err
	}
	defer w.removePrepared(ctx)
	if err := w.prepare(ctx); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		if w.pending != nil {
			w.pending.remove()
		}
		return err
	}
	w.syncBeforeWindow()

	w.start = time.Now()
	// Whatever happens below, including a panic in capture, resume once.
	defer func() {
		if rerr := w.resume(ctx); rerr != nil {
			w.warn(rerr.Error())
			if !errors.Is(err, ErrResumeFailed) {
				err = errors.Join(err, rerr)
			}
		}
	}()
	if err := w.quiesce(ctx); err != nil {
		return err
	}
	switch w.opts.Freeze {
	case FreezeStop:
		return w.captureStop(ctx, capture)
	case FreezeSnapshot:
		return w.captureSnapshot(ctx, capture)
	}
	return w.captureStaged(ctx, capture)
}

// prepare makes everything that can fail early fail before the service is
// stopped: the snapshot directories (snapshot), the staging directory
// (copy, reflink: created, checked for room, leftovers of dead runs
// removed), and the pending-resume record.
func (w *window) prepare(ctx context.Context) error {
	o := &w.opts
	if o.Freeze == FreezeSnapshot && len(w.files) > 0 {
		w.files = snapshotFiles(w.files) // never back up a snapshot's files as data
		snaps, warns, err := prepareSnapshots(ctx, o.SnapshotBackend, o.Paths, w.files, o.Log)
		w.rep.Warnings = append(w.rep.Warnings, warns...)
		if err != nil {
			return err
		}
		w.snaps, w.excludes = snaps, snaps.excludes()
	}
	if o.Freeze != FreezeStop && o.Freeze != FreezeSnapshot && len(w.files) > 0 {
		if err := w.prepareStaging(); err != nil {
			return err
		}
	}
	w.rep.QuiescedFiles = len(w.files)
	return w.writePending()
}

// prepareStaging chooses and prepares the staging directory of copy and
// reflink modes.
func (w *window) prepareStaging() (err error) {
	o := &w.opts
	parent := o.Staging
	if parent == "" {
		if parent, err = DefaultStaging(o.Paths, w.files); err != nil {
			return err
		}
	}
	if parent, err = filepath.Abs(parent); err != nil {
		return fmt.Errorf("staging directory: %w", err)
	}
	w.files = outside(w.files, parent) // never stage a dead run's copies
	private := o.Staging == ""
	w.excludes = []string{GlobQuote(filepath.Join(parent, stagePrefix)) + "*"}
	if private {
		w.excludes = append(w.excludes, GlobQuote(parent)) // all ours
	}
	o.Staging = parent
	stg, warns, err := prepareStaging(parent, private, o.Freeze, w.files, o.Log)
	w.rep.Warnings = append(w.rep.Warnings, warns...)
	if err != nil {
		return err
	}
	w.stg = stg
	return nil
}

// writePending records the resume command (see ResumePending), after
// warning about the records of runs that died.
func (w *window) writePending() (err error) {
	o := &w.opts
	if o.StateDir == "" || o.Resume == "" {
		return nil
	}
	if dead, _ := DeadPending(o.StateDir); len(dead) > 0 {
		for _, d := range dead {
			w.rep.Warnings = append(w.rep.Warnings, fmt.Sprintf("a backup (pid %d, started %s) died in its quiesced window and its resume hook %q never ran: check that service, and run `stasis resume-pending`",
				d.PID, d.Started.Local().Format("2006-01-02 15:04:05"), d.Resume))
		}
	}
	host, _ := os.Hostname()
	timeout := o.HookTimeout
	if timeout <= 0 {
		timeout = DefaultHookTimeout
	}
	w.pending, err = writePending(o.StateDir, Pending{PID: os.Getpid(), Host: host, BootID: bootID(), Started: time.Now(),
		Repository: o.Repository, Paths: o.Paths, Resume: o.Resume, HookTimeoutSeconds: timeout.Seconds()})
	return err
}

// removePrepared removes the snapshots and the staging directory, also
// after an error, a panic in capture, Ctrl-C or SIGTERM.
func (w *window) removePrepared(ctx context.Context) {
	if w.stg != nil {
		if err := w.stg.remove(); err != nil {
			w.warn(fmt.Sprintf("remove staging directory: %v", err))
		}
	}
	if w.snaps != nil {
		if err := w.snaps.remove(context.WithoutCancel(ctx)); err != nil {
			w.warn(fmt.Sprintf("remove snapshot: %v", err))
		}
	}
}

// syncBeforeWindow writes back the filesystems of the quiesced files in
// reflink and snapshot modes. A snapshot commits the filesystem's
// transaction and a clone writes the file's dirty pages back first:
// whatever the running service left dirty would be written inside the
// window. Written now, the window holds only what the quiesce hook wrote.
func (w *window) syncBeforeWindow() {
	if w.opts.Freeze == FreezeSnapshot || w.opts.Freeze == FreezeReflink {
		w.rep.Warnings = append(w.rep.Warnings, syncFilesystems(w.files)...)
	}
}

// quiesce runs the quiesce hook, lists the files to hold still again, and
// checks them for open writers.
func (w *window) quiesce(ctx context.Context) error {
	o := &w.opts
	if o.Quiesce != "" {
		res, err := RunHook(ctx, o.hook(PhaseQuiesce, o.Quiesce), o.Log)
		w.addHook(res)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrQuiesceFailed, err)
		}
	}
	if o.Freeze != FreezeSnapshot {
		// What the service holds still is what is there now: the stop may
		// have removed files (a lock or pid file) or written new ones (a
		// shutdown checkpoint's WAL segment), which must be captured in the
		// window, not read live afterwards. (A snapshot captures its whole
		// volume, new files included.)
		now, err := QuiescedFiles(o.Paths, o.QuiescePaths, o.Excludes)
		if err != nil {
			return err
		}
		if w.stg != nil {
			now = outside(now, o.Staging)
		}
		if added, gone := changedLists(w.files, now); added+gone > 0 {
			fmt.Fprintf(o.Log, "stasis: the quiesce hook changed the files to hold still: %d new, %d gone\n", added, gone)
		}
		w.files = now
		w.mu.Lock()
		w.rep.QuiescedFiles = len(now)
		w.mu.Unlock()
	}
	return w.checkWriters(ctx)
}

// checkWriters reports the processes that still hold a quiesced file open
// for writing, and fails with on-open fail.
func (w *window) checkWriters(ctx context.Context) error {
	holders, err := OpenWriters(ctx, w.files)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w.warn(fmt.Sprintf("open-file check: %v", err))
	}
	if len(holders) == 0 {
		return nil
	}
	w.mu.Lock()
	w.rep.OpenWriters = holders
	w.mu.Unlock()
	for _, h := range holders {
		w.warn(h.String() + " after quiesce: the service was not stopped from writing it")
	}
	if w.opts.OnOpen == OnOpenFail {
		return fmt.Errorf("%w: %s (and %d more); make the quiesce hook stop the writer, or use --on-open warn",
			ErrOpenWriters, holders[0], len(holders)-1)
	}
	return nil
}

// resume runs the resume hook once (later calls return the first call's
// error), removes the pending-resume record and sets the downtime.
func (w *window) resume(ctx context.Context) error {
	w.once.Do(func() {
		o := &w.opts
		if o.Resume != "" {
			res, err := RunHook(context.WithoutCancel(ctx), o.hook(PhaseResume, o.Resume), o.Log)
			w.addHook(res)
			if err != nil {
				w.resumeErr = fmt.Errorf("%w: %w", ErrResumeFailed, err)
			}
		}
		if w.pending != nil {
			if err := w.pending.remove(); err != nil {
				w.warn(err.Error())
			}
		}
		if w.hooked {
			w.mu.Lock()
			w.rep.Downtime = time.Since(w.start)
			w.rep.DowntimeSeconds = w.rep.Downtime.Seconds()
			w.mu.Unlock()
		}
	})
	return w.resumeErr
}

// captureStop lets capture read the files in place; capture resumes early
// through Stage.Resume once it has read them.
func (w *window) captureStop(ctx context.Context, capture func(ctx context.Context, s *Stage) error) error {
	fmt.Fprintf(w.opts.Log, "stasis: quiesced; capturing %d files (stop)\n", len(w.files))
	stage := &Stage{Freeze: FreezeStop, Files: w.files, globs: w.opts.QuiescePaths, resume: func() error { return w.resume(ctx) }, report: w.report}
	if err := capture(ctx, stage); err != nil {
		return err
	}
	return w.resume(ctx)
}

// captureSnapshot snapshots the volumes, resumes, and lets capture read
// the snapshots.
func (w *window) captureSnapshot(ctx context.Context, capture func(ctx context.Context, s *Stage) error) error {
	var roots map[string]string
	if w.snaps != nil {
		sr := w.snaps.report()
		fmt.Fprintf(w.opts.Log, "stasis: snapshotting %s (%s; %d quiesced files)\n", strings.Join(sr.Volumes, ", "), sr.Backend, len(w.files))
		took, err := w.snaps.create(ctx)
		sr.CreateSeconds = took.Seconds()
		w.mu.Lock()
		w.rep.Snapshot = sr
		w.mu.Unlock()
		if err != nil {
			return err
		}
		roots = w.snaps.roots()
	}
	rerr := w.resume(ctx)
	if err := capture(ctx, &Stage{Freeze: FreezeSnapshot, Files: w.files, Excludes: w.excludes, roots: roots, report: w.report}); err != nil {
		return errors.Join(err, rerr)
	}
	return rerr
}

// captureStaged copies or clones the files into the staging directory,
// resumes, and lets capture read the copies.
func (w *window) captureStaged(ctx context.Context, capture func(ctx context.Context, s *Stage) error) error {
	var dir string
	mode := w.opts.Freeze
	if w.stg != nil {
		dir, mode = w.stg.dir, w.stg.mode
	}
	fmt.Fprintf(w.opts.Log, "stasis: staging %d quiesced files in %s (%s)\n", len(w.files), dir, mode)
	staged, used, warns, err := stageFiles(ctx, w.files, dir, mode)
	w.mu.Lock()
	w.rep.Freeze = used
	w.rep.Warnings = append(w.rep.Warnings, warns...)
	w.mu.Unlock()
	if err != nil {
		return err
	}
	rerr := w.resume(ctx)
	if err := capture(ctx, &Stage{Freeze: used, Files: w.files, StagingDir: w.opts.Staging, Excludes: w.excludes, staged: staged, globs: w.opts.QuiescePaths, report: w.report}); err != nil {
		return errors.Join(err, rerr)
	}
	return rerr
}

func (w *window) addHook(res HookResult) {
	w.mu.Lock()
	w.rep.Hooks = append(w.rep.Hooks, res)
	w.mu.Unlock()
}

func (w *window) warn(msg string) {
	w.mu.Lock()
	w.rep.Warnings = append(w.rep.Warnings, msg)
	w.mu.Unlock()
}

// report returns a copy of the Report so far (Stage.Report).
func (w *window) report() Report {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.rep
	r.Hooks = append([]HookResult{}, w.rep.Hooks...)
	r.OpenWriters = append([]Holder{}, w.rep.OpenWriters...)
	r.Warnings = append([]string{}, w.rep.Warnings...)
	return r
}
