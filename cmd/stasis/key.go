package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/repo"
)

func (a *app) keyCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "key",
		Short: "Manage the passwords (key files) of an encrypted repository",
		Long: `An encrypted repository has one key file per password (keys/<id>); each opens
the same master key. "key add" makes another password, "key remove" deletes a
key file (never the last one, nor the one whose password was given), and
"key passwd" replaces the key in use by one with a new password.

The new password of "add" and "passwd" comes from --new-password-file FILE (or
STASIS_NEW_PASSWORD_FILE), --new-password-command CMD, or STASIS_NEW_PASSWORD,
or is asked twice on a terminal.`,
		Args: exactArgs(0, "a subcommand: list, add, remove or passwd"),
		RunE: func(c *cobra.Command, args []string) error {
			return usagef("key: give a subcommand: list, add, remove or passwd")
		},
	}
	var newFile, newCommand string
	newFlags := func(sub *cobra.Command) *cobra.Command {
		sub.Flags().StringVar(&newFile, "new-password-file", "", "read the new password from FILE")
		sub.Flags().StringVar(&newCommand, "new-password-command", "", "read the new password from the output of CMD")
		return sub
	}

	list := &cobra.Command{
		Use:   "list",
		Short: "List the key files",
		Args:  exactArgs(0, "no arguments"),
		RunE: a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			keys, err := r.Keys(c.Context())
			if err != nil {
				return err
			}
			if a.json {
				out := make([]map[string]any, 0, len(keys))
				for _, k := range keys {
					out = append(out, map[string]any{"id": k.ID, "current": k.Current, "created": k.Created,
						"host": k.Host, "user": k.User, "kdf": k.KDF})
				}
				return writeJSON(a.stdout, out)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, " \tID\tUser\tHost\tCreated\tKDF")
			for _, k := range keys {
				cur := " "
				if k.Current {
					cur = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\targon2id t=%d m=%dMiB p=%d\n", cur, k.ID[:8], k.User, k.Host,
					k.Created.Local().Format(time.DateTime), k.KDF.Time, k.KDF.MemoryKiB>>10, k.KDF.Threads)
			}
			return tw.Flush()
		}),
	}

	add := newFlags(&cobra.Command{
		Use:   "add",
		Short: "Add a password (a new key file)",
		Args:  exactArgs(0, "no arguments"),
		RunE: a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			pw, err := a.newPassword(c.Context(), newFile, newCommand)
			if err != nil {
				return err
			}
			id, err := r.AddKey(c.Context(), pw, newKDF())
			clear(pw)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(a.stdout, map[string]any{"added": id})
			}
			fmt.Fprintf(a.stdout, "added key %s\n", id[:8])
			return nil
		}),
	})

	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a key file (not the last one, nor the one in use)",
		Args:  exactArgs(1, "a key ID (or a unique prefix)"),
		// Exclusive: a command running with the key being removed must not
		// find it gone halfway (and no two removals may race to remove the
		// last two keys).
		RunE: a.exclusive(a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			id, err := r.RemoveKey(c.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(a.stdout, map[string]any{"removed": id})
			}
			fmt.Fprintf(a.stdout, "removed key %s\n", id[:8])
			return nil
		})),
	}

	passwd := newFlags(&cobra.Command{
		Use:   "passwd",
		Short: "Change the password in use (replace its key file)",
		Args:  exactArgs(0, "no arguments"),
		RunE: a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			old := r.KeyID()
			pw, err := a.newPassword(c.Context(), newFile, newCommand)
			if err != nil {
				return err
			}
			id, err := r.ChangePassword(c.Context(), pw, newKDF())
			clear(pw)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(a.stdout, map[string]any{"added": id, "removed": old})
			}
			fmt.Fprintf(a.stdout, "password changed: key %s replaces key %s\n", id[:8], old[:8])
			return nil
		}),
	})
	c.AddCommand(list, add, remove, passwd)
	return c
}
