package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/crypto"
)

// The library's errors name no flag; with the CLI's hints they read as
// they did when the library wrote the hints itself, wrapped or not, and
// still match what they matched.
func TestHintsRestoreTheMessages(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	_, openErr := repo.Open(context.Background(), enginetest.Local(dir), repo.OpenOptions{})
	_, initErr := repo.Init(context.Background(), enginetest.Local(dir), repo.InitOptions{}, repo.OpenOptions{})
	_, forgetErr := engine.Forget(context.Background(), nil, engine.ForgetOptions{})
	var sn blob.ID
	sn[0] = 0x12
	eio := errors.New("input/output error")
	for _, c := range []struct {
		err  error
		want string
		is   error
	}{
		{openErr, fmt.Sprintf("%s: no stasis repository (create one with `stasis init --repo %s`)", dir, dir), repo.ErrNoRepository},
		{initErr, fmt.Sprintf("init %s: %v (or create an unencrypted repository on purpose with --insecure-no-password)", dir, crypto.ErrNoPassword), crypto.ErrNoPassword},
		{forgetErr, "forget: no keep rule given; pass at least one --keep-* flag", engine.ErrNoKeepRule},
		{fmt.Errorf("restore: %w", fmt.Errorf("%s: %w", "/srv/target", engine.ErrTargetNotEmpty)),
			"restore: /srv/target: target directory is not empty (choose an empty directory, or give --overwrite to replace files in it)", engine.ErrTargetNotEmpty},
		{&engine.CopySourceError{Snapshot: sn, File: "/srv/x", Source: "/backup/a", Err: eio},
			"copy snapshot " + sn.Short() + ": file /srv/x: input/output error (run `stasis check --read-data` on /backup/a)", eio},
		{fmt.Errorf("prune: %w", &repo.RepackError{Pack: "abcd", Err: eio}), "prune: repack abcd: input/output error (run `stasis check --read-data`)", eio},
		{&repo.RepackError{Pack: "abcd", Blob: true, Err: eio},
			"repack abcd: input/output error; nothing was deleted (run `stasis check --read-data`, then `stasis repair`)", eio},
		{fmt.Errorf("open: %w", &repo.CacheDirError{Err: eio}), "open: find a cache directory (set --cache-dir or STASIS_CACHE_DIR): input/output error", eio},
		{&repo.CacheDirError{Dir: "/c", Err: fs.ErrPermission},
			"create cache directory /c: permission denied (choose another with --cache-dir or STASIS_CACHE_DIR)", fs.ErrPermission},
	} {
		if c.err == nil {
			t.Errorf("no error, want %q", c.want)
			continue
		}
		got := withHints(c.err)
		if got.Error() != c.want {
			t.Errorf("with hints:\n%s\nwant:\n%s", got, c.want)
		}
		if lib := c.err.Error(); strings.Contains(lib, "--") {
			t.Errorf("the library names a flag: %s", lib)
		}
		if !errors.Is(got, c.is) {
			t.Errorf("%s does not match %v any more", got, c.is)
		}
	}
	if err := errors.New("plain"); withHints(err) != err {
		t.Error("an error without hints is changed")
	}
	if withHints(nil) != nil {
		t.Error("nil is not nil with hints")
	}
}

// What a user sees: restore into a directory that is not empty names
// --overwrite.
func TestHintsRestoreIntoNonEmptyTarget(t *testing.T) {
	setupEnv(t)
	src := sampleTree(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "backup", "--init", "--repo", repoDir, src)
	target := t.TempDir()
	mustRun(t, "restore", "latest", "--repo", repoDir, "--target", target)
	code, _, errs := stasis(t, "restore", "latest", "--repo", repoDir, "--target", target)
	if want := "target directory is not empty (choose an empty directory, or give --overwrite to replace files in it)"; code != exitFatal || !strings.Contains(errs, want) {
		t.Errorf("restore into a full directory: exit %d\n%s\nwant %q", code, errs, want)
	}
}

// With no password, the CLI names every place a password can come from
// (the library's error says only that none was given; the password policy,
// cmd/stasis/internal/password, names the sources).
func TestNoPasswordNamesTheSources(t *testing.T) {
	noPasswordEnv(t)
	dir := t.TempDir()
	repoDir, pw := filepath.Join(dir, "repo"), filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("pw\n"), 0o600)
	sources := []string{"--password-file FILE (or STASIS_PASSWORD_FILE=FILE)", "--password-command CMD", "STASIS_PASSWORD=PASSWORD", "run on a terminal"}
	code, _, errs := cli(t, "init", "--repo", repoDir)
	if code != exitPassword || !strings.Contains(errs, "--insecure-no-password") {
		t.Errorf("init without a password: exit %d, %q; want %d naming --insecure-no-password", code, errs, exitPassword)
	}
	for _, s := range sources {
		if !strings.Contains(errs, s) {
			t.Errorf("init without a password: %q does not name %q", errs, s)
		}
	}
	cliOK(t, "init", "--repo", repoDir, "--password-file", pw)
	code, _, errs = cli(t, "snapshots", "--repo", repoDir)
	if code != exitPassword || !strings.Contains(errs, "no password given: use ") {
		t.Errorf("snapshots without a password: exit %d, %q; want %d", code, errs, exitPassword)
	}
	for _, s := range sources {
		if !strings.Contains(errs, s) {
			t.Errorf("snapshots without a password: %q does not name %q", errs, s)
		}
	}
}
