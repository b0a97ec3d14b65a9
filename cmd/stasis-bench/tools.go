package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Tool runs one backup program through the scenarios. Every command it
// builds is a child process measured by measure.
type Tool struct {
	Name     string
	Bin      string
	Repo     string   // repository directory (its du is the repository size)
	Scratch  []string // caches and homes removed with the repository
	Env      []string
	Settings string // compression, encryption and caches, for the notes of run
	// S3Settings is Settings for the notes of s3, which reports the
	// repository's size rather than its growth.
	S3Settings string

	versionArgs []string             // the arguments that print its version
	initArgs    []string             // creates the repository
	setupArgs   [][]string           // commands run after initArgs (kopia's global policy)
	source      string               // the path of the last backup
	backupArgs  func(n int) []string // n: the backup's sequence number
	restoreArgs func(n int, target, only string) []string
	restoreDir  bool // the restore runs with the target as working directory (borg extract)
	// restoreParents: the restore writes to TARGET/PATH and needs the
	// directories above it (kopia restore PATH TARGET/PATH).
	restoreParents bool
	backups        int
}

func (t *Tool) command(ctx context.Context, dir string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, t.Bin, args...)
	c.Env = append(os.Environ(), t.Env...)
	c.Dir = dir
	return c
}

// Reset removes the repository and caches and creates an empty repository
// (not measured).
func (t *Tool) Reset(ctx context.Context) error {
	if err := os.RemoveAll(t.Repo); err != nil {
		return fmt.Errorf("%s: reset %s: %w", t.Name, t.Repo, err)
	}
	return t.initFresh(ctx)
}

// initFresh empties the caches and creates the repository (whose place is
// empty already).
func (t *Tool) initFresh(ctx context.Context) error {
	for _, d := range t.Scratch {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("%s: reset %s: %w", t.Name, d, err)
		}
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("%s: %w", t.Name, err)
		}
	}
	t.backups = 0
	for _, args := range append([][]string{t.initArgs}, t.setupArgs...) {
		out, err := t.command(ctx, "", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: init repository %s (%s): %w\n%s", t.Name, t.Repo, strings.Join(args, " "), err, tail(string(out), 2000))
		}
	}
	return nil
}

// Backup returns the command of the next backup of path.
func (t *Tool) Backup(ctx context.Context, path string) *exec.Cmd {
	t.backups++
	t.source = path
	return t.command(ctx, "", append(t.backupArgs(t.backups), path)...)
}

// Restore returns the command that restores the latest snapshot into target,
// or only the file only (an absolute path as backed up) when it is not "".
func (t *Tool) Restore(ctx context.Context, target, only string) *exec.Cmd {
	dir := ""
	if t.restoreDir {
		dir = target
	}
	if t.restoreParents {
		what := t.source
		if only != "" {
			what = only
		}
		os.MkdirAll(filepath.Join(target, filepath.Dir(what)), 0o755) // a failure shows in the restore's own error
	}
	return t.command(ctx, dir, t.restoreArgs(t.backups, target, only)...)
}

// Version asks the tool for its version line.
func (t *Tool) Version(ctx context.Context) string {
	out, err := t.command(ctx, "", t.versionArgs...).Output()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

// newStasis sets up stasis. Its repository is unencrypted when the stasis
// under test can be told so (init --insecure-no-password), like borg's
// --encryption none; encrypt makes it use a password instead.
func newStasis(ctx context.Context, bin, work string, encrypt bool) *Tool {
	cache := filepath.Join(work, "cache-stasis")
	t := &Tool{Name: "stasis", Bin: bin, Repo: filepath.Join(work, "repo-stasis"), Scratch: []string{cache},
		Env: []string{"STASIS_PASSWORD=stasis-bench", "STASIS_REPO=" + filepath.Join(work, "repo-stasis"), "STASIS_CACHE_DIR=" + cache}}
	t.versionArgs = []string{"version"}
	t.initArgs = []string{"init"}
	help, _ := t.command(ctx, "", "init", "--help").CombinedOutput()
	switch {
	case strings.Contains(string(help), "--insecure-no-password") && !encrypt:
		t.initArgs = append(t.initArgs, "--insecure-no-password")
		t.Settings = "zstd level 2 per blob (repository default), not encrypted (`init --insecure-no-password`), client cache in the work directory (not counted in growth)"
	case strings.Contains(string(help), "--insecure-no-password"):
		t.Settings = "zstd level 2 per blob (repository default), encrypted (password from STASIS_PASSWORD), client cache in the work directory (not counted in growth)"
	default:
		t.Settings = "zstd level 2 per blob (repository default); this stasis has no encryption; client cache in the work directory (not counted in growth)"
	}
	t.S3Settings = t.Settings
	t.backupArgs = func(int) []string { return []string{"backup"} }
	t.restoreArgs = func(_ int, target, only string) []string {
		a := []string{"restore", "latest", "--target", target}
		if only != "" {
			a = append(a, "--include", only)
		}
		return a
	}
	return t
}

// newRestic sets up restic, called name (its repository and cache are
// named after it): repository format 2 (compression), password file (restic
// always encrypts), cache in the work directory.
func newRestic(name, bin, work string) *Tool {
	pass := filepath.Join(work, "restic-password")
	os.WriteFile(pass, []byte("stasis-bench\n"), 0o600)
	cache := filepath.Join(work, "cache-"+name)
	repo := filepath.Join(work, "repo-"+name)
	t := &Tool{Name: name, Bin: bin, Repo: repo, Scratch: []string{cache},
		Env: []string{"RESTIC_REPOSITORY=" + repo, "RESTIC_PASSWORD_FILE=" + pass,
			"RESTIC_CACHE_DIR=" + cache},
		Settings:   "repository version 2, `--compression auto` (its default: zstd, fastest level), AES-256-CTR + Poly1305 encryption (always on), local cache (not counted in growth)",
		S3Settings: "repository version 2, `--compression auto` (its default: zstd, fastest level), AES-256-CTR + Poly1305 encryption (always on), local cache (RESTIC_CACHE_DIR in the work directory; not counted in the repository size)"}
	t.versionArgs = []string{"version"}
	t.initArgs = []string{"init", "--repository-version", "2"}
	t.backupArgs = func(int) []string { return []string{"backup", "--quiet", "--host", "bench"} }
	t.restoreArgs = func(_ int, target, only string) []string {
		a := []string{"restore", "latest", "--quiet", "--target", target}
		if only != "" {
			a = append(a, "--include", only)
		}
		return a
	}
	return t
}

// newKopia sets up kopia, called name: a filesystem repository, encrypted
// (always; the password from KOPIA_PASSWORD), compression zstd-fastest set
// as the global policy, config, cache and logs in the work directory, no
// update check. A restore of a path restores the latest snapshot holding it
// (kopia restore PATH TARGET), into TARGET/PATH as the other tools do.
func newKopia(name, bin, work string) *Tool {
	home := filepath.Join(work, "home-"+name)
	repo := filepath.Join(work, "repo-"+name)
	t := &Tool{Name: name, Bin: bin, Repo: repo, Scratch: []string{home}, restoreParents: true,
		Env: []string{"KOPIA_PASSWORD=stasis-bench", "KOPIA_CONFIG_PATH=" + filepath.Join(home, "repository.config"),
			"KOPIA_CACHE_DIRECTORY=" + filepath.Join(home, "cache"), "KOPIA_LOG_DIR=" + filepath.Join(home, "logs"),
			"KOPIA_CHECK_FOR_UPDATES=false"},
		Settings: "filesystem repository, `--compression zstd-fastest` (global policy; kopia's default is none), AES-256-GCM encryption (always on), cache and logs in the work directory (not counted in growth)"}
	t.versionArgs = []string{"--version"}
	t.initArgs = []string{"repository", "create", "filesystem", "--path", repo}
	t.setupArgs = [][]string{{"policy", "set", "--global", "--compression", "zstd-fastest"}}
	t.backupArgs = func(int) []string { return []string{"snapshot", "create"} }
	t.restoreArgs = func(_ int, target, only string) []string {
		src := t.source
		if only != "" {
			src = only
		}
		return []string{"restore", src, filepath.Join(target, src)}
	}
	return t
}

// newBorg sets up borg: `--encryption none`, the given compression, all of
// borg's config, cache and security state under the work directory.
func newBorg(bin, work, compression string) *Tool {
	base := filepath.Join(work, "borg-home")
	repo := filepath.Join(work, "repo-borg")
	t := &Tool{Name: "borg", Bin: bin, Repo: repo, Scratch: []string{base}, restoreDir: true,
		Env: []string{"BORG_REPO=" + repo, "BORG_BASE_DIR=" + base, "BORG_PASSPHRASE=",
			"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK=yes"},
		Settings: fmt.Sprintf("`--encryption none`, `--compression %s` (borg's default is lz4), files and chunks cache under BORG_BASE_DIR (not counted in growth)", compression)}
	t.versionArgs = []string{"--version"}
	t.initArgs = []string{"init", "--encryption", "none"}
	t.backupArgs = func(n int) []string {
		return []string{"create", "--compression", compression, fmt.Sprintf("::run-%03d", n)}
	}
	t.restoreArgs = func(n int, _, only string) []string {
		a := []string{"extract", fmt.Sprintf("::run-%03d", n)}
		if only != "" {
			a = append(a, strings.TrimPrefix(only, "/"))
		}
		return a
	}
	return t
}

// stasisAt sets up stasis (newStasis) with its repository at repo and, when
// cache is not "", its client cache at cache.
func stasisAt(ctx context.Context, bin, work, repo, cache string, encrypt bool) *Tool {
	t := newStasis(ctx, bin, work, encrypt)
	t.Repo = repo
	t.Env = append(t.Env, "STASIS_REPO="+repo)
	if cache != "" {
		t.Env = append(t.Env, "STASIS_CACHE_DIR="+cache)
	}
	return t
}
