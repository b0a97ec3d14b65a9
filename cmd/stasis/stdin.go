package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/cmd/stasis/internal/profile"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/quiesce"
	"github.com/stasisbackup/stasis/repo"
	"golang.org/x/term"
)

// stdinFlags are the flags of `stasis backup` that store a stream as one
// file of the snapshot: a service's own consistent dump (docs/capture.md).
type stdinFlags struct {
	fromCommand bool      // --stdin-from-command: the words after -- are the command
	pipe        bool      // --stdin: read stasis's own standard input
	filename    string    // --stdin-filename
	inWindow    bool      // --stdin-in-window
	argv        []string  // the command, from the arguments after --
	in          io.Reader // with --stdin: stasis's standard input, taken from the app by validate
}

const defaultStdinName = "stdin"

func addStdinFlags(c *cobra.Command, s *stdinFlags) {
	f := c.Flags()
	f.BoolVar(&s.fromCommand, "stdin-from-command", false, "run the command given after -- (no shell) and store its standard output as a file of the snapshot; a failing command makes no snapshot")
	f.BoolVar(&s.pipe, "stdin", false, "store stasis's standard input (a pipe) as a file of the snapshot")
	f.StringVar(&s.filename, "stdin-filename", "", "path of that file in the snapshot (default /"+defaultStdinName+"; relative names are put under /)")
	f.BoolVar(&s.inWindow, "stdin-in-window", false, "run the --stdin-from-command command inside the quiesce window (with --quiesce and --freeze stop): the service stays held until the dump is read")
}

func (s *stdinFlags) any() bool { return s.fromCommand || s.pipe }

// split separates the paths (the arguments before --) from the command of
// --stdin-from-command (the arguments after --).
func (s *stdinFlags) split(c *cobra.Command, args []string) ([]string, error) {
	dash := c.ArgsLenAtDash()
	if !s.fromCommand {
		return args, nil
	}
	if dash < 0 || dash == len(args) {
		return nil, usagef("backup: --stdin-from-command needs the command after --: stasis backup [PATH...] --stdin-filename NAME --stdin-from-command -- CMD [ARG...]")
	}
	s.argv = append([]string(nil), args[dash:]...)
	for _, a := range s.argv[1:] {
		if a == "--stdin-filename" || strings.HasPrefix(a, "--stdin-filename=") {
			return nil, usagef("backup: %s after -- would be passed to %s: give stasis's flags before --: stasis backup [PATH...] --stdin-filename NAME --stdin-from-command -- %s ...",
				a, s.argv[0], s.argv[0])
		}
	}
	return args[:dash], nil
}

// applyProfile fills in the profile's stdin_command, stdin_filename and
// stdin_in_window where the command line did not set them.
func (s *stdinFlags) applyProfile(c *cobra.Command, p *profile.Profile) {
	set := c.Flags().Changed
	if !set("stdin-from-command") && !set("stdin") && len(p.StdinCommand) > 0 {
		s.fromCommand, s.argv = true, append([]string(nil), p.StdinCommand...)
	}
	if !set("stdin-filename") && p.StdinFilename != "" {
		s.filename = p.StdinFilename
	}
	if !set("stdin-in-window") && p.StdinInWindow {
		s.inWindow = true
	}
}

// validate returns a usage error for combinations that cannot work; it
// runs before the repository is opened and before any hook.
func (s *stdinFlags) validate(a *app, q *quiesceFlags, paths []string) error {
	switch {
	case s.fromCommand && s.pipe:
		return usagef("backup: --stdin and --stdin-from-command exclude each other (one stream per snapshot)")
	case s.filename != "" && !s.any():
		return usagef("backup: --stdin-filename only applies with --stdin or --stdin-from-command")
	case s.inWindow && !s.fromCommand:
		return usagef("backup: --stdin-in-window only applies with --stdin-from-command")
	case s.inWindow && q.quiesce == "":
		return usagef("backup: --stdin-in-window needs --quiesce CMD (without it there is no window; the command runs anyway)")
	case s.inWindow && q.freeze != "" && quiesce.Freeze(q.freeze) != quiesce.FreezeStop:
		return usagef("backup: --stdin-in-window needs --freeze stop (in %s mode the service resumes before the backup reads anything)", q.freeze)
	case q.hookTimeout < 0:
		return usagef("backup: --hook-timeout %s is negative", q.hookTimeout)
	}
	if s.pipe {
		if f, ok := a.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			return usagef("backup: --stdin: standard input is a terminal; pipe the data in (pg_dump ... | stasis backup --stdin --stdin-filename NAME)")
		}
		// Standard input is the data: nothing else may read from it (a
		// --password-command inherits the app's stdin, a prompt reads it).
		s.in, a.stdin = a.stdin, nil
	}
	if s.fromCommand {
		if _, err := exec.LookPath(s.argv[0]); err != nil {
			return usagef("backup: --stdin-from-command: %v", err)
		}
	}
	if s.any() {
		abs, err := absPaths(paths)
		if err != nil {
			return err
		}
		if _, err := engine.StdinPath(s.name(), abs); err != nil {
			return usageError{fmt.Errorf("backup: %w", err)}
		}
	}
	return nil
}

func (s *stdinFlags) name() string {
	if s.filename == "" {
		return defaultStdinName
	}
	return s.filename
}

func absPaths(paths []string) ([]string, error) {
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		abs, err := absPath(p)
		if err != nil {
			return nil, err
		}
		out = append(out, abs)
	}
	return out, nil
}

func absPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("path %q: %w", p, err)
	}
	return abs, nil
}

// stdinFile returns the engine's StdinFile for the flags (nil without
// --stdin or --stdin-from-command) and a function to call when the backup
// returned: it stops a command that still runs.
//
// The command runs without a shell, in its own process group, with stasis's
// environment without its secrets (like hooks); its standard input is
// /dev/null, its standard error is copied to stasis's standard error as it
// comes, and it is killed with its group after timeout (--hook-timeout,
// default 5m) or when the backup fails or is interrupted.
func (a *app) stdinFile(s *stdinFlags, timeout time.Duration) (*engine.StdinFile, func()) {
	if s.pipe {
		return &engine.StdinFile{Path: s.name(),
			Open: func(ctx context.Context) (io.Reader, error) { return newCtxReader(ctx, s.in), nil },
			Finish: func(readErr error) (*repo.StdinSource, error) {
				if readErr != nil {
					return nil, fmt.Errorf("no snapshot written: read standard input: %w", readErr)
				}
				return &repo.StdinSource{}, nil
			}}, func() {}
	}
	if !s.fromCommand {
		return nil, func() {}
	}
	var stream *quiesce.Stream
	c := quiesce.Command{Argv: s.argv, Stderr: a.stderr, Timeout: timeout}
	f := &engine.StdinFile{Path: s.name(), InWindow: s.inWindow,
		Open: func(ctx context.Context) (io.Reader, error) {
			fmt.Fprintf(a.stderr, "stasis: stdin command: %s\n", quiesce.QuoteArgv(s.argv))
			var err error
			if stream, err = c.Start(ctx); err != nil {
				return nil, fmt.Errorf("no snapshot written: stdin %w", err)
			}
			return stream, nil
		},
		Finish: func(error) (*repo.StdinSource, error) {
			// The stream's own read errors are part of Wait's verdict.
			res, err := stream.Wait()
			src := &repo.StdinSource{Command: res.Argv, ExitStatus: res.Exit, Started: res.Started, Duration: res.Seconds}
			if err != nil {
				return src, fmt.Errorf("no snapshot written: stdin %w", err)
			}
			return src, nil
		}}
	return f, func() {
		if stream != nil {
			stream.Close()
		}
	}
}

// applyStdinProfile fills in the stdin and report settings of the profile
// at path (already loaded and checked by applyProfile) where the command
// line did not set them.
func applyStdinProfile(c *cobra.Command, path string, s *stdinFlags, rec *backupRun) error {
	if path == "" {
		return nil
	}
	p, err := profile.Load(path)
	if err != nil {
		return usageError{fmt.Errorf("%w (fix the profile)", err)}
	}
	s.applyProfile(c, p)
	rec.applyProfile(c, p)
	return nil
}

// stdinEmpty reports a snapshot whose stdin stream was empty: a warning on
// stderr and exit 3.
func (a *app) stdinEmpty(sn *repo.Snapshot, err error) error {
	for _, p := range sn.Summary.Problems {
		if p.Kind == repo.ProblemWarning && sn.Stdin != nil && p.Path == sn.Stdin.Path {
			what := ""
			if len(sn.Stdin.Command) > 0 {
				what = " (" + quiesce.QuoteArgv(sn.Stdin.Command) + ")"
			}
			fmt.Fprintf(a.stderr, "warning: %s%s: %s\n", quotePath(p.Path), what, p.Error)
		}
	}
	return exitError{exitIncomplete, fmt.Errorf("snapshot %s saved, but: %w", sn.ID.Short(), err)}
}

// ctxReader reads r on a goroutine of its own, so that a Read waiting for a
// pipe whose writer stalls returns once ctx ends (a failed or interrupted
// backup must not wait for it; a read deadline does not work on a blocking
// stdin). The goroutine stays blocked in r.Read until the writer writes or
// closes: stasis exits right after. At most two buffers are in flight.
type ctxReader struct {
	ctx  context.Context
	ch   chan readChunk
	cur  []byte
	err  error
	done bool
}

type readChunk struct {
	data []byte
	err  error
}

const ctxReaderBuf = 256 << 10

func newCtxReader(ctx context.Context, r io.Reader) *ctxReader {
	c := &ctxReader{ctx: ctx, ch: make(chan readChunk, 1)}
	go func() {
		for {
			buf := make([]byte, ctxReaderBuf)
			n, err := r.Read(buf)
			select {
			case c.ch <- readChunk{buf[:n], err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return c
}

func (c *ctxReader) Read(p []byte) (int, error) {
	for len(c.cur) == 0 {
		if c.done {
			return 0, c.err
		}
		select {
		case rc := <-c.ch:
			c.cur = rc.data
			if rc.err != nil {
				c.done, c.err = true, rc.err
			}
		case <-c.ctx.Done():
			return 0, context.Cause(c.ctx)
		}
	}
	n := copy(p, c.cur)
	c.cur = c.cur[n:]
	return n, nil
}
