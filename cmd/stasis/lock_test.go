package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/internal/lock"
	"github.com/stasisbackup/stasis/repo/backend"
)

func TestExclusiveLockExits11NamingTheHolder(t *testing.T) {
	setupEnv(t)
	src := sampleTree(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "backup", "--init", "--repo", repoDir, src)
	held, err := lock.Acquire(context.Background(), backend.NewLocal(repoDir), true, lock.Options{Command: "stasis prune (test)"})
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"prune"}, {"backup", src}, {"forget", "--keep-last", "1"}, {"repair", "index"}} {
		code, _, errs := stasis(t, append([]string{"--repo", repoDir}, args...)...)
		if code != exitLocked || !strings.Contains(errs, "stasis prune (test)") || !strings.Contains(errs, "pid") {
			t.Fatalf("%v while an exclusive lock is held: exit %d, stderr %q; want 11 naming the holder", args, code, errs)
		}
	}
	// --retry-lock waits; the holder releases while the command waits or
	// before it starts: either way it runs.
	done := make(chan int)
	go func() {
		code, _, _ := stasis(t, "--repo", repoDir, "--retry-lock", "30s", "prune")
		done <- code
	}()
	held.Release()
	if code := <-done; code != 0 {
		t.Fatalf("prune with --retry-lock after the holder released: exit %d", code)
	}
	locks, _ := lock.List(context.Background(), backend.NewLocal(repoDir))
	if len(locks) != 0 {
		t.Fatalf("%d locks left after the commands ended", len(locks))
	}
}

func TestConcurrentBackupsKeepBothSnapshots(t *testing.T) {
	setupEnv(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "init", "--repo", repoDir)
	srcs := []string{sampleTree(t), sampleTree(t)}
	os.WriteFile(filepath.Join(srcs[1], "extra"), []byte("only in the second"), 0o644)
	var wg sync.WaitGroup
	codes := make([]int, 2)
	errs := make([]string, 2)
	for i := range srcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], _, errs[i] = stasis(t, "--repo", repoDir, "backup", srcs[i])
		}()
	}
	wg.Wait()
	for i := range codes {
		if codes[i] != 0 {
			t.Fatalf("concurrent backup %d: exit %d\n%s", i, codes[i], errs[i])
		}
	}
	out := mustRun(t, "--repo", repoDir, "snapshots")
	if !strings.Contains(out, "2 snapshots") {
		t.Fatalf("snapshots after two concurrent backups:\n%s", out)
	}
	mustRun(t, "--repo", repoDir, "check", "--read-data")
	target := t.TempDir()
	mustRun(t, "--repo", repoDir, "restore", "latest", "--target", target)
}

func TestUnlockRemovesStaleLocksOnly(t *testing.T) {
	setupEnv(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "init", "--repo", repoDir)
	live, err := lock.Acquire(context.Background(), backend.NewLocal(repoDir), false, lock.Options{Command: "live"})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Release()
	out := mustRun(t, "--repo", repoDir, "unlock")
	if !strings.Contains(out, "0 locks removed") {
		t.Fatalf("unlock removed a live lock:\n%s", out)
	}
	out = mustRun(t, "--repo", repoDir, "unlock", "--remove-all")
	if !strings.Contains(out, "1 locks removed") {
		t.Fatalf("unlock --remove-all:\n%s", out)
	}
}

func TestExclusiveCommandsTakeAnExclusiveLock(t *testing.T) {
	setupEnv(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "init", "--repo", repoDir)
	shared, err := lock.Acquire(context.Background(), backend.NewLocal(repoDir), false, lock.Options{Command: "stasis backup (test)"})
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Release()
	for _, args := range [][]string{{"prune"}, {"forget", "--keep-last", "1"}, {"repair", "index"}} {
		code, _, errs := stasis(t, append([]string{"--repo", repoDir}, args...)...)
		if code != exitLocked || !strings.Contains(errs, "shared lock") || !strings.Contains(errs, "stasis backup (test)") {
			t.Fatalf("%v while a shared lock is held: exit %d, stderr %q; want 11 naming the holder", args, code, errs)
		}
	}
}

// A command on a location that is no repository writes no lock there.
func TestNoLockInAMistypedRepository(t *testing.T) {
	setupEnv(t)
	dir := t.TempDir()
	for _, args := range [][]string{{"prune"}, {"backup", dir}, {"unlock"}} {
		code, _, errs := stasis(t, append([]string{"--repo", dir}, args...)...)
		if code != exitNoRepo {
			t.Errorf("%v on an empty directory: exit %d, stderr %q; want %d", args, code, errs, exitNoRepo)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "locks")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("locks written into a directory that is no repository: %v", err)
	}
}

// When the lock is lost, the command's context is cancelled with an error
// that says so, and run reports it instead of "context canceled".
func TestLostLockCancelsTheCommand(t *testing.T) {
	st := backend.NewLocal(t.TempDir())
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	a := &app{stderr: io.Discard, cancel: cancel}
	a.locking.cmd = "stasis backup"
	a.locking.staleAfter = 1200 * time.Millisecond // refreshed every 200ms
	if err := a.lockRepo(ctx, st, false); err != nil {
		t.Fatal(err)
	}
	if err := a.lockLost(); err != nil {
		t.Fatalf("lockLost while held: %v", err)
	}
	if _, err := lock.RemoveAll(context.Background(), st); err != nil { // stasis unlock --remove-all
		t.Fatal(err)
	}
	<-ctx.Done() // the next refresh notices
	cause := context.Cause(ctx)
	msg := cause.Error()
	if !errors.Is(cause, lock.ErrLost) || !strings.HasPrefix(msg, "repository lock lost: ") ||
		!strings.Contains(msg, "removed by another process") ||
		!strings.Contains(msg, "the command stopped, nothing it had not committed is kept") {
		t.Errorf("cause: %v", cause)
	}
	if code := exitCode(cause); code != exitFatal {
		t.Errorf("exit code %d, want %d", code, exitFatal)
	}
	if err := a.lockLost(); err == nil || err.Error() != msg {
		t.Errorf("lockLost = %v", err)
	}
	a.releaseLock()
	if ls, err := lock.List(context.Background(), st); err != nil || len(ls) != 0 {
		t.Errorf("locks after release: %v, %v", ls, err)
	}
}
