package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
)

func (a *app) repairCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "repair index|snapshots",
		Short: "Rebuild the index, or rewrite snapshots whose data is missing",
		Long: `repair index rewrites the repository's index files from the pack headers
(after one was damaged or lost, or to upgrade a repository of the earlier
format) and rebuilds this client's cache; a pack whose header is lost has its
intact blobs salvaged through the old index files. With --read-data it reads
every pack and salvages the intact blobs of packs with bit rot. Unreadable
packs are moved to damaged/.

repair snapshots rewrites each snapshot that references missing data into a
new snapshot (tagged "repaired") in which the affected files are marked
damaged, so that everything else stays restorable; the original is kept
unless --forget. See docs/damage.md.`,
	}
	c.AddCommand(a.repairIndexCommand(), a.repairSnapshotsCommand())
	return c
}

func (a *app) repairIndexCommand() *cobra.Command {
	var o repo.RebuildOptions
	c := &cobra.Command{
		Use:   "index [--read-data]",
		Short: "Rebuild the index files (and this client's cache) from the pack headers",
		Args:  exactArgs(0, "no arguments"),
		PreRun: func(c *cobra.Command, args []string) {
			a.skipIndexFiles = true // the repository opens without its index files: a damaged one must not stop its repair
		},
		RunE: a.exclusive(a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			o.Log = a.logger(a.stderr)
			rep, err := r.RebuildIndex(c.Context(), o)
			if err != nil {
				return err
			}
			if a.json {
				writeJSON(a.stdout, rep)
				return nil
			}
			for _, d := range rep.Damaged {
				lost := fmt.Sprintf("%d blobs lost", d.Lost)
				if d.Lost < 0 {
					lost = "its blobs are lost"
				}
				fmt.Fprintf(a.stdout, "damaged pack %s: %s; %d blobs salvaged, %s; moved to %s\n", d.ID, d.Problem, d.Salvaged, lost, d.MovedTo)
			}
			if len(rep.Dropped) > 0 {
				fmt.Fprintf(a.stdout, "%d blobs of intact packs do not decode and are left out of the index (first: %s)\n", len(rep.Dropped), rep.Dropped[0].Problem)
			}
			for _, m := range rep.Dicts {
				fmt.Fprintln(a.stdout, m)
			}
			fmt.Fprintf(a.stdout, "index rebuilt: %d packs, %d blobs, %d snapshots\n", rep.Packs, rep.Blobs, rep.Snapshots)
			if len(rep.Damaged) > 0 || len(rep.Dropped) > 0 {
				fmt.Fprintln(a.stdout, "data was lost: run `stasis repair snapshots` to mark the affected files")
			}
			return nil
		})),
	}
	c.Flags().BoolVar(&o.ReadData, "read-data", false, "read every pack and salvage packs with bit rot")
	return c
}

func (a *app) repairSnapshotsCommand() *cobra.Command {
	var o engine.RepairSnapshotsOptions
	c := &cobra.Command{
		Use:   "snapshots [--forget] [--dry-run]",
		Short: "Rewrite snapshots that reference missing data, marking the affected files",
		Args:  exactArgs(0, "no arguments"),
		RunE: a.exclusive(a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			o.Log = a.logger(a.stderr)
			rep, err := engine.RepairSnapshots(c.Context(), r, o)
			if rep != nil && a.json {
				writeJSON(a.stdout, rep)
			} else if rep != nil {
				for _, f := range rep.Files {
					fmt.Fprintf(a.stdout, "%s\n", f)
				}
				for _, s := range rep.Repaired {
					fmt.Fprintf(a.stdout, "snapshot %s: %d damaged paths", s.Old.Short(), len(s.Damaged))
					if !s.New.IsZero() {
						fmt.Fprintf(a.stdout, ", repaired copy %s", s.New.Short())
					}
					if s.Forgot {
						fmt.Fprintf(a.stdout, ", original removed")
					}
					fmt.Fprintln(a.stdout)
					for _, p := range s.Damaged {
						fmt.Fprintf(a.stdout, "  damaged: %s\n", quotePath(p))
					}
					for _, m := range s.LostDicts {
						fmt.Fprintf(a.stdout, "  no longer needs compression dictionary %s\n", m)
					}
				}
				fmt.Fprintf(a.stdout, "checked %d snapshots, %d need repair\n", rep.Checked, len(rep.Repaired))
			}
			return err
		})),
	}
	c.Flags().BoolVar(&o.Forget, "forget", false, "remove each original snapshot after saving its repaired copy")
	c.Flags().BoolVarP(&o.DryRun, "dry-run", "n", false, "report, change nothing")
	return c
}
