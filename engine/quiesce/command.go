package quiesce

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Command is a program stasis runs for the operator without a shell, such
// as a service's dump tool whose standard output is backed up (`backup
// --stdin-from-command`). It runs the way hooks do (RunHook): in its own
// process group, with the environment of Environ unless Env is set, and
// when Timeout passes or the context is cancelled the whole group gets
// SIGTERM, then SIGKILL after Grace.
type Command struct {
	Argv    []string      // program and arguments; Argv[0] is looked up in $PATH
	Env     []string      // nil: Environ() (this process's environment without secrets)
	Stdin   io.Reader     // nil: /dev/null
	Stderr  io.Writer     // the command's standard error is copied here as it comes (nil: only kept, see CommandResult.StderrTail)
	Timeout time.Duration // <= 0 means DefaultHookTimeout
	Grace   time.Duration // between SIGTERM and SIGKILL; <= 0 means DefaultKillGrace
}

// CommandResult is what a Command did.
type CommandResult struct {
	Argv     []string  `json:"command"`
	Exit     int       `json:"exit_status"` // -1 when killed by a signal or not started
	Signal   string    `json:"signal,omitempty"`
	TimedOut bool      `json:"timed_out,omitempty"`
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"duration_seconds"`
	// StderrTail is the end of the command's standard error: at most
	// StderrTailLines lines and StderrTailBytes bytes.
	StderrTail string `json:"-"`
}

// Limits of CommandResult.StderrTail.
const (
	StderrTailLines = 20
	StderrTailBytes = 4 << 10
)

// ErrCommandFailed is matched by the error of a Command that did not exit
// with status 0 in time (or whose output could not be read to its end).
var ErrCommandFailed = errors.New("command failed")

// Stream is a started Command whose standard output is read through it.
// Read it to its end (io.EOF), then call Wait; Close (always, deferred)
// kills the process group if it still runs and releases the pipe.
type Stream struct {
	c       Command
	cmd     *exec.Cmd
	out     *os.File // read end of the stdout pipe
	tail    *tailBuffer
	res     CommandResult
	eof     chan struct{} // closed when Read returned an error (io.EOF or another)
	eofOnce sync.Once
	readErr error
	stop    context.CancelFunc
	done    chan struct{} // closed when the supervisor is finished; then waitErr, why are set
	waitErr error
	why     error
}

// Start starts c with its standard output connected to the returned
// Stream. The timeout counts from now and covers the whole run: the
// program's exit and the end of its output (a process it started that
// still holds the output counts as the command running). Cancelling ctx
// kills the group as a timeout does.
func (c Command) Start(ctx context.Context) (*Stream, error) {
	if len(c.Argv) == 0 {
		return nil, errors.New("command: no program given")
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultHookTimeout
	}
	if c.Grace <= 0 {
		c.Grace = DefaultKillGrace
	}
	s := &Stream{c: c, tail: &tailBuffer{}, eof: make(chan struct{}), done: make(chan struct{}),
		res: CommandResult{Argv: append([]string(nil), c.Argv...), Exit: -1}}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("command %s: output pipe: %w", QuoteArgv(c.Argv), err)
	}
	cmd := exec.Command(c.Argv[0], c.Argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdin = c.Stdin
	cmd.Stdout = w // an *os.File: the child writes into the pipe directly, Wait does not copy it
	if c.Stderr != nil {
		cmd.Stderr = io.MultiWriter(c.Stderr, s.tail)
	} else {
		cmd.Stderr = s.tail
	}
	// A process that left the group may hold stderr: do not wait for it forever.
	cmd.WaitDelay = c.Grace
	cmd.Env = c.Env
	if cmd.Env == nil {
		cmd.Env = Environ()
	}
	s.res.Started = time.Now()
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("command %s: start: %w", QuoteArgv(c.Argv), err)
	}
	w.Close() // the child has its own copy; EOF comes when every holder closed it
	s.cmd, s.out = cmd, r
	ctx, s.stop = context.WithCancel(ctx)
	go s.supervise(ctx)
	return s, nil
}

// Read reads the command's standard output.
func (s *Stream) Read(p []byte) (int, error) {
	n, err := s.out.Read(p)
	if err != nil {
		s.eofOnce.Do(func() {
			if err != io.EOF {
				s.readErr = err
			}
			close(s.eof)
		})
	}
	return n, err
}

// supervise waits for the program to exit and its output to end; on
// timeout or cancellation it kills the process group (see killGroup) and,
// should the output still be held open after the grace, closes it so that
// Read returns.
func (s *Stream) supervise(ctx context.Context) {
	defer close(s.done)
	exited := make(chan error, 1)
	go func() { exited <- s.cmd.Wait() }()
	timer := time.NewTimer(s.c.Timeout)
	defer timer.Stop()
	var hasExited, hasEOF bool
	for !(hasExited && hasEOF) && s.why == nil {
		select {
		case s.waitErr = <-exited:
			hasExited = true
		case <-s.eof:
			hasEOF = true
		case <-timer.C:
			s.res.TimedOut = true
			s.why = fmt.Errorf("timed out after %s", s.c.Timeout)
		case <-ctx.Done():
			s.why = ctx.Err()
		}
	}
	if s.why == nil {
		return
	}
	if !hasExited {
		s.waitErr = killGroup(s.cmd.Process.Pid, exited, s.c.Grace)
	} else {
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL) // what is left of the group holds the output
	}
	if !hasEOF {
		select {
		case <-s.eof:
		case <-time.After(s.c.Grace):
			s.out.Close() // a process outside the group holds it: make Read return
		}
	}
}

// killGroup sends SIGTERM to the process group pgid, SIGKILL after grace,
// and returns the result of the leader's Wait, read from exited, once the
// rest of the group is gone too (see groupGone).
func killGroup(pgid int, exited <-chan error, grace time.Duration) error {
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	kill := time.NewTimer(grace)
	defer kill.Stop()
	var err error
	select {
	case err = <-exited:
		if !groupGone(pgid, grace) {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			groupGone(pgid, grace)
		}
	case <-kill.C:
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		err = <-exited
		groupGone(pgid, grace)
	}
	return err
}

// groupGone waits up to limit for the last live process of group pgid to
// go (a signalled process dies when it next runs, not when kill returns)
// and reports whether it went. Zombies do not count: a killed member whose
// new parent does not reap it is gone all the same.
func groupGone(pgid int, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for groupAlive(pgid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond) // polling the kernel: no event says a group emptied
	}
	return true
}

// groupAlive reports whether a process of group pgid that is not a zombie
// exists, from /proc/PID/stat ("PID (COMM) STATE PPID PGRP ...").
func groupAlive(pgid int) bool {
	if syscall.Kill(-pgid, 0) != nil {
		return false // no member at all
	}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return true // cannot tell: assume it lives (the caller's wait is bounded)
	}
	for _, d := range dirs {
		if d.Name()[0] < '0' || d.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:])) // STATE PPID PGRP ...
		if len(f) >= 3 && f[0] != "Z" && f[0] != "X" && f[2] == strconv.Itoa(pgid) {
			return true
		}
	}
	return false
}

// Wait waits for the command to end and returns what it did. The error
// is nil only when it exited with status 0, in time, and its output was
// read to its end; otherwise it matches ErrCommandFailed and names the
// command, its exit status or signal, and ends with the tail of its
// standard error. Call Wait after Read returned io.EOF (or an error);
// called earlier it waits for the timeout.
func (s *Stream) Wait() (CommandResult, error) {
	<-s.done
	res := s.res
	res.Seconds = time.Since(res.Started).Seconds()
	res.StderrTail = s.tail.Tail(StderrTailLines, StderrTailBytes)
	if ps := s.cmd.ProcessState; ps != nil {
		if ps.Exited() {
			res.Exit = ps.ExitCode()
		} else if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.Signal = SignalName(ws.Signal())
		}
	}
	var what string
	switch {
	case res.TimedOut:
		what = fmt.Sprintf("%v; its process group was killed", s.why)
	case s.why != nil:
		what = fmt.Sprintf("stopped (%v); its process group was killed", s.why)
	case res.Signal != "":
		what = "killed by signal " + res.Signal
	case res.Exit != 0:
		what = fmt.Sprintf("exited with status %d", res.Exit)
	case s.waitErr != nil:
		what = s.waitErr.Error() // e.g. its stderr still held open by a process it started
	case s.readErr != nil:
		what = fmt.Sprintf("reading its output: %v", s.readErr)
	default:
		return res, nil
	}
	if res.Signal != "" && s.why != nil {
		what += " (" + res.Signal + ")"
	}
	msg := fmt.Sprintf("%s %s", QuoteArgv(res.Argv), what)
	if res.StderrTail != "" {
		msg += "; the end of its standard error:\n" + indent(res.StderrTail, "  ")
	} else {
		msg += " (it wrote nothing to standard error)"
	}
	return res, fmt.Errorf("%w: %s", ErrCommandFailed, msg)
}

// Close kills the command's process group if it still runs, waits for it,
// and closes the output pipe. It is safe to call after Wait, and more than
// once.
func (s *Stream) Close() error {
	s.stop()
	<-s.done
	s.eofOnce.Do(func() { close(s.eof) })
	return s.out.Close()
}

// Run runs c to its end with its standard output copied to stdout (nil:
// discarded) and returns Wait's result.
func (c Command) Run(ctx context.Context, stdout io.Writer) (CommandResult, error) {
	s, err := c.Start(ctx)
	if err != nil {
		return CommandResult{Argv: c.Argv, Exit: -1}, err
	}
	defer s.Close()
	if stdout == nil {
		stdout = io.Discard
	}
	_, cerr := io.Copy(stdout, s)
	res, err := s.Wait()
	if err == nil && cerr != nil {
		err = fmt.Errorf("%w: %s: copy its output: %w", ErrCommandFailed, QuoteArgv(c.Argv), cerr)
	}
	return res, err
}

// SignalName returns "SIGKILL" for syscall.SIGKILL, and so on.
func SignalName(sig syscall.Signal) string {
	switch sig {
	case syscall.SIGHUP:
		return "SIGHUP"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGQUIT:
		return "SIGQUIT"
	case syscall.SIGABRT:
		return "SIGABRT"
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGSEGV:
		return "SIGSEGV"
	case syscall.SIGPIPE:
		return "SIGPIPE"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGBUS:
		return "SIGBUS"
	}
	return fmt.Sprintf("signal %d (%s)", int(sig), sig)
}

// QuoteArgv shows argv the way a shell would take it back: words with
// spaces or shell metacharacters are single-quoted.
func QuoteArgv(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && !strings.ContainsFunc(a, func(r rune) bool {
			return !(r == '-' || r == '_' || r == '.' || r == '/' || r == '=' || r == ':' || r == ',' || r == '+' || r == '@' || r == '%' ||
				'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9')
		}) {
			out[i] = a
			continue
		}
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n")
}

// tailBuffer keeps the last bytes written to it.
type tailBuffer struct {
	mu        sync.Mutex
	buf       []byte
	truncated bool
}

const tailKeep = 2 * StderrTailBytes

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*tailKeep {
		t.buf = append(t.buf[:0:0], t.buf[len(t.buf)-tailKeep:]...)
		t.truncated = true
	}
	return len(p), nil
}

// Tail returns at most the last lines lines and max bytes, with a line
// saying how much came before when something was left out.
func (t *tailBuffer) Tail(lines, max int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := strings.TrimRight(string(t.buf), "\n")
	cut := t.truncated
	if len(b) > max {
		b, cut = b[len(b)-max:], true
		if i := strings.IndexByte(b, '\n'); i >= 0 && i < len(b)-1 {
			b = b[i+1:] // start at a line
		}
	}
	if ls := strings.Split(b, "\n"); len(ls) > lines {
		b, cut = strings.Join(ls[len(ls)-lines:], "\n"), true
	}
	if b == "" {
		return ""
	}
	if cut {
		b = "[... earlier lines left out; last " + strconv.Itoa(strings.Count(b, "\n")+1) + " lines:]\n" + b
	}
	return b + "\n"
}
