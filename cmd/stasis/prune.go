package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
)

func (a *app) pruneCommand() *cobra.Command {
	var o engine.PruneOptions
	c := &cobra.Command{
		Use:   "prune [--dry-run] [--max-unused PCT]",
		Short: "Delete data that no snapshot references, and give the space back",
		Long: `Walk every snapshot to find the blobs still in use, delete packs that hold
none of them, repack packs that are more than --max-unused percent unused
(their live blobs are copied to new packs first), and delete files left in
tmp/ by interrupted commands. New packs are written and indexed before
anything is deleted, so prune can be killed at any moment. prune refuses to
run on a damaged repository (a snapshot whose trees or chunks are missing):
run ` + "`stasis check`" + ` and ` + "`stasis repair`" + ` first.`,
		Args: exactArgs(0, "no arguments"),
		RunE: a.exclusive(func(c *cobra.Command, args []string) error {
			if o.MaxUnused < 0 || o.MaxUnused > 100 {
				return usagef("--max-unused %g: give a percentage from 0 to 100", o.MaxUnused)
			}
			return a.withRepo(c.Context(), func(r *repo.Repository) error {
				rep, err := a.runPrune(c.Context(), r, o)
				if err == nil && a.json {
					writeJSON(a.stdout, rep)
				}
				return err
			})
		}),
	}
	c.Flags().BoolVarP(&o.DryRun, "dry-run", "n", false, "report what would be deleted, change nothing")
	c.Flags().Float64Var(&o.MaxUnused, "max-unused", 10, "repack packs more than PCT percent unused")
	return c
}

// runPrune prunes r and, unless --json, prints the report.
func (a *app) runPrune(ctx context.Context, r *repo.Repository, o engine.PruneOptions) (*engine.PruneReport, error) {
	if o.MaxUnused == 0 {
		o.MaxUnused = 0.000001 // 0 means "repack anything unused", not the default
	}
	prog := a.startProgress("prune", "packs", a.stderr) // progress.go; stderr: stdout is one JSON document
	o.Progress = prog.Counts()
	prog.setPhaseUnits(map[string]string{"marking": "snapshots"})
	o.Log = a.logger(prog.logWriter(a.stderr))
	rep, err := engine.Prune(ctx, r, o)
	prog.done()
	if err != nil || a.json {
		return rep, err
	}
	verb := "deleted"
	if o.DryRun {
		verb = "would delete"
	}
	fmt.Fprintf(a.stdout, "%d snapshots, %d live blobs\n", rep.Snapshots, rep.LiveBlobs)
	fmt.Fprintf(a.stdout, "%s %d unused packs and %d packs left by interrupted commands; repacked %d packs (%s live data)\n",
		verb, rep.PacksDeleted, rep.PacksUnindexed, rep.PacksRepacked, humanBytes(rep.BytesRepacked))
	if rep.TempFilesRemove > 0 {
		fmt.Fprintf(a.stdout, "removed %d leftover temporary files\n", rep.TempFilesRemove)
	}
	fmt.Fprintf(a.stdout, "packs: %s before, %s after: %s freed\n", humanBytes(rep.PackBytesBefore), humanBytes(rep.PackBytesAfter), humanBytes(rep.BytesFreed))
	return rep, nil
}
