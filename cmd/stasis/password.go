package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/stasisbackup/stasis/cmd/stasis/internal/password"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/crypto"
)

// newKDF picks the argon2id parameters of new key files (init, key add, key
// passwd): about half a second on this machine. Tests replace it with
// crypto.TestKDFParams.
var newKDF = func() crypto.KDFParams { return crypto.TuneKDF(500 * time.Millisecond) }

// Environment variables of the new password of `key add` and `key passwd`.
const (
	envNewPasswordFile = "STASIS_NEW_PASSWORD_FILE"
	envNewPassword     = "STASIS_NEW_PASSWORD"
)

// terminal returns stdin when it is a file (a terminal or not: password.Source
// checks), else nil.
func (a *app) terminal() *os.File {
	f, _ := a.stdin.(*os.File)
	return f
}

// passwordFlags names where one repository's password comes from: the
// values of its file and command flags, and, for messages and lookups, the
// names of those flags and of its environment variables (empty: the
// --repo repository's --password-file, --password-command,
// STASIS_PASSWORD_FILE and STASIS_PASSWORD). `copy` has a second set for
// its source (--from-password-file, ...).
type passwordFlags struct {
	file, command         string
	fileFlag, commandFlag string
	fileEnv, passwordEnv  string
}

// passwordSourceOf is where the password of an existing repository comes
// from: the file flag, the file environment variable, the command flag, the
// password environment variable, then a prompt on a terminal.
func (a *app) passwordSourceOf(p passwordFlags) password.Source {
	return password.Source{File: p.file, Command: p.command, Stdin: a.terminal(), Prompt: a.stderr,
		FileFlag: p.fileFlag, CommandFlag: p.commandFlag, FileEnv: p.fileEnv, PasswordEnv: p.passwordEnv}
}

// passwordSource is passwordSourceOf the --repo repository's flags:
// --password-file, STASIS_PASSWORD_FILE, --password-command, STASIS_PASSWORD.
func (a *app) passwordSource() password.Source {
	return a.passwordSourceOf(passwordFlags{file: a.passwordFile, command: a.passwordCommand})
}

// repoPassword returns the OpenOptions.Password callback for dir (the
// --repo repository).
func (a *app) repoPassword(dir string) func(ctx context.Context) ([]byte, error) {
	return a.repoPasswordFrom(dir, a.passwordSource())
}

// repoPasswordFrom returns the OpenOptions.Password callback for dir that
// reads src.
func (a *app) repoPasswordFrom(dir string, src password.Source) func(ctx context.Context) ([]byte, error) {
	return func(ctx context.Context) ([]byte, error) {
		return src.Read(ctx, fmt.Sprintf("enter password for repository %s: ", dir))
	}
}

// newPassword reads the new password of `key add` and `key passwd`: from
// --new-password-file, STASIS_NEW_PASSWORD_FILE, --new-password-command,
// STASIS_NEW_PASSWORD, or asked twice on a terminal.
func (a *app) newPassword(ctx context.Context, file, command string) ([]byte, error) {
	src := password.Source{File: file, Command: command, Stdin: a.terminal(), Prompt: a.stderr,
		FileFlag: "--new-password-file", CommandFlag: "--new-password-command",
		FileEnv: envNewPasswordFile, PasswordEnv: envNewPassword}
	pw, err := src.ReadNew(ctx, "enter the new password: ")
	if errors.Is(err, crypto.ErrNoPassword) {
		return nil, usagef("no new password given: use --new-password-file FILE (or %s=FILE), --new-password-command CMD, or %s=PASSWORD, or run on a terminal to be asked", envNewPasswordFile, envNewPassword)
	}
	return pw, err
}

// initRepo creates the repository dir for `init` and `backup --init`:
// encrypted with a password read from the usual sources (asked twice on a
// terminal), or unencrypted with --insecure-no-password.
func (a *app) initRepo(ctx context.Context, o repo.InitOptions) (*repo.Repository, error) {
	st, err := a.storage(ctx)
	if err != nil {
		return nil, err
	}
	dir := st.Location()
	o.InsecureNoPassword = a.insecureNoPassword
	if !a.insecureNoPassword {
		if ok, err := repo.ObjectExists(ctx, st, "config"); err != nil {
			return nil, fmt.Errorf("init %s: %w", dir, err)
		} else if ok {
			return nil, fmt.Errorf("init %s: %w", dir, repo.ErrExists) // before asking for a password
		}
		pw, err := a.passwordSource().ReadNew(ctx, fmt.Sprintf("enter password for new repository %s: ", dir))
		if err != nil {
			if errors.Is(err, crypto.ErrNoPassword) {
				return nil, fmt.Errorf("init %s: %w; or create an unencrypted repository on purpose with --insecure-no-password", dir, err)
			}
			return nil, fmt.Errorf("init %s: %w", dir, err)
		}
		o.Password, o.KDF = pw, newKDF()
	}
	return repo.Init(ctx, st, o, repo.OpenOptions{CacheDir: a.cacheDir})
}
