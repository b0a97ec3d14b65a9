package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/crypto"
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
	c.AddCommand(a.keyListCommand(), a.keyAddCommand(), a.keyRemoveCommand(), a.keyPasswdCommand())
	return c
}

func (a *app) keyListCommand() *cobra.Command {
	return &cobra.Command{
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
}

// newPasswordFlags are where the new password of key add and key passwd
// comes from: --new-password-file and --new-password-command (newPassword
// also reads the environment and the terminal).
type newPasswordFlags struct{ file, command string }

func (f *newPasswordFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.file, "new-password-file", "", "read the new password from FILE")
	c.Flags().StringVar(&f.command, "new-password-command", "", "read the new password from the output of CMD")
}

// newKey reads the new password (newPassword) and makes a key file for it
// with makeKey (r.AddKey or r.ChangePassword) and new KDF parameters; the
// password is cleared afterwards. It returns the new key's id.
func (a *app) newKey(ctx context.Context, f newPasswordFlags, makeKey func(context.Context, []byte, crypto.KDFParams) (string, error)) (string, error) {
	pw, err := a.newPassword(ctx, f.file, f.command)
	if err != nil {
		return "", err
	}
	defer clear(pw)
	return makeKey(ctx, pw, newKDF())
}

func (a *app) keyAddCommand() *cobra.Command {
	var f newPasswordFlags
	c := &cobra.Command{
		Use:   "add",
		Short: "Add a password (a new key file)",
		Args:  exactArgs(0, "no arguments"),
		RunE: a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			id, err := a.newKey(c.Context(), f, r.AddKey)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(a.stdout, map[string]any{"added": id})
			}
			fmt.Fprintf(a.stdout, "added key %s\n", id[:8])
			return nil
		}),
	}
	f.add(c)
	return c
}

func (a *app) keyRemoveCommand() *cobra.Command {
	return &cobra.Command{
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
}

func (a *app) keyPasswdCommand() *cobra.Command {
	var f newPasswordFlags
	c := &cobra.Command{
		Use:   "passwd",
		Short: "Change the password in use (replace its key file)",
		Args:  exactArgs(0, "no arguments"),
		RunE: a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			old := r.KeyID()
			id, err := a.newKey(c.Context(), f, r.ChangePassword)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(a.stdout, map[string]any{"added": id, "removed": old})
			}
			fmt.Fprintf(a.stdout, "password changed: key %s replaces key %s\n", id[:8], old[:8])
			return nil
		}),
	}
	f.add(c)
	return c
}
