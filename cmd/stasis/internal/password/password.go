// Package password is the CLI's password policy: where the password of a
// repository comes from (a file, a command, an environment variable, or a
// prompt on a terminal, in this order) and how it is read. The
// cryptography that uses it (key derivation, key files) is repo/crypto's,
// which takes the password as bytes.
package password

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/stasisbackup/stasis/repo/crypto"
	"golang.org/x/term"
)

// Environment variables read by Source.
const (
	EnvFile     = "STASIS_PASSWORD_FILE"
	EnvPassword = "STASIS_PASSWORD"
)

// Source says where a repository password comes from. Read tries, in
// this order, and uses the first that is set:
//
//  1. File (the --password-file flag), or else the file named by STASIS_PASSWORD_FILE;
//  2. Command (the --password-command flag), run with /bin/sh -c, its stdout;
//  3. the STASIS_PASSWORD environment variable;
//  4. a prompt without echo, when Stdin is a terminal.
//
// From a file or a command, one trailing newline ("\n" or "\r\n") is removed.
// An empty password is an error.
type Source struct {
	// File is the --password-file flag; empty if not given.
	File string
	// Command is the --password-command flag; empty if not given.
	Command string
	// Env looks up environment variables; nil means os.Getenv.
	Env func(string) string
	// Stdin is where a prompt reads from, and the command's stdin; nil means
	// none: no prompt is possible and the command gets no input.
	Stdin *os.File
	// Prompt is where the prompt is written; nil means os.Stderr.
	Prompt io.Writer
	// FileFlag and CommandFlag name the flags File and Command came from,
	// for messages; empty means --password-file and --password-command
	// (`copy` reads its source's password from --from-password-file, ...).
	FileFlag, CommandFlag string
	// FileEnv and PasswordEnv name the environment variables read instead
	// of STASIS_PASSWORD_FILE and STASIS_PASSWORD; empty means those.
	FileEnv, PasswordEnv string
}

// Read returns the password from the first source that is set (see
// Source), asking with prompt on a terminal. With no source and no
// terminal it returns crypto.ErrNoPassword.
func (s Source) Read(ctx context.Context, prompt string) ([]byte, error) {
	return s.read(ctx, prompt, false)
}

// ReadNew is Read for a new password (init, key add, key passwd): on a
// terminal it asks twice and fails if the two answers differ. Other sources
// are read once.
func (s Source) ReadNew(ctx context.Context, prompt string) ([]byte, error) {
	return s.read(ctx, prompt, true)
}

func (s Source) read(ctx context.Context, prompt string, confirm bool) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	env := s.Env
	if env == nil {
		env = os.Getenv
	}
	fileEnv, pwEnv := cmp.Or(s.FileEnv, EnvFile), cmp.Or(s.PasswordEnv, EnvPassword)
	switch {
	case s.File != "":
		return readPasswordFile(s.File, cmp.Or(s.FileFlag, "--password-file"))
	case env(fileEnv) != "":
		return readPasswordFile(env(fileEnv), fileEnv)
	case s.Command != "":
		return s.runCommand(ctx)
	case env(pwEnv) != "":
		return []byte(env(pwEnv)), nil
	case s.Stdin != nil && term.IsTerminal(int(s.Stdin.Fd())):
		return s.prompt(prompt, confirm)
	}
	return nil, fmt.Errorf("%w: use %s FILE (or %s=FILE), %s CMD, or %s=PASSWORD, or run on a terminal to be asked",
		crypto.ErrNoPassword, cmp.Or(s.FileFlag, "--password-file"), fileEnv, cmp.Or(s.CommandFlag, "--password-command"), pwEnv)
}

func readPasswordFile(name, from string) ([]byte, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read password file %s (from %s): %w", name, from, err)
	}
	pw := trimNewline(data)
	if len(pw) == 0 {
		return nil, fmt.Errorf("password file %s (from %s) is empty; put the password in it", name, from)
	}
	return pw, nil
}

// maxCommandStderr bounds how much of a failed command's stderr an error quotes.
const maxCommandStderr = 1024

func (s Source) runCommand(ctx context.Context) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", s.Command)
	if s.Stdin != nil {
		cmd.Stdin = s.Stdin
	}
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > maxCommandStderr {
			msg = msg[:maxCommandStderr] + "..."
		}
		if msg != "" {
			msg = ": " + msg
		}
		return nil, fmt.Errorf("password command %q failed (%v)%s; fix the command given with %s", s.Command, err, msg, cmp.Or(s.CommandFlag, "--password-command"))
	}
	pw := trimNewline(stdout.Bytes())
	if len(pw) == 0 {
		return nil, fmt.Errorf("password command %q printed no password", s.Command)
	}
	return pw, nil
}

func (s Source) prompt(prompt string, confirm bool) ([]byte, error) {
	w := s.Prompt
	if w == nil {
		w = os.Stderr
	}
	ask := func(p string) ([]byte, error) {
		fmt.Fprint(w, p)
		pw, err := term.ReadPassword(int(s.Stdin.Fd()))
		fmt.Fprintln(w)
		if err != nil {
			return nil, fmt.Errorf("read password from terminal: %w", err)
		}
		return pw, nil
	}
	pw, err := ask(prompt)
	if err != nil {
		return nil, err
	}
	if len(pw) == 0 {
		return nil, errors.New("empty password refused")
	}
	if confirm {
		again, err := ask("enter the password again: ")
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(pw, again) {
			return nil, errors.New("the two passwords differ; nothing was changed, try again")
		}
	}
	return pw, nil
}

// trimNewline removes one trailing "\n" or "\r\n".
func trimNewline(b []byte) []byte {
	if b, ok := bytes.CutSuffix(b, []byte("\n")); ok {
		return bytes.TrimSuffix(b, []byte("\r"))
	}
	return b
}
