package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
)

func (a *app) statsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "stats",
		Short: "Show logical and stored size, dedup and compression ratios",
		Args:  exactArgs(0, "no arguments"),
		RunE: a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			st, err := engine.RepoStats(c.Context(), r)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(a.stdout, st)
			}
			fmt.Fprintf(a.stdout, "snapshots:          %d\n", st.Snapshots)
			fmt.Fprintf(a.stdout, "logical size:       %s (all files of all snapshots)\n", humanBytes(st.LogicalBytes))
			fmt.Fprintf(a.stdout, "unique data:        %s in %d chunks\n", humanBytes(st.UniqueBytes), st.Chunks)
			fmt.Fprintf(a.stdout, "stored size:        %s in %d packs (%d tree and extent-list blobs)\n", humanBytes(st.StoredBytes), st.Packs, st.Trees)
			fmt.Fprintf(a.stdout, "dedup ratio:        %.2fx\n", st.DedupRatio)
			fmt.Fprintf(a.stdout, "compression ratio:  %.2fx\n", st.Compression)
			fmt.Fprintf(a.stdout, "space saving:       %.1f%%\n", 100*st.SpaceSaving)
			return nil
		}),
	}
}
