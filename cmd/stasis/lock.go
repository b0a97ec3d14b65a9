package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/lock"
)

// lockState is the repository lock of one invocation. Commands that only
// read or add data (backup, restore, check, ls, ...) take a shared lock in
// openRepo; forget, prune and repair take an exclusive one first, with
// lockExclusive. The lock is released when run returns.
type lockState struct {
	retry time.Duration // --retry-lock
	held  *lock.Lock
	cmd   string // the command, recorded in the lock
}

// addMaintenanceCommands registers forget, prune, repair, unlock and the
// --retry-lock flag.
func (a *app) addMaintenanceCommands(root *cobra.Command) {
	root.PersistentFlags().DurationVar(&a.locking.retry, "retry-lock", 0,
		"wait up to DUR for a conflicting repository lock instead of exiting 11")
	root.PersistentPreRunE = func(c *cobra.Command, args []string) error {
		a.locking.cmd = commandName(c)
		return nil
	}
	root.AddCommand(a.forgetCommand(), a.pruneCommand(), a.repairCommand(), a.unlockCommand())
}

// commandName returns "stasis <cmd>" for the lock file.
func commandName(c *cobra.Command) string {
	return strings.TrimSpace(c.CommandPath())
}

// lockRepo takes the repository lock for this invocation unless one is held.
// It fails with an error matching lock.ErrLocked (exit 11) naming the holder.
// When the lock is lost later (it could not be refreshed in time, or it was
// removed), the command's context is cancelled with the reason, so the
// command stops before it could write against another command's prune.
func (a *app) lockRepo(ctx context.Context, st backend.Storage, exclusive bool) error {
	if a.locking.held != nil {
		return nil
	}
	cmd := a.locking.cmd
	if cmd == "" {
		cmd = "stasis"
	}
	l, err := lock.Acquire(ctx, st, exclusive, lock.Options{RetryFor: a.locking.retry, Log: a.stderr, Command: cmd})
	if err != nil {
		return err
	}
	a.locking.held = l
	if a.cancel != nil {
		go func() {
			select {
			case <-l.Done():
				a.cancel(fmt.Errorf("%w; the command stopped, and nothing it had not committed is kept (earlier snapshots are unaffected)", l.Err()))
			case <-ctx.Done():
			}
		}()
	}
	return nil
}

// releaseLock releases the lock taken by this invocation, if any.
func (a *app) releaseLock() {
	if a.locking.held == nil {
		return
	}
	if err := a.locking.held.Release(); err != nil {
		fmt.Fprintf(a.stderr, "stasis: %v\n", err)
	}
	a.locking.held = nil
}

// exclusive wraps a RunE so that it runs under an exclusive lock.
func (a *app) exclusive(run func(c *cobra.Command, args []string) error) func(c *cobra.Command, args []string) error {
	return func(c *cobra.Command, args []string) error {
		st, err := a.storage(c.Context())
		if err != nil {
			return err
		}
		a.locking.cmd = commandName(c)
		if err := a.lockRepo(c.Context(), st, true); err != nil {
			return err
		}
		return run(c, args)
	}
}

func (a *app) unlockCommand() *cobra.Command {
	var all bool
	c := &cobra.Command{
		Use:   "unlock [--remove-all]",
		Short: "Remove stale repository locks (with --remove-all: every lock)",
		Long: `Remove locks left by stasis processes that are gone (same host, dead pid) or
that were not refreshed for 30 minutes. This is always safe. --remove-all
removes every lock, also those of running processes: use it only when you
know that no stasis process uses the repository.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, args []string) error {
			st, err := a.storage(c.Context())
			if err != nil {
				return err
			}
			// RemoveStale writes a probe object: not into a place that
			// is no repository.
			if ok, err := repo.ObjectExists(c.Context(), st, "config"); err != nil {
				return err
			} else if !ok {
				return fmt.Errorf("%s: %w", st.Location(), repo.ErrNoRepository)
			}
			var removed []lock.Info
			if all {
				removed, err = lock.RemoveAll(c.Context(), st)
			} else {
				log := a.stderr
				if a.json {
					log = io.Discard
				}
				removed, err = lock.RemoveStale(c.Context(), st, lock.Options{Log: log})
			}
			if a.json {
				out := []map[string]any{}
				for _, l := range removed {
					out = append(out, map[string]any{"id": l.ID, "lock": l.String()})
				}
				writeJSON(a.stdout, map[string]any{"removed": out})
			} else {
				for _, l := range removed {
					fmt.Fprintf(a.stdout, "removed lock %s: %s\n", l.ID, l)
				}
				fmt.Fprintf(a.stdout, "%d locks removed\n", len(removed))
			}
			return err
		},
	}
	c.Flags().BoolVar(&all, "remove-all", false, "remove every lock, also those of running processes")
	return c
}
