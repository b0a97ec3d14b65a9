// Command stasis is a content-addressed, deduplicating backup tool for live
// service data. Run `stasis help` for the commands.
//
// Exit codes: 0 ok · 1 fatal error (also a failed --stdin-from-command dump:
// no snapshot) · 2 usage error · 3 snapshot made but incomplete or
// inconsistent files (listed), or an empty stdin dump · 10 no repository ·
// 11 lock held · 12 wrong password, or no password given and no terminal to
// ask on.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/cmd/stasis/internal/password"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/lock"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/crypto"
)

// Exit codes.
const (
	exitOK         = 0
	exitFatal      = 1
	exitUsage      = 2
	exitIncomplete = 3
	exitNoRepo     = 10
	exitLocked     = 11
	exitPassword   = 12
)

func main() {
	setGCPercent()
	stopMemoryLimit := tuneMemoryLimit()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfiles := startProfiles(os.Stderr)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stopProfiles()
	stopMemoryLimit()
	stop()
	os.Exit(code)
}

// gcPercent is stasis's GOGC unless the environment sets one: the heap of
// a backup or restore is mostly pointer-free byte buffers (chunks, frames,
// packs), cheap to collect, so collecting when it has grown by a quarter
// instead of doubling costs no measurable CPU and lowers the peak RSS
// (backup of the 1.1 GiB benchmark tree: 170 → 130 MiB, docs/benchmarks.md).
const gcPercent = 25

func setGCPercent() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}

// usageError marks a command line the user must fix (exit 2).
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// app is one invocation: its streams and global flags.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	repoDir        string // --repo: a directory or an s3: URL
	cacheDir       string // --cache-dir
	json           bool

	st     repo.Storage // opened by storage()
	cancel context.CancelCauseFunc
	// skipIndexFiles: openRepo reads no index file (repair index rebuilds them)
	skipIndexFiles bool // stops the command (a lost lock)

	locking lockState // the repository lock (lock.go)

	passwordFile, passwordCommand string
	insecureNoPassword            bool
}

// run executes the command line args and returns the exit code. Tests call
// it in-process.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr, cancel: cancel}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if cause := context.Cause(ctx); err != nil && cause != nil && cause != ctx.Err() {
		err = cause // say why the command was stopped (a lost lock), not "context canceled"
	}
	if err == nil {
		// Finished, but the lock was lost on the way: another command may
		// have taken the repository meanwhile (a prune), so this is no
		// success to report.
		if lerr := a.lockLost(); lerr != nil {
			err = fmt.Errorf("%w; run `stasis check` before trusting what this command wrote", lerr)
		}
	}
	a.releaseLock()
	if err == nil {
		return exitOK
	}
	code := exitCode(err)
	if !errors.Is(err, errReported) {
		fmt.Fprintf(stderr, "stasis: %v\n", withHints(err))
	}
	if code == exitUsage {
		fmt.Fprintln(stderr, "Run `stasis help` for usage.")
	}
	return code
}

// errReported is returned after a command already printed its problems;
// exitError carries the code.
var errReported = errors.New("reported")

type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee exitError
	var ue usageError
	switch {
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, repo.ErrNoRepository):
		return exitNoRepo
	case errors.Is(err, repo.ErrCacheBusy), errors.Is(err, lock.ErrLocked):
		return exitLocked
	case errors.Is(err, crypto.ErrWrongPassword), errors.Is(err, crypto.ErrNoPassword):
		return exitPassword
	case errors.Is(err, engine.ErrIncomplete):
		return exitIncomplete
	}
	return exitFatal
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "stasis",
		Short: "Content-addressed, deduplicating backups of live service data",
		Long: `stasis takes consistent, deduplicated, compressed snapshots of directories
into a repository, and restores any of them, whole or one file, verified.

The repository comes from --repo or the STASIS_REPO environment variable.
Repositories are encrypted; the password comes from --password-file FILE (or
STASIS_PASSWORD_FILE), --password-command CMD, STASIS_PASSWORD, or a prompt on
a terminal, in this order. A wrong or missing password exits with code 12.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVarP(&a.repoDir, "repo", "r", os.Getenv("STASIS_REPO"), "repository: a directory, or s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX] (default $STASIS_REPO)")
	root.PersistentFlags().StringVar(&a.cacheDir, "cache-dir", os.Getenv("STASIS_CACHE_DIR"), "client cache directory, one subdirectory per repository (default $STASIS_CACHE_DIR, else $XDG_CACHE_HOME/stasis)")
	root.PersistentFlags().BoolVar(&a.json, "json", false, "machine-readable JSON output")
	root.PersistentFlags().StringVar(&a.passwordFile, "password-file", "", "read the repository password from FILE (default $"+password.EnvFile+")")
	root.PersistentFlags().StringVar(&a.passwordCommand, "password-command", "", "run CMD (with /bin/sh -c) and read the repository password from its output")
	root.PersistentFlags().BoolVar(&a.insecureNoPassword, "insecure-no-password", false, "init, backup --init: create an UNENCRYPTED repository")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(a.initCommand(), a.backupCommand(), a.snapshotsCommand(), a.restoreCommand(), a.diffCommand(),
		a.lsCommand(), a.checkCommand(), a.statsCommand(), a.versionCommand(),
		a.keyCommand(), a.tapeCommand())
	a.addMaintenanceCommands(root) // forget, prune, repair, unlock, --retry-lock (lock.go)
	root.AddCommand(a.resumePendingCommand())
	for _, c := range registered {
		root.AddCommand(c(a))
	}
	return root
}

// registered holds the commands that add themselves from their own file
// (func init() { register((*app).fooCommand) }), so that a new command is
// one file.
var registered []func(*app) *cobra.Command

func register(c func(*app) *cobra.Command) { registered = append(registered, c) }

// needRepo returns the repository location or a usage error.
func (a *app) needRepo() (string, error) {
	if a.repoDir == "" {
		return "", usagef("no repository given: use --repo DIR|s3:URL or set STASIS_REPO")
	}
	return a.repoDir, nil
}

// storage returns the storage of the repository given by --repo.
func (a *app) storage(ctx context.Context) (repo.Storage, error) {
	if a.st != nil {
		return a.st, nil
	}
	loc, err := a.needRepo()
	if err != nil {
		return nil, err
	}
	st, err := repo.OpenStorage(ctx, loc)
	if err != nil {
		return nil, err
	}
	a.st = st
	return st, nil
}

// openRepo opens the --repo repository, which must exist, under this
// invocation's repository lock (lockRepo: shared, or exclusive under
// a.exclusive). The lock is released when run returns, not when the
// repository is closed. Commands use withRepo or runWithRepo, which close it.
func (a *app) openRepo(ctx context.Context) (*repo.Repository, error) {
	st, err := a.storage(ctx)
	if err != nil {
		return nil, err
	}
	dir := st.Location()
	if ok, err := repo.ObjectExists(ctx, st, "config"); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("%s: %w (create one with `stasis init --repo %s`)", dir, repo.ErrNoRepository, dir)
	}
	if err := a.lockRepo(ctx, st, false); err != nil { // shared unless a command took an exclusive one
		return nil, err
	}
	return repo.Open(ctx, st, repo.OpenOptions{Password: a.repoPassword(dir), CacheDir: a.cacheDir,
		Exclusive: a.locking.held != nil && a.locking.held.Info().Exclusive, CacheWait: a.locking.retry,
		SkipIndexFiles: a.skipIndexFiles})
}

// withRepo opens the --repo repository (openRepo), runs fn with it and
// closes it when fn returns (also on a panic). Close's error is ignored, as
// it always was: Close flushes nothing (fn flushed what the command keeps),
// it only releases the index cache and open files, and failing to release
// them does not undo the command's result.
func (a *app) withRepo(ctx context.Context, fn func(r *repo.Repository) error) error {
	r, err := a.openRepo(ctx)
	if err != nil {
		return err
	}
	defer r.Close()
	return fn(r)
}

// runWithRepo is a cobra RunE that runs fn with the --repo repository open
// (withRepo). Wrap it in a.exclusive for an exclusive lock.
func (a *app) runWithRepo(fn func(c *cobra.Command, args []string, r *repo.Repository) error) func(c *cobra.Command, args []string) error {
	return func(c *cobra.Command, args []string) error {
		return a.withRepo(c.Context(), func(r *repo.Repository) error { return fn(c, args, r) })
	}
}

// args validators that return usage errors.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s: expected %s, got %d arguments", c.Name(), what, len(args))
		}
		return nil
	}
}
