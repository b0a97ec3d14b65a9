package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
)

func (a *app) diffCommand() *cobra.Command {
	var filt repo.SnapshotFilter
	c := &cobra.Command{
		Use:   "diff ID1 ID2",
		Short: "Show what changed between two snapshots",
		Long: `Show what changed from snapshot ID1 to ID2 (either may be "latest"):
"+" added, "-" removed, "M" content changed, "T" type changed, "U" metadata only.`,
		Args: exactArgs(2, "two snapshot IDs"),
		RunE: a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			ctx := c.Context()
			sa, err := r.FindSnapshot(ctx, args[0], filt)
			if err != nil {
				return err
			}
			sb, err := r.FindSnapshot(ctx, args[1], filt)
			if err != nil {
				return err
			}
			counts := map[string]int{}
			err = engine.Diff(ctx, r, sa, sb, func(ch engine.Change) error {
				counts[ch.What]++
				if a.json {
					writeJSONLine(a.stdout, ch)
				} else {
					fmt.Fprintf(a.stdout, "%-2s %s\n", ch.What, quotePath(ch.Path))
				}
				return nil
			})
			if err != nil {
				return err
			}
			if !a.json {
				fmt.Fprintf(a.stdout, "%s → %s: %d added, %d removed, %d changed, %d type changed, %d metadata only\n",
					sa.ID.Short(), sb.ID.Short(), counts["+"], counts["-"], counts["M"], counts["T"], counts["U"])
			}
			return nil
		}),
	}
	addFilterFlags(c.Flags(), &filt)
	return c
}
