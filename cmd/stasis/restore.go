package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
)

func (a *app) restoreCommand() *cobra.Command {
	var (
		at   string
		opts engine.RestoreOptions
		filt repo.SnapshotFilter
	)
	c := &cobra.Command{
		Use:   "restore (ID|latest|--at TIME) --target DIR [--include PATH]...",
		Short: "Restore a snapshot, whole or in part, verifying every chunk",
		Long: `Restore a snapshot below --target. Backed-up paths are recreated with their
full path: backing up /srv/zoomserv and restoring to /r gives /r/srv/zoomserv.
--at picks the newest snapshot taken at or before TIME (RFC 3339, or
"YYYY-MM-DD HH:MM[:SS]" in local time). --host, --tag and --path narrow the
snapshots latest and --at choose from. --include PATH restores only PATH
(the path as backed up) and what is below it.`,
		Args: func(c *cobra.Command, args []string) error {
			if (len(args) == 1) == (at != "") || len(args) > 1 {
				return usagef("restore: give exactly one of a snapshot ID, \"latest\" or --at TIME")
			}
			if opts.Target == "" {
				return usagef("restore: --target DIR is required")
			}
			return nil
		},
		RunE: a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			ctx := c.Context()
			sn, err := a.pickSnapshot(ctx, r, args, at, filt)
			if err != nil {
				return err
			}
			start := time.Now()
			prog := a.startProgress("restore", "files", a.stdout) // progress.go
			opts.Progress = prog.Counts()
			res, err := engine.Restore(ctx, r, sn, opts)
			prog.done()
			if res == nil {
				return err
			}
			if a.json {
				writeJSONLine(a.stdout, map[string]any{"message_type": "summary", "snapshot_id": sn.ID.String(), "target": opts.Target,
					"files": res.Files, "dirs": res.Dirs, "others": res.Others, "bytes": res.Bytes,
					"duration_seconds": time.Since(start).Seconds(), "problems": res.Problems})
			} else {
				fmt.Fprintf(a.stdout, "restored snapshot %s (%s) to %s: %d files, %d dirs, %d other entries, %s in %s\n",
					sn.ID.Short(), sn.Time.Local().Format("2006-01-02 15:04:05"), opts.Target, res.Files, res.Dirs, res.Others,
					humanBytes(res.Bytes), humanDuration(time.Since(start)))
			}
			if err != nil {
				printProblems(a.stderr, "entries were not restored cleanly", res.Problems)
				return exitError{exitFatal, err}
			}
			return nil
		}),
	}
	f := c.Flags()
	f.StringVar(&at, "at", "", "restore the newest snapshot at or before TIME")
	addFilterFlags(f, &filt)
	f.StringVarP(&opts.Target, "target", "t", "", "directory to restore into")
	f.StringArrayVarP(&opts.Includes, "include", "i", nil, "restore only this snapshot path and below (repeatable)")
	f.BoolVar(&opts.Overwrite, "overwrite", false, "allow a non-empty target and replace files in it")
	return c
}

// pickSnapshot resolves an ID, "latest" or --at TIME; filt narrows latest
// and --at.
func (a *app) pickSnapshot(ctx context.Context, r *repo.Repository, args []string, at string, filt repo.SnapshotFilter) (*repo.Snapshot, error) {
	if at == "" {
		return r.FindSnapshot(ctx, args[0], filt)
	}
	t, err := parseTime(at)
	if err != nil {
		return nil, usageError{err}
	}
	list, _, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	return engine.SnapshotAt(repo.FilterSnapshots(list, filt), t)
}

// findSnapshots resolves refs (ids, short ids, "latest" narrowed by filt)
// in r and returns each snapshot once, in the order of refs.
func findSnapshots(ctx context.Context, r *repo.Repository, refs []string, filt repo.SnapshotFilter) ([]*repo.Snapshot, error) {
	var out []*repo.Snapshot
	seen := map[string]bool{}
	for _, ref := range refs {
		sn, err := r.FindSnapshot(ctx, ref, filt)
		if err != nil {
			return nil, err
		}
		if !seen[sn.ID.String()] {
			seen[sn.ID.String()] = true
			out = append(out, sn)
		}
	}
	return out, nil
}

// parseTime accepts RFC 3339 or "YYYY-MM-DD HH:MM[:SS]" (and a bare date) in local time.
func parseTime(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			if layout == "2006-01-02" {
				t = t.Add(24*time.Hour - time.Nanosecond) // the whole day
			}
			return t, nil
		}
	}
	return time.Time{}, errors.New("--at " + fmt.Sprintf("%q", s) + ": use RFC 3339 (2026-11-20T03:00:00+01:00) or \"YYYY-MM-DD HH:MM[:SS]\" in local time")
}
