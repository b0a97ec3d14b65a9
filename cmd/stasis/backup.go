package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/quiesce"
	"github.com/stasisbackup/stasis/repo"
)

func (a *app) backupCommand() *cobra.Command {
	var (
		create  bool
		opts    engine.BackupOptions
		dbGlobs []string
		q       quiesceFlags
		st      stdinFlags // stdin.go
		rec     backupRun  // metrics.go: --metrics-file, --notify-command
	)
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
			if len(args) == 0 && q.profile == "" && !st.any() {
				return usagef("backup: give at least one PATH to back up, or --profile FILE")
			}
			return nil
		},
		RunE: a.reportBackup(&rec, func(c *cobra.Command, args []string) error {
			ctx := c.Context()
			args, err := st.split(c, args)
			if err != nil {
				return err
			}
			args, err = a.applyProfile(c, &q, &opts, &dbGlobs, args)
			if err != nil {
				return err
			}
			if err := applyStdinProfile(c, q.profile, &st, &rec); err != nil {
				return err
			}
			rec.profile, rec.timeout = profileName(q.profile), q.hookTimeout
			q.commands = st.fromCommand || rec.notifyCommand != ""
			if err := q.validate(); err != nil {
				return err
			}
			if err := st.validate(a, &q, args); err != nil {
				return err
			}
			dir, err := a.needRepo()
			if err != nil {
				return err
			}
			if create {
				st, err := a.storage(ctx)
				if err != nil {
					return err
				}
				if ok, err := repo.ObjectExists(ctx, st, "config"); err != nil {
					return err
				} else if !ok {
					r, err := a.initRepo(ctx, dbGlobs)
					if err != nil {
						return err
					}
					r.Close()
					if !a.json {
						fmt.Fprintf(a.stdout, "created stasis repository %s at %s\n", r.Config().ID[:8], dir)
					}
				}
			}
			r, err := a.openRepo(ctx)
			if err != nil {
				return err
			}
			defer r.Close()
			if dbGlobs != nil {
				opts.DBGlobs = dbGlobs
			}
			if opts.Retries == 0 {
				opts.Retries = -1 // --retries 0: no re-reads (the engine's 0 means its default)
			}
			if opts.Host == "" {
				opts.Host, _ = os.Hostname()
			}
			opts.Paths = args
			rec.host = opts.Host
			var stopStdin func()
			opts.Stdin, stopStdin = a.stdinFile(&st, q.hookTimeout)
			defer stopStdin()
			prog := a.startProgress("backup", "files", a.stdout) // progress.go
			if prog != nil {
				opts.Progress, opts.ProgressEvery = prog.backup, progressRedraw
			}
			var (
				sn  *repo.Snapshot
				rep quiesce.Report
			)
			if q.quiesce != "" {
				rep, sn, err = a.quiescedBackup(ctx, r, &q, opts)
			} else {
				sn, err = engine.Backup(ctx, r, opts)
			}
			prog.doneBackup(sn)
			if q.quiesce != "" {
				a.printQuiesce(rep)
				rec.rep = &rep
			}
			rec.sn = sn
			if sn == nil {
				return err
			}
			s := sn.Summary
			if a.json {
				writeJSONLine(a.stdout, summaryJSON(sn)) // notify.go
			} else {
				fmt.Fprintf(a.stdout, "snapshot %s saved\n", sn.ID.Short())
				fmt.Fprintf(a.stdout, "files:  %d new, %d changed, %d unchanged; %d dirs, %d other entries\n",
					s.FilesNew, s.FilesChanged, s.FilesUnchanged, s.Dirs, s.Others)
				fmt.Fprintf(a.stdout, "data:   %s read of %s; %s new, %s added to the repository after dedup and compression\n",
					humanBytes(s.BytesRead), humanBytes(s.TotalBytes), humanBytes(s.BytesAdded), humanBytes(s.StoredAdded))
				fmt.Fprintf(a.stdout, "time:   %s\n", humanDuration(time.Duration(s.Duration*float64(time.Second))))
			}
			if errors.Is(err, engine.ErrStdinEmpty) && !errors.Is(err, engine.ErrIncomplete) && !errors.Is(err, quiesce.ErrResumeFailed) {
				return a.stdinEmpty(sn, err) // stdin.go: exit 3
			}
			if errors.Is(err, quiesce.ErrResumeFailed) {
				printProblems(a.stderr, "files were not captured cleanly (the snapshot is incomplete)", s.Problems)
				return exitError{exitFatal, fmt.Errorf("snapshot %s saved, but: %w", sn.ID.Short(), err)}
			}
			if err != nil {
				printProblems(a.stderr, "files were not captured cleanly (the snapshot is incomplete)", s.Problems)
				return exitError{exitIncomplete, fmt.Errorf("snapshot %s is incomplete: %w", sn.ID.Short(), err)}
			}
			return nil
		}),
	}
	f := c.Flags()
	f.BoolVar(&create, "init", false, "create the repository first when it does not exist")
	f.StringVar(&opts.Host, "host", "", "host name recorded in the snapshot (default: this host's name)")
	f.StringArrayVar(&opts.Tags, "tag", nil, "tag the snapshot (repeatable)")
	f.StringArrayVar(&opts.Excludes, "exclude", nil, "exclude entries whose name or absolute path matches GLOB (repeatable)")
	f.StringSliceVar(&dbGlobs, "db-glob", nil, "base-name globs of files chunked with the small \"db\" profile (default: the repository's, *.db)")
	f.IntVar(&opts.Retries, "retries", 2, "re-reads of a file that changes while it is read")
	addQuiesceFlags(c, &q)
	addStdinFlags(c, &st)
	addReportFlags(c, &rec)
	return c
}
