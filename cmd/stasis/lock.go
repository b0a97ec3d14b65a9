package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/internal/lock"
	"github.com/stasisbackup/stasis/repo"
)

// lockState is the repository lock of one invocation. Commands that only
// read or add data (backup, restore, check, ls, ...) take a shared lock in
// openRepo; forget, prune and repair run under a.exclusive, which makes the
// lock openRepo takes exclusive. The lock is released when run returns.
//
// If the lock is lost while the command runs (it could not be refreshed in
// time, or `stasis unlock --remove-all` removed it), lockRepo cancels the
// command's context (a.cancel) with lockLost's error, which run reports.
type lockState struct {
	retry     time.Duration // --retry-lock
	held      *lock.Lock
	cmd       string // the command, recorded in the lock
	exclusive bool   // set by a.exclusive: lockRepo takes an exclusive lock
	release   func() // releases held (takeLock), called by releaseLock

	// staleAfter is lock.Options.StaleAfter; 0 means the default (tests
	// shorten it).
	staleAfter time.Duration
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

// commandName returns "stasis <cmd>" for the lock object.
func commandName(c *cobra.Command) string {
	return strings.TrimSpace(c.CommandPath())
}

// lockRepo takes the repository lock for this invocation on st unless one
// is held: exclusive if exclusive is set or the command runs under
// a.exclusive, shared otherwise. Call it once st is known to hold a
// repository (it writes under locks/). It fails with an error matching
// lock.ErrLocked (exit 11) naming the holder.
//
// When the lock is lost later (it could not be refreshed in time, or it was
// removed), the command's context is cancelled (a.cancel) with lockLost's
// error, which matches lock.ErrLost, so the command stops before it could
// write against another command's prune.
func (a *app) lockRepo(ctx context.Context, st repo.Storage, exclusive bool) error {
	exclusive = exclusive || a.locking.exclusive
	if l := a.locking.held; l != nil {
		if exclusive && !l.Info().Exclusive {
			return fmt.Errorf("internal error: %s holds a shared repository lock and now needs an exclusive one", a.locking.cmd)
		}
		return nil
	}
	l, release, err := a.takeLock(ctx, st, exclusive, "")
	if err != nil {
		return err
	}
	a.locking.held, a.locking.release = l, release
	return nil
}

// takeLock takes a lock on st for this invocation, exclusive or shared: it
// waits up to --retry-lock for a conflicting lock, removes stale ones (by
// a.locking.staleAfter), logs to stderr, and records the command's name
// (a.locking.cmd) in the lock; the lock refreshes itself until release.
// source is "" for the repository the command works on, and the location
// of copy's source repository for that one: then the recorded command ends
// in " (source)" and errors begin with "source LOCATION: ".
//
// When the lock is lost before release, the command's context is cancelled
// (a.cancel) with lockLostError's error. release stops watching for that and
// releases the lock; it reports a failure to release on stderr.
func (a *app) takeLock(ctx context.Context, st repo.Storage, exclusive bool, source string) (l *lock.Lock, release func(), err error) {
	cmd := a.locking.cmd
	if cmd == "" {
		cmd = "stasis"
	}
	named := func(err error) error { return err }
	if source != "" {
		cmd += " (source)"
		named = func(err error) error { return fmt.Errorf("source %s: %w", source, err) }
	}
	l, err = lock.Acquire(ctx, st, exclusive, lock.Options{
		RetryFor:   a.locking.retry,
		StaleAfter: a.locking.staleAfter,
		Log:        a.stderr,
		Command:    cmd,
	})
	if err != nil {
		return nil, nil, named(err)
	}
	released := make(chan struct{})
	if cancel := a.cancel; cancel != nil {
		go func() {
			select {
			case <-l.Done():
				cancel(named(lockLostError(l)))
			case <-released:
			}
		}()
	}
	release = func() {
		close(released)
		if err := l.Release(); err != nil {
			fmt.Fprintf(a.stderr, "stasis: %v\n", named(err))
		}
	}
	return l, release, nil
}

// lockLost returns nil while this invocation's lock is held or if it took
// none, and the error to report once the lock was lost.
func (a *app) lockLost() error {
	if a.locking.held == nil {
		return nil
	}
	return lockLostError(a.locking.held)
}

// lockLostError is nil while l is held, else "repository lock lost: <why>;
// the command stopped, nothing it had not committed is kept", matching
// lock.ErrLost.
func lockLostError(l *lock.Lock) error {
	if err := l.Err(); err != nil {
		return fmt.Errorf("%w; the command stopped, nothing it had not committed is kept (earlier snapshots are unaffected)", err)
	}
	return nil
}

// releaseLock releases the lock taken by this invocation, if any.
func (a *app) releaseLock() {
	if a.locking.held == nil {
		return
	}
	a.locking.release()
	a.locking.held, a.locking.release = nil, nil
}

// exclusive wraps a RunE so that it runs under an exclusive lock: the lock
// openRepo takes (after it checked that the repository exists, so that no
// lock is written into a mistyped --repo) is exclusive.
func (a *app) exclusive(run func(c *cobra.Command, args []string) error) func(c *cobra.Command, args []string) error {
	return func(c *cobra.Command, args []string) error {
		a.locking.cmd = commandName(c)
		a.locking.exclusive = true
		err := run(c, args)
		if err == nil && a.locking.held == nil {
			return fmt.Errorf("internal error: %s ran without its exclusive repository lock", a.locking.cmd)
		}
		return err
	}
}

func (a *app) unlockCommand() *cobra.Command {
	var all bool
	c := &cobra.Command{
		Use:   "unlock [--remove-all]",
		Short: "Remove stale repository locks (with --remove-all: every lock)",
		Long: `Remove locks left by stasis processes that are gone (same host, dead pid) or
that were not refreshed for 30 minutes by the clock of the repository's
storage (the file system's or the object store's, never a host's). This is
always safe. --remove-all removes every lock, also those of running
processes (they stop at their next refresh): use it only when you know that
no stasis process uses the repository.`,
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
					out = append(out, map[string]any{"id": l.ID, "objects": l.Objects, "lock": l.String()})
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
