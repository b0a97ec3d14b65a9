package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/repo"
)

func (a *app) initCommand() *cobra.Command {
	var dbGlobs []string
	c := &cobra.Command{
		Use:   "init",
		Short: "Create a new repository",
		Args:  exactArgs(0, "no arguments (the repository comes from --repo)"),
		RunE: func(c *cobra.Command, args []string) error {
			dir, err := a.needRepo()
			if err != nil {
				return err
			}
			r, err := repo.Init(c.Context(), dir, repo.InitOptions{DBGlobs: dbGlobs})
			if err != nil {
				return err
			}
			defer r.Close()
			if a.json {
				return writeJSON(a.stdout, map[string]any{"id": r.Config().ID, "repository": dir})
			}
			fmt.Fprintf(a.stdout, "created stasis repository %s at %s\n", r.Config().ID[:8], dir)
			return nil
		},
	}
	c.Flags().StringSliceVar(&dbGlobs, "db-glob", nil, "base-name globs of database files chunked with the small \"db\" profile (default *.db)")
	return c
}
