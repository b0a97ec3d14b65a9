package quiesce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Phase names when a hook runs; it is passed to hooks as STASIS_PHASE.
type Phase string

// Hook phases.
const (
	PhaseQuiesce Phase = "quiesce"
	PhaseResume  Phase = "resume"
)

// SecretEnv names the environment variables that hold or lead to the
// repository's secrets; commands stasis runs (hooks) never inherit them.
// Besides these, every variable whose name starts with STASIS_ and contains
// PASSWORD is withheld (see IsSecretEnv).
var SecretEnv = []string{
	"STASIS_PASSWORD", "STASIS_PASSWORD_FILE", "STASIS_PASSWORD_COMMAND",
	"STASIS_NEW_PASSWORD", "STASIS_NEW_PASSWORD_FILE", "STASIS_NEW_PASSWORD_COMMAND",
	"STASIS_FROM_PASSWORD", "STASIS_FROM_PASSWORD_FILE", "STASIS_FROM_PASSWORD_COMMAND",
	"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
}

// IsSecretEnv reports whether the environment variable name is withheld from
// hooks: one of SecretEnv, or STASIS_*PASSWORD*.
func IsSecretEnv(name string) bool {
	if strings.HasPrefix(name, "STASIS_") && strings.Contains(name, "PASSWORD") {
		return true
	}
	for _, s := range SecretEnv {
		if name == s {
			return true
		}
	}
	return false
}

// Environ returns this process's environment without the secrets
// (IsSecretEnv): the environment a hook starts from.
func Environ() []string {
	env := os.Environ()
	out := make([]string, 0, len(env))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !IsSecretEnv(name) {
			out = append(out, kv)
		}
	}
	return out
}

// Hook is a shell command run at one phase.
type Hook struct {
	Phase   Phase
	Command string        // run as /bin/sh -c Command
	Timeout time.Duration // <= 0 means DefaultHookTimeout
	Grace   time.Duration // between SIGTERM and SIGKILL; <= 0 means DefaultKillGrace
	Repo    string        // STASIS_REPO
	Paths   []string      // STASIS_PATHS, newline-separated
}

// Defaults for hooks.
const (
	DefaultHookTimeout = 5 * time.Minute
	DefaultKillGrace   = 5 * time.Second
)

// HookResult is what one hook run did.
type HookResult struct {
	Phase    Phase   `json:"phase"`
	Command  string  `json:"command"`
	Exit     int     `json:"exit_status"` // -1 when killed by a signal or not started
	Seconds  float64 `json:"duration_seconds"`
	TimedOut bool    `json:"timed_out"`
	Error    string  `json:"error,omitempty"`
}

// OK reports whether the hook exited 0 in time.
func (r HookResult) OK() bool { return r.Error == "" }

// RunHook runs h through /bin/sh -c in its own process group, with combined
// stdout and stderr written to log (may be nil). When the timeout passes or
// ctx is cancelled, the whole group gets SIGTERM, then SIGKILL after the
// grace; RunHook returns once the shell has exited. The returned error is
// nil only for exit status 0; it wraps ErrHookTimeout on timeout and
// ctx.Err() on cancellation. Environment: the caller's without its secrets
// (see Environ) plus STASIS_REPO, STASIS_PATHS and STASIS_PHASE.
func RunHook(ctx context.Context, h Hook, log io.Writer) (HookResult, error) {
	res := HookResult{Phase: h.Phase, Command: h.Command, Exit: -1}
	timeout, grace := h.Timeout, h.Grace
	if timeout <= 0 {
		timeout = DefaultHookTimeout
	}
	if grace <= 0 {
		grace = DefaultKillGrace
	}
	if log == nil {
		log = io.Discard
	}
	fmt.Fprintf(log, "stasis: %s hook: %s\n", h.Phase, h.Command)
	cmd := exec.Command("/bin/sh", "-c", h.Command)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout, cmd.Stderr = log, log
	// A grandchild that escaped the group may hold the output pipe: don't wait for it forever.
	cmd.WaitDelay = grace
	cmd.Env = append(Environ(),
		"STASIS_REPO="+h.Repo,
		"STASIS_PATHS="+strings.Join(h.Paths, "\n"),
		"STASIS_PHASE="+string(h.Phase))
	start := time.Now()
	if err := cmd.Start(); err != nil {
		res.Error = err.Error()
		return res, fmt.Errorf("%s hook %q: start: %w", h.Phase, h.Command, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var waitErr, why error
	select {
	case waitErr = <-done:
	case <-timer.C:
		res.TimedOut = true
		why = fmt.Errorf("%w after %s", ErrHookTimeout, timeout)
	case <-ctx.Done():
		why = ctx.Err()
	}
	if why != nil {
		waitErr = killGroup(cmd.Process.Pid, done, grace)
	}
	res.Seconds = time.Since(start).Seconds()
	if cmd.ProcessState != nil && cmd.ProcessState.Exited() {
		res.Exit = cmd.ProcessState.ExitCode()
	}
	var err error
	switch {
	case why != nil:
		err = fmt.Errorf("%s hook %q: killed (process group %d): %w", h.Phase, h.Command, cmd.Process.Pid, why)
	case waitErr != nil:
		var ee *exec.ExitError
		if errors.As(waitErr, &ee) {
			err = fmt.Errorf("%s hook %q failed: %w (its output is in the log)", h.Phase, h.Command, waitErr)
		} else {
			err = fmt.Errorf("%s hook %q: %w", h.Phase, h.Command, waitErr)
		}
	}
	if err != nil {
		res.Error = err.Error()
		fmt.Fprintf(log, "stasis: %v\n", err)
	}
	return res, err
}
