package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/repo"
)

func (a *app) initCommand() *cobra.Command {
	var dbGlobs []string
	var level int
	c := &cobra.Command{
		Use:   "init",
		Short: "Create a new repository",
		Long: `Create a new, encrypted repository at --repo. The password comes from
--password-file FILE (or STASIS_PASSWORD_FILE), --password-command CMD, or
STASIS_PASSWORD, or is asked twice on a terminal. Without the password the
repository cannot be read: keep it safe (stasis key add makes a second one).

--insecure-no-password creates an unencrypted repository instead, on purpose
only: anyone who can read its files (or tapes) can read the backups.

--compression-level trades backup speed for repository size, for every backup
into the repository: 2 (the default) is zstd's fastest encoder; 3 is about 7%
smaller and 20% slower to write; 7 about a quarter smaller and half as fast;
restores decode every level about as fast (docs/benchmarks.md has the figures).`,
		Args: exactArgs(0, "no arguments (the repository comes from --repo)"),
		RunE: func(c *cobra.Command, args []string) error {
			dir, err := a.needRepo()
			if err != nil {
				return err
			}
			if level < 1 || level > 22 {
				return usagef("--compression-level %d: zstd levels are 1..22 (%d is the default)", level, repo.DefaultCompressionLevel)
			}
			r, err := a.initRepo(c.Context(), repo.InitOptions{DBGlobs: dbGlobs, CompressionLevel: level})
			if err != nil {
				return err
			}
			defer r.Close()
			if a.json {
				return writeJSON(a.stdout, map[string]any{"id": r.Config().ID, "repository": dir, "encrypted": r.Encrypted(), "key": r.KeyID()})
			}
			fmt.Fprintf(a.stdout, "created stasis repository %s at %s\n", r.Config().ID[:8], dir)
			if !r.Encrypted() {
				fmt.Fprintln(a.stderr, "warning: the repository is NOT encrypted (--insecure-no-password)")
			}
			return nil
		},
	}
	c.Flags().StringSliceVar(&dbGlobs, "db-glob", nil, "base-name globs of database files chunked with the small \"db\" profile (default *.db)")
	c.Flags().IntVar(&level, "compression-level", repo.DefaultCompressionLevel, "zstd level of every backup into the repository: 1-2 fastest, 3-5 default, 6-9 better, 10-22 best")
	return c
}
