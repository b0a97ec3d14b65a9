// Package profile reads a backup profile: a small TOML file naming the
// repository, paths, quiesce hooks and freeze mode of one backup job, so that
// a daily timer runs `stasis backup --profile FILE`. Command-line flags given
// alongside a profile override its values (the CLI's job, not this package's).
//
// Example (docs/examples/zoomserv.toml):
//
//	repository    = "/backup/stasis"
//	paths         = ["/srv/zoomserv"]
//	quiesce       = "systemctl stop zoomit"
//	resume        = "systemctl start zoomit"
//	freeze        = "reflink"
//	quiesce_paths = ["X500.db", "X500.log"]
package profile

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Profile is one backup job. Zero values mean "not set": the CLI's defaults
// apply.
type Profile struct {
	Repository  string   `toml:"repository"`
	Paths       []string `toml:"paths"`
	Excludes    []string `toml:"excludes"`
	DBGlob      []string `toml:"db_glob"` // files chunked with the db profile
	Host        string   `toml:"host"`
	Tags        []string `toml:"tags"`
	Quiesce     string   `toml:"quiesce"`
	Resume      string   `toml:"resume"`
	HookTimeout Duration `toml:"hook_timeout"` // e.g. "2m"
	Freeze      string   `toml:"freeze"`       // stop | copy | reflink | snapshot
	Staging     string   `toml:"staging"`
	// SnapshotBackend is --snapshot-backend (freeze snapshot); the CLI
	// checks the name.
	SnapshotBackend string   `toml:"snapshot_backend"`
	QuiescePaths    []string `toml:"quiesce_paths"`
	OnOpen          string   `toml:"on_open"` // warn | fail
	Retries         *int     `toml:"retries"` // nil = not set
	// A service's own dump stored as a file of the snapshot
	// (--stdin-from-command, --stdin-filename, --stdin-in-window): the
	// program and its arguments, run without a shell.
	StdinCommand  []string `toml:"stdin_command"`
	StdinFilename string   `toml:"stdin_filename"`
	StdinInWindow bool     `toml:"stdin_in_window"`
	// After every run: --metrics-file and --notify-command.
	MetricsFile   string `toml:"metrics_file"`
	NotifyCommand string `toml:"notify_command"`
}

// Duration is a time.Duration written as a Go duration string ("90s", "2m").
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: want a form like 90s or 2m", b)
	}
	d.Duration = v
	return nil
}

// Load reads and validates the profile at path. Unknown keys, wrong types,
// an unknown freeze or on_open value, a negative retries or hook_timeout, a
// missing repository, no paths and no stdin_command, and stdin_filename or
// stdin_in_window without stdin_command are errors naming the file and the
// key.
func Load(path string) (*Profile, error) {
	var p Profile
	md, err := toml.DecodeFile(path, &p)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("profile %s: unknown key %s (known: repository, paths, excludes, db_glob, host, tags, quiesce, resume, hook_timeout, freeze, staging, snapshot_backend, quiesce_paths, on_open, retries, stdin_command, stdin_filename, stdin_in_window, metrics_file, notify_command)",
			path, strings.Join(keys, ", "))
	}
	if err := p.validate(); err != nil {
		return nil, fmt.Errorf("profile %s: %w", path, err)
	}
	return &p, nil
}

func (p *Profile) validate() error {
	var errs []error
	if p.Repository == "" {
		errs = append(errs, errors.New("key repository: missing"))
	}
	if len(p.Paths) == 0 && len(p.StdinCommand) == 0 {
		errs = append(errs, errors.New("key paths: missing (list the directories to back up, or give stdin_command)"))
	}
	if p.StdinFilename != "" && len(p.StdinCommand) == 0 {
		errs = append(errs, errors.New("key stdin_filename: set without stdin_command"))
	}
	if p.StdinInWindow && len(p.StdinCommand) == 0 {
		errs = append(errs, errors.New("key stdin_in_window: set without stdin_command"))
	}
	switch p.Freeze {
	case "", "stop", "copy", "reflink", "snapshot":
	default:
		errs = append(errs, fmt.Errorf("key freeze: %q, want stop, copy, reflink or snapshot", p.Freeze))
	}
	switch p.OnOpen {
	case "", "warn", "fail":
	default:
		errs = append(errs, fmt.Errorf("key on_open: %q, want warn or fail", p.OnOpen))
	}
	if p.Retries != nil && *p.Retries < 0 {
		errs = append(errs, fmt.Errorf("key retries: %d, want 0 or more", *p.Retries))
	}
	if p.HookTimeout.Duration < 0 {
		errs = append(errs, fmt.Errorf("key hook_timeout: %s is negative", p.HookTimeout.Duration))
	}
	if p.Resume != "" && p.Quiesce == "" {
		errs = append(errs, errors.New("key resume: set without quiesce"))
	}
	return errors.Join(errs...)
}
