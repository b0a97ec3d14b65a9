package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func (a *app) initCommand() *cobra.Command {
	var dbGlobs []string
	c := &cobra.Command{
		Use:   "init",
		Short: "Create a new repository",
		Long: `Create a new, encrypted repository at --repo. The password comes from
--password-file FILE (or STASIS_PASSWORD_FILE), --password-command CMD, or
STASIS_PASSWORD, or is asked twice on a terminal. Without the password the
repository cannot be read: keep it safe (stasis key add makes a second one).

--insecure-no-password creates an unencrypted repository instead, on purpose
only: anyone who can read its files (or tapes) can read the backups.`,
		Args: exactArgs(0, "no arguments (the repository comes from --repo)"),
		RunE: func(c *cobra.Command, args []string) error {
			dir, err := a.needRepo()
			if err != nil {
				return err
			}
			r, err := a.initRepo(c.Context(), dbGlobs)
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
	return c
}
