package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/quiesce"
	"github.com/stasisbackup/stasis/repo"
)

// backupFlags are the flags of `stasis backup`.
type backupFlags struct {
	create  bool // --init
	opts    engine.BackupOptions
	dbGlobs []string
	q       quiesceFlags
	st      stdinFlags // stdin.go
	rec     backupRun  // metrics.go: --metrics-file, --notify-command
}

func (a *app) backupCommand() *cobra.Command {
	var b backupFlags
	c := &cobra.Command{
		Use:   "backup [flags] [PATH...] [--stdin-from-command -- CMD [ARG...]]",
		Short: "Take a snapshot of files and directories",
		Long: `Take a snapshot of PATHs. Files unchanged since the last snapshot of the same
host and paths are not read again. A file that cannot be read, or that keeps
changing while it is read, is listed and the exit code is 3; the snapshot is
still written and everything else in it is restorable.

A live service is held still with --quiesce CMD and --resume CMD (shell
commands; resume always runs once quiesce started, also on errors, Ctrl-C and
SIGTERM) and --freeze stop|copy|reflink|snapshot; see docs/quiesce.md. Hook output and
warnings go to stderr; the snapshot records what quiescing did (stasis
snapshots --json, "quiesce"). A hook failure, --on-open fail with a writer
still present, or a signal in the window exits 1 without a snapshot. A resume
hook failure after a snapshot was written also exits 1: check the service.

A service's own dump is stored as a file of the snapshot with
--stdin-filename NAME --stdin-from-command -- CMD [ARG...] (give stasis's
flags before the --; CMD runs without a shell, and --hook-timeout, default
5m, kills its process group): a command that exits non-zero, is killed or
times out makes no snapshot (exit 1, with its stderr tail); empty output is a
snapshot with a warning (exit 3). --stdin reads a pipe instead. PATHs may be
given as well: one snapshot. See docs/capture.md, also for --metrics-file
(Prometheus textfile) and --notify-command (JSON summary on stdin), which
report every run.

--profile FILE (TOML, docs/examples/zoomserv.toml) supplies the repository,
paths and these settings; flags given as well win, and the profile's
repository wins over $STASIS_REPO.`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) == 0 && b.q.profile == "" && !b.st.any() {
				return usagef("backup: give at least one PATH to back up, or --profile FILE")
			}
			return nil
		},
		RunE: a.reportBackup(&b.rec, func(c *cobra.Command, args []string) error {
			return a.runBackup(c, &b, args)
		}),
	}
	f := c.Flags()
	f.BoolVar(&b.create, "init", false, "create the repository first when it does not exist")
	f.StringVar(&b.opts.Host, "host", "", "host name recorded in the snapshot (default: this host's name)")
	f.StringArrayVar(&b.opts.Tags, "tag", nil, "tag the snapshot (repeatable)")
	f.StringArrayVar(&b.opts.Excludes, "exclude", nil, "exclude entries whose name or absolute path matches GLOB (repeatable)")
	f.StringSliceVar(&b.dbGlobs, "db-glob", nil, "base-name globs of files chunked with the small \"db\" profile (default: the repository's, *.db)")
	f.IntVar(&b.opts.Retries, "retries", 2, "re-reads of a file that changes while it is read")
	addQuiesceFlags(c, &b.q)
	addStdinFlags(c, &b.st)
	addReportFlags(c, &b.rec)
	return c
}

// runBackup is `stasis backup`: it settles the flags (profile, stdin
// command), creates the repository with --init, and backs up into it.
func (a *app) runBackup(c *cobra.Command, b *backupFlags, args []string) error {
	ctx := c.Context()
	args, err := a.settleBackupFlags(c, b, args)
	if err != nil {
		return err
	}
	dir, err := a.needRepo()
	if err != nil {
		return err
	}
	if b.create {
		if err := a.initMissingRepo(ctx, dir, b.dbGlobs); err != nil {
			return err
		}
	}
	return a.withRepo(ctx, func(r *repo.Repository) error { return a.backupInto(ctx, r, b, args) })
}

// settleBackupFlags splits off the stdin command, applies --profile and
// validates the result; it returns the PATHs to back up.
func (a *app) settleBackupFlags(c *cobra.Command, b *backupFlags, args []string) ([]string, error) {
	args, err := b.st.split(c, args)
	if err != nil {
		return nil, err
	}
	args, err = a.applyProfile(c, &b.q, &b.opts, &b.dbGlobs, args)
	if err != nil {
		return nil, err
	}
	if err := applyStdinProfile(c, b.q.profile, &b.st, &b.rec); err != nil {
		return nil, err
	}
	b.rec.profile, b.rec.timeout = profileName(b.q.profile), b.q.hookTimeout
	b.q.commands = b.st.fromCommand || b.rec.notifyCommand != ""
	if err := b.q.validate(); err != nil {
		return nil, err
	}
	if err := b.st.validate(a, &b.q, args); err != nil {
		return nil, err
	}
	return args, nil
}

// initMissingRepo creates the repository dir (backup --init) unless it
// exists.
func (a *app) initMissingRepo(ctx context.Context, dir string, dbGlobs []string) error {
	st, err := a.storage(ctx)
	if err != nil {
		return err
	}
	if ok, err := repo.ObjectExists(ctx, st, "config"); err != nil || ok {
		return err
	}
	r, err := a.initRepo(ctx, repo.InitOptions{DBGlobs: dbGlobs})
	if err != nil {
		return err
	}
	r.Close()
	if !a.json {
		fmt.Fprintf(a.stdout, "created stasis repository %s at %s\n", r.Config().ID[:8], dir)
	}
	return nil
}

// backupInto takes the snapshot of paths into r (quiesced with --quiesce),
// prints its summary and returns the error that sets the exit code.
func (a *app) backupInto(ctx context.Context, r *repo.Repository, b *backupFlags, paths []string) error {
	opts := b.opts
	if b.dbGlobs != nil {
		opts.DBGlobs = b.dbGlobs
	}
	if opts.Retries == 0 {
		opts.Retries = -1 // --retries 0: no re-reads (the engine's 0 means its default)
	}
	if opts.Host == "" {
		opts.Host, _ = os.Hostname()
	}
	opts.Paths = paths
	b.rec.host = opts.Host
	var stopStdin func()
	opts.Stdin, stopStdin = a.stdinFile(&b.st, b.q.hookTimeout)
	defer stopStdin()
	prog := a.startProgress("backup", "files", a.stdout) // progress.go
	if prog != nil {
		opts.Progress, opts.ProgressEvery = prog.backup, progressRedraw
	}
	var (
		sn  *repo.Snapshot
		rep quiesce.Report
		err error
	)
	if b.q.quiesce != "" {
		rep, sn, err = a.quiescedBackup(ctx, r, &b.q, opts)
	} else {
		sn, err = engine.Backup(ctx, r, opts)
	}
	prog.doneBackup(sn)
	if b.q.quiesce != "" {
		a.printQuiesce(rep)
		b.rec.rep = &rep
	}
	b.rec.sn = sn
	if sn == nil {
		return err
	}
	a.printBackupSummary(sn)
	return a.backupError(sn, err)
}

// printBackupSummary prints what the snapshot sn holds and added.
func (a *app) printBackupSummary(sn *repo.Snapshot) {
	if a.json {
		writeJSONLine(a.stdout, summaryJSON(sn)) // notify.go
		return
	}
	s := sn.Summary
	fmt.Fprintf(a.stdout, "snapshot %s saved\n", sn.ID.Short())
	fmt.Fprintf(a.stdout, "files:  %d new, %d changed, %d unchanged; %d dirs, %d other entries\n",
		s.FilesNew, s.FilesChanged, s.FilesUnchanged, s.Dirs, s.Others)
	fmt.Fprintf(a.stdout, "data:   %s read of %s; %s new, %s added to the repository after dedup and compression\n",
		humanBytes(s.BytesRead), humanBytes(s.TotalBytes), humanBytes(s.BytesAdded), humanBytes(s.StoredAdded))
	fmt.Fprintf(a.stdout, "time:   %s\n", humanDuration(time.Duration(s.Duration*float64(time.Second))))
}

// backupError turns the error of a backup that saved sn into the command's
// result: exit 3 for an empty stdin dump or an incomplete snapshot (its
// problems listed on stderr), exit 1 for a failed resume hook.
func (a *app) backupError(sn *repo.Snapshot, err error) error {
	problems := sn.Summary.Problems
	if errors.Is(err, engine.ErrStdinEmpty) && !errors.Is(err, engine.ErrIncomplete) && !errors.Is(err, quiesce.ErrResumeFailed) {
		return a.stdinEmpty(sn, err) // stdin.go: exit 3
	}
	if errors.Is(err, quiesce.ErrResumeFailed) {
		printProblems(a.stderr, "files were not captured cleanly (the snapshot is incomplete)", problems)
		return exitError{exitFatal, fmt.Errorf("snapshot %s saved, but: %w", sn.ID.Short(), err)}
	}
	if err != nil {
		printProblems(a.stderr, "files were not captured cleanly (the snapshot is incomplete)", problems)
		return exitError{exitIncomplete, fmt.Errorf("snapshot %s is incomplete: %w", sn.ID.Short(), err)}
	}
	return nil
}
