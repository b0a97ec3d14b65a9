package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/cmd/stasis/internal/profile"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/quiesce"
	"github.com/stasisbackup/stasis/internal/exclude"
	"github.com/stasisbackup/stasis/repo"
)

// quiesceFlags are the flags of `stasis backup` that hold a live service
// still while its files are captured (docs/quiesce.md), and --profile.
type quiesceFlags struct {
	profile     string
	quiesce     string
	resume      string
	hookTimeout time.Duration
	paths       []string // --quiesce-path globs
	freeze      string
	staging     string
	onOpen      string
	backend     string // --snapshot-backend
	// commands: another command that --hook-timeout bounds runs
	// (--stdin-from-command, --notify-command; set by backup).
	commands bool
}

func addQuiesceFlags(c *cobra.Command, q *quiesceFlags) {
	f := c.Flags()
	f.StringVar(&q.profile, "profile", "", "read repository, paths and quiesce settings from a TOML profile; flags given as well win")
	f.StringVar(&q.quiesce, "quiesce", "", "shell command that stops the service from writing, run before capture")
	f.StringVar(&q.resume, "resume", "", "shell command that lets the service run again; always runs once --quiesce started")
	f.DurationVar(&q.hookTimeout, "hook-timeout", 0, "kill a hook (its process group) that runs longer than this (default 5m)")
	f.StringArrayVar(&q.paths, "quiesce-path", nil, "only files matching GLOB are held still; base name, or absolute path when GLOB has a slash (repeatable; default all files)")
	f.StringVar(&q.freeze, "freeze", "", "how quiesced files are held still: stop, copy, reflink or snapshot (default stop)")
	f.StringVar(&q.backend, "snapshot-backend", "", "with --freeze snapshot: the snapshot backend, "+strings.Join(quiesce.SnapshotBackends(), " or ")+" (default: detected from the quiesced files' filesystem)")
	f.StringVar(&q.staging, "staging", "", "directory for the copies of copy and reflink modes, created when missing (default a private .stasis-staging directory on the data's filesystem, beside the backup path)")
	f.StringVar(&q.onOpen, "on-open", "", "when a quiesced file is still open for writing after --quiesce: warn or fail (default warn)")
}

// applyProfile loads --profile, when given, and fills in every value that was
// not set on the command line. It returns the paths to back up.
func (a *app) applyProfile(c *cobra.Command, q *quiesceFlags, opts *engine.BackupOptions, dbGlobs *[]string, args []string) ([]string, error) {
	if q.profile == "" {
		return args, nil
	}
	p, err := profile.Load(q.profile)
	if err != nil {
		return nil, usageError{fmt.Errorf("%w (fix the profile)", err)}
	}
	set := c.Flags().Changed
	if !set("repo") {
		a.repoDir = p.Repository // the profile is more specific than $STASIS_REPO
	}
	if len(args) == 0 {
		args = p.Paths
	}
	str := func(flag string, dst *string, v string) {
		if !set(flag) && v != "" {
			*dst = v
		}
	}
	list := func(flag string, dst *[]string, v []string) {
		if !set(flag) && len(v) > 0 {
			*dst = v
		}
	}
	str("host", &opts.Host, p.Host)
	list("tag", &opts.Tags, p.Tags)
	list("exclude", &opts.Excludes, p.Excludes)
	list("db-glob", dbGlobs, p.DBGlob)
	str("quiesce", &q.quiesce, p.Quiesce)
	str("resume", &q.resume, p.Resume)
	str("freeze", &q.freeze, p.Freeze)
	str("staging", &q.staging, p.Staging)
	str("on-open", &q.onOpen, p.OnOpen)
	str("snapshot-backend", &q.backend, p.SnapshotBackend)
	list("quiesce-path", &q.paths, p.QuiescePaths)
	if !set("hook-timeout") && p.HookTimeout.Duration > 0 {
		q.hookTimeout = p.HookTimeout.Duration
	}
	if !set("retries") && p.Retries != nil {
		opts.Retries = *p.Retries
	}
	return args, nil
}

// validate returns a usage error for flag combinations that cannot work.
func (q *quiesceFlags) validate() error {
	if q.resume != "" && q.quiesce == "" {
		return usagef("backup: --resume needs --quiesce (resume runs only after a quiesce command)")
	}
	if q.quiesce == "" {
		for flag, set := range map[string]bool{"freeze": q.freeze != "", "staging": q.staging != "",
			"on-open": q.onOpen != "", "quiesce-path": len(q.paths) > 0, "hook-timeout": q.hookTimeout != 0 && !q.commands,
			"snapshot-backend": q.backend != ""} {
			if set {
				if flag == "hook-timeout" {
					return usagef("backup: --hook-timeout only applies with --quiesce CMD, --stdin-from-command or --notify-command")
				}
				return usagef("backup: --%s only applies with --quiesce CMD", flag)
			}
		}
		return nil
	}
	freeze, err := quiesce.ParseFreeze(q.freeze)
	if err != nil {
		return usagef("backup: --freeze %q: want stop, copy, reflink or snapshot", q.freeze)
	}
	if q.staging != "" && (freeze == quiesce.FreezeStop || freeze == quiesce.FreezeSnapshot) {
		if freeze == quiesce.FreezeSnapshot {
			return usagef("backup: --staging only applies with --freeze copy or reflink (snapshot mode stages nothing)")
		}
		return usagef("backup: --staging only applies with --freeze copy or reflink")
	}
	if q.backend != "" {
		if freeze != quiesce.FreezeSnapshot {
			return usagef("backup: --snapshot-backend only applies with --freeze snapshot")
		}
		if !slices.Contains(quiesce.SnapshotBackends(), q.backend) {
			return usagef("backup: --snapshot-backend %q: want %s", q.backend, strings.Join(quiesce.SnapshotBackends(), " or "))
		}
	}
	if _, err := quiesce.ParseOnOpen(q.onOpen); err != nil {
		return usagef("backup: --on-open %q: want warn or fail", q.onOpen)
	}
	if q.hookTimeout < 0 {
		return usagef("backup: --hook-timeout %s is negative", q.hookTimeout)
	}
	for _, g := range q.paths {
		if _, err := filepath.Match(g, ""); err != nil {
			return usagef("backup: --quiesce-path %q: %v", g, err)
		}
	}
	return nil
}

// quiescedBackup runs engine.QuiescedBackup with the quiesce settings of
// the command line (see there for what each freeze mode does).
func (a *app) quiescedBackup(ctx context.Context, r *repo.Repository, q *quiesceFlags, opts engine.BackupOptions) (quiesce.Report, *repo.Snapshot, error) {
	qopts := quiesce.Options{Repository: a.repoDir, QuiescePaths: q.paths,
		Quiesce: q.quiesce, Resume: q.resume, HookTimeout: q.hookTimeout, Freeze: quiesce.Freeze(q.freeze),
		Staging: q.staging, SnapshotBackend: q.backend, StateDir: quiesce.DefaultStateDir(), OnOpen: quiesce.OnOpen(q.onOpen), Log: a.stderr}
	rep, sn, err := engine.QuiescedBackup(ctx, r, qopts, opts)
	if errors.Is(err, exclude.ErrBadGlob) {
		err = usageError{err}
	}
	return rep, sn, err
}

// printQuiesce writes the one-line summary of what quiescing did, then every
// warning on stderr.
func (a *app) printQuiesce(rep quiesce.Report) {
	for _, w := range rep.Warnings {
		fmt.Fprintf(a.stderr, "warning: %s\n", w)
	}
	if a.json {
		return
	}
	hooks := "hooks ok"
	for _, h := range rep.Hooks {
		if !h.OK() {
			hooks = "a hook failed"
		}
	}
	if len(rep.Hooks) == 0 {
		hooks = "no hooks ran"
	}
	mode := string(rep.Freeze)
	if rep.Freeze != rep.FreezeRequested {
		mode += " (instead of " + string(rep.FreezeRequested) + ")"
	}
	snap := ""
	if s := rep.Snapshot; s != nil {
		snap = fmt.Sprintf(" (%s snapshot of %d %s: %s)", s.Backend, len(s.Volumes), plural(len(s.Volumes), "volume"),
			humanDuration(time.Duration(s.CreateSeconds*float64(time.Second))))
	}
	fmt.Fprintf(a.stdout, "quiesce: %s, %d files held still, downtime %s%s, %s, %d %s\n", mode, rep.QuiescedFiles,
		humanDuration(rep.Downtime), snap, hooks, len(rep.Warnings), plural(len(rep.Warnings), "warning"))
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return strings.TrimSuffix(word, "s") + "s"
}
