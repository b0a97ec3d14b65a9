package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
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

// defaultBackupIndexWait is how long a backup waits for index.db while
// another stasis process (typically another backup) has it open. index.db
// is a bbolt file only one process can open, so concurrent backups take
// turns; both complete and neither loses data.
const defaultBackupIndexWait = 12 * time.Hour

// addMaintenanceCommands registers forget, prune, repair, unlock and the
// --retry-lock flag.
func (a *app) addMaintenanceCommands(root *cobra.Command) {
	root.PersistentFlags().DurationVar(&a.locking.retry, "retry-lock", 0,
		"wait up to DUR for a conflicting repository lock (and for index.db) instead of exiting 11")
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
func (a *app) lockRepo(ctx context.Context, dir string, exclusive bool) error {
	if a.locking.held != nil {
		return nil
	}
	cmd := a.locking.cmd
	if cmd == "" {
		cmd = "stasis"
	}
	l, err := lock.Acquire(ctx, dir, exclusive, lock.Options{RetryFor: a.locking.retry, Log: a.stderr, Command: cmd})
	if err != nil {
		return err
	}
	a.locking.held = l
	return nil
}

// indexWait is how long openRepo waits for index.db.
func (a *app) indexWait() time.Duration {
	if a.locking.retry > 0 {
		return a.locking.retry
	}
	if strings.HasSuffix(a.locking.cmd, " backup") {
		return defaultBackupIndexWait
	}
	return time.Second
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
		dir, err := a.needRepo()
		if err != nil {
			return err
		}
		a.locking.cmd = commandName(c)
		if err := a.lockRepo(c.Context(), dir, true); err != nil {
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
			dir, err := a.needRepo()
			if err != nil {
				return err
			}
			var removed []lock.Info
			if all {
				removed, err = lock.RemoveAll(c.Context(), dir)
			} else {
				log := a.stderr
				if a.json {
					log = io.Discard
				}
				removed, err = lock.RemoveStale(c.Context(), dir, lock.Options{Log: log})
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
