package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/retention"
	"github.com/stasisbackup/stasis/repo"
)

// forgetFlags are the flags of `stasis forget`.
type forgetFlags struct {
	o      engine.ForgetOptions
	within string // --keep-within, parsed into o.Policy.Within
	prune  bool
	popts  engine.PruneOptions // --max-unused of --prune
}

func (a *app) forgetCommand() *cobra.Command {
	var ff forgetFlags
	c := &cobra.Command{
		Use:   "forget --keep-* N... [--host H] [--dry-run] [--prune]",
		Short: "Remove snapshots that a retention policy does not keep",
		Long: `Decide for every snapshot whether a keep rule keeps it, print the decision
and its reasons, and remove the snapshots no rule keeps. Snapshots are thinned
per host and set of paths. A policy that would remove every snapshot of a
group is refused unless --allow-remove-all. forget removes snapshot files
only; --prune (or a later ` + "`stasis prune`" + `) gives the space back.
See docs/retention.md.`,
		Args: exactArgs(0, "no arguments"),
		RunE: a.exclusive(func(c *cobra.Command, args []string) error {
			if err := ff.parsePolicy(); err != nil {
				return err
			}
			return a.withRepo(c.Context(), func(r *repo.Repository) error { return a.runForget(c.Context(), r, &ff) })
		}),
	}
	f := c.Flags()
	f.IntVar(&ff.o.Policy.Last, "keep-last", 0, "keep the N newest snapshots")
	f.IntVar(&ff.o.Policy.Hourly, "keep-hourly", 0, "keep the newest snapshot of each of the last N hours (-1: all)")
	f.IntVar(&ff.o.Policy.Daily, "keep-daily", 0, "keep the newest snapshot of each of the last N days (-1: all)")
	f.IntVar(&ff.o.Policy.Weekly, "keep-weekly", 0, "keep the newest snapshot of each of the last N ISO weeks (-1: all)")
	f.IntVar(&ff.o.Policy.Monthly, "keep-monthly", 0, "keep the newest snapshot of each of the last N months (-1: all)")
	f.IntVar(&ff.o.Policy.Yearly, "keep-yearly", 0, "keep the newest snapshot of each of the last N years (-1: all)")
	f.StringVar(&ff.within, "keep-within", "", "keep every snapshot newer than DUR (e.g. 7d, 36h, 1y6d)")
	f.StringArrayVar(&ff.o.Policy.Tags, "keep-tag", nil, "keep every snapshot with tag T (repeatable)")
	f.StringVar(&ff.o.Host, "host", "", "only consider snapshots of host H")
	f.BoolVarP(&ff.o.DryRun, "dry-run", "n", false, "print the decisions, remove nothing")
	f.BoolVar(&ff.o.AllowRemoveAll, "allow-remove-all", false, "allow removing every snapshot of a group")
	f.BoolVar(&ff.prune, "prune", false, "run prune afterwards")
	f.Float64Var(&ff.popts.MaxUnused, "max-unused", 10, "with --prune: repack packs more than PCT percent unused")
	return c
}

// parsePolicy completes and checks the retention policy of the --keep-*
// flags (usage errors).
func (ff *forgetFlags) parsePolicy() error {
	if ff.within != "" {
		d, err := retention.ParseDuration(ff.within)
		if err != nil {
			return usagef("--keep-within: %v", err)
		}
		ff.o.Policy.Within = d
	}
	if ff.o.Policy.Empty() {
		return usagef("forget: give at least one --keep-* rule (e.g. --keep-daily 7)")
	}
	if err := ff.o.Policy.Validate(); err != nil {
		return usageError{err}
	}
	return nil
}

// runForget is `stasis forget` on r: it removes the snapshots the policy
// does not keep, prints the decisions (or with --json one document at the
// end, also after an error) and prunes with --prune.
func (a *app) runForget(ctx context.Context, r *repo.Repository, ff *forgetFlags) error {
	o := ff.o
	o.Now = time.Now()
	rep, err := engine.Forget(ctx, r, o)
	if rep == nil {
		return err
	}
	jsonOut := map[string]any{"policy": o.Policy.String(), "dry_run": o.DryRun,
		"decisions": rep.Decisions, "removed": len(rep.Removed)}
	if a.json {
		defer func() { writeJSON(a.stdout, jsonOut) }()
	} else {
		a.printForgetDecisions(rep.Decisions)
	}
	if err != nil {
		if errors.Is(err, retention.ErrRemovesAll) {
			return usageError{err}
		}
		return err
	}
	removed := 0
	for _, d := range rep.Decisions {
		if !d.Keep {
			removed++
		}
	}
	if !a.json {
		if o.DryRun {
			fmt.Fprintf(a.stdout, "dry run: would remove %d of %d snapshots (%s)\n", removed, len(rep.Decisions), o.Policy)
		} else {
			fmt.Fprintf(a.stdout, "removed %d of %d snapshots (%s)\n", len(rep.Removed), len(rep.Decisions), o.Policy)
		}
	}
	if ff.prune && !o.DryRun {
		pr, err := a.runPrune(ctx, r, ff.popts)
		jsonOut["prune"] = pr
		return err
	}
	return nil
}

// printForgetDecisions prints forget's decisions, group by group.
func (a *app) printForgetDecisions(decisions []retention.Decision) {
	group := ""
	for _, d := range decisions {
		if g := retention.GroupKey(d.Snapshot); g != group {
			group = g
			fmt.Fprintf(a.stdout, "%s:\n", g)
		}
		what, why := "remove", "no rule keeps it"
		if d.Keep {
			what, why = "keep", strings.Join(d.Reasons, ", ")
		}
		fmt.Fprintf(a.stdout, "  %-6s %s  %s  %s\n", what, d.ID[:12], d.Time.Local().Format("2006-01-02 15:04:05 Mon"), why)
	}
}
