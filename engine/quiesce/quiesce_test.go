package quiesce

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/cmd/zoomsim/zdb"
	"github.com/stasisbackup/stasis/internal/zoomsimtest"
)

type env struct {
	dir, db string
	svc     *zoomsimtest.Service
	opts    Options
}

// setup starts zoomsim on dir/X500.db (dir defaults to a temp dir) and
// returns Options whose hooks pause and resume it.
func setup(t *testing.T, dir string, args ...string) *env {
	t.Helper()
	bin := zoomsimtest.Build(t)
	if dir == "" {
		dir = t.TempDir()
	}
	db := filepath.Join(dir, "X500.db")
	svc := zoomsimtest.Start(t, bin, db, append([]string{"--pages", "256"}, args...)...)
	return &env{dir: dir, db: db, svc: svc, opts: Options{
		Repository:  filepath.Join(t.TempDir(), "repo"),
		Paths:       []string{dir},
		Quiesce:     fmt.Sprintf("%s pause --db %s", bin, db),
		Resume:      fmt.Sprintf("%s resume --db %s", bin, db),
		HookTimeout: 30 * time.Second,
		KillGrace:   time.Second,
	}}
}

func (e *env) wantState(t *testing.T, want string) {
	t.Helper()
	if got, _ := e.svc.State(t); got != want {
		t.Fatalf("zoomsim is %s, want %s", got, want)
	}
}

func TestStopMode(t *testing.T) {
	e := setup(t, "", "--close-on-pause")
	called := false
	rep, err := Run(context.Background(), e.opts, func(ctx context.Context, s *Stage) error {
		called = true
		e.wantState(t, "paused")
		if s.Freeze != FreezeStop || s.Path(e.db) != e.db || !s.Quiesced(e.db) {
			t.Errorf("stage %+v: want stop mode reading the original", s)
		}
		return zdb.Check(s.Path(e.db))
	})
	if err != nil || !called {
		t.Fatalf("Run: %v (capture called: %v)", err, called)
	}
	e.wantState(t, "running")
	if rep.Freeze != FreezeStop || len(rep.Hooks) != 2 || !rep.Hooks[0].OK() || !rep.Hooks[1].OK() ||
		rep.DowntimeSeconds <= 0 || len(rep.Warnings) != 0 || len(rep.OpenWriters) != 0 {
		t.Fatalf("report %+v", rep)
	}
	b, _ := json.Marshal(rep)
	var m map[string]any
	json.Unmarshal(b, &m)
	for _, k := range []string{"freeze", "downtime_seconds", "warnings", "hooks", "open_writers"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON %s lacks %q", b, k)
		}
	}
	if !strings.Contains(string(b), `"warnings":[]`) {
		t.Errorf("warnings should serialise as []: %s", b)
	}
}

// With --quiesce-path, capture can end the window once the quiesced files are read.
func TestStopEarlyResume(t *testing.T) {
	e := setup(t, "", "--close-on-pause")
	e.opts.QuiescePaths = []string{"*.db"}
	rep, err := Run(context.Background(), e.opts, func(ctx context.Context, s *Stage) error {
		if len(s.Files) != 1 || s.Files[0] != e.db {
			t.Errorf("quiesced files %v, want only %s", s.Files, e.db)
		}
		if err := zdb.Check(e.db); err != nil {
			return err
		}
		if r := s.Report(); len(r.Hooks) != 1 || r.DowntimeSeconds != 0 {
			t.Errorf("report before resume %+v: want the quiesce hook only, no downtime yet", r)
		}
		if err := s.Resume(); err != nil {
			return err
		}
		if r := s.Report(); len(r.Hooks) != 2 || r.DowntimeSeconds <= 0 || r.Freeze != FreezeStop {
			t.Errorf("report after resume %+v: want both hooks and the downtime", r)
		}
		e.wantState(t, "running") // the rest of the tree is read while the service runs
		return s.Resume()         // idempotent
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Hooks) != 2 {
		t.Fatalf("resume ran %d times, want once: %+v", len(rep.Hooks)-1, rep.Hooks)
	}
	e.wantState(t, "running")
}

func TestCopyMode(t *testing.T) {
	e := setup(t, "", "--close-on-pause")
	conf := filepath.Join(e.dir, "zoomserv.conf")
	os.WriteFile(conf, []byte("suffix = o=Zoomserv\n"), 0o600)
	os.Chmod(conf, 0o640)
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	os.Chtimes(conf, mtime, mtime)
	e.opts.Freeze = FreezeCopy
	e.opts.Staging = t.TempDir()
	var staged string
	rep, err := Run(context.Background(), e.opts, func(ctx context.Context, s *Stage) error {
		e.wantState(t, "running") // resumed before capture
		if r := s.Report(); len(r.Hooks) != 2 || r.DowntimeSeconds <= 0 || r.Freeze != FreezeCopy {
			t.Errorf("report in capture %+v: want both hooks and the downtime", r)
		}
		staged = s.Path(e.db)
		if staged == e.db || s.Freeze != FreezeCopy {
			t.Errorf("db not staged: %q, mode %s", staged, s.Freeze)
		}
		fi, err := os.Stat(s.Path(conf))
		if err != nil {
			return err
		}
		if fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mtime) {
			t.Errorf("staged conf: mode %v mtime %v, want 0640 %v", fi.Mode(), fi.ModTime(), mtime)
		}
		return zdb.Check(staged)
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Freeze != FreezeCopy || rep.DowntimeSeconds <= 0 {
		t.Fatalf("report %+v", rep)
	}
	if _, err := os.Stat(filepath.Dir(filepath.Dir(staged))); !os.IsNotExist(err) {
		t.Fatalf("staging directory not removed: %v", err)
	}
	e.wantState(t, "running")
}

func TestFailingQuiesceHookResumes(t *testing.T) {
	e := setup(t, "")
	e.opts.Quiesce += "; echo half-way >&2; exit 4" // paused, then failed
	rep, err := Run(context.Background(), e.opts, func(context.Context, *Stage) error {
		t.Error("capture called after a failed quiesce")
		return nil
	})
	if !errors.Is(err, ErrQuiesceFailed) || len(rep.Hooks) != 2 || rep.Hooks[0].Exit != 4 || !rep.Hooks[1].OK() {
		t.Fatalf("Run = %+v, %v", rep, err)
	}
	e.wantState(t, "running")
}

func TestHungHookResumes(t *testing.T) {
	e := setup(t, "")
	e.opts.Quiesce += "; exec sleep 60"
	e.opts.HookTimeout = time.Second
	rep, err := Run(context.Background(), e.opts, func(context.Context, *Stage) error { return nil })
	if !errors.Is(err, ErrQuiesceFailed) || !errors.Is(err, ErrHookTimeout) || !rep.Hooks[0].TimedOut {
		t.Fatalf("Run = %+v, %v", rep, err)
	}
	e.wantState(t, "running")
}

func TestFailingCaptureResumes(t *testing.T) {
	e := setup(t, "")
	boom := errors.New("pack write failed")
	for _, mode := range []Freeze{FreezeStop, FreezeCopy} {
		e.opts.Freeze = mode
		_, err := Run(context.Background(), e.opts, func(context.Context, *Stage) error { return boom })
		if !errors.Is(err, boom) {
			t.Fatalf("%s: Run = %v, want the capture error", mode, err)
		}
		e.wantState(t, "running")
	}
}

// SIGTERM delivered during the quiesced window reaches Run as cancellation
// (as in the CLI); resume still runs on a live context.
func TestSigtermDuringWindowResumes(t *testing.T) {
	e := setup(t, "")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	rep, err := Run(ctx, e.opts, func(ctx context.Context, s *Stage) error {
		e.wantState(t, "paused")
		syscall.Kill(os.Getpid(), syscall.SIGTERM)
		<-ctx.Done()
		return ctx.Err()
	})
	if !errors.Is(err, context.Canceled) || len(rep.Hooks) != 2 || !rep.Hooks[1].OK() {
		t.Fatalf("Run = %+v, %v", rep, err)
	}
	e.wantState(t, "running")
}

func TestPanicInCaptureResumes(t *testing.T) {
	e := setup(t, "")
	func() {
		defer func() {
			if recover() == nil {
				t.Error("panic was swallowed")
			}
		}()
		Run(context.Background(), e.opts, func(context.Context, *Stage) error { panic("bug") })
	}()
	e.wantState(t, "running")
}

func TestOpenWriterDetected(t *testing.T) {
	e := setup(t, "") // keeps X500.db open while paused
	e.opts.QuiescePaths = []string{"*.db"}
	rep, err := Run(context.Background(), e.opts, func(context.Context, *Stage) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	pid := e.svc.Cmd.Process.Pid
	if len(rep.OpenWriters) != 1 || rep.OpenWriters[0].PID != pid || rep.OpenWriters[0].Command != "zoomsim" ||
		rep.OpenWriters[0].Path != e.db {
		t.Fatalf("open writers %+v, want zoomsim pid %d on %s", rep.OpenWriters, pid, e.db)
	}
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], fmt.Sprintf("%s open for writing by pid %d (zoomsim)", e.db, pid)) {
		t.Fatalf("warnings %q", rep.Warnings)
	}
	e.opts.OnOpen = OnOpenFail
	_, err = Run(context.Background(), e.opts, func(context.Context, *Stage) error {
		t.Error("capture called despite on-open fail")
		return nil
	})
	if !errors.Is(err, ErrOpenWriters) {
		t.Fatalf("Run with on-open fail = %v", err)
	}
	e.wantState(t, "running")
}

func TestPoliteServiceNotDetected(t *testing.T) {
	e := setup(t, "", "--close-on-pause")
	e.opts.OnOpen = OnOpenFail
	rep, err := Run(context.Background(), e.opts, func(context.Context, *Stage) error { return nil })
	if err != nil || len(rep.OpenWriters) != 0 {
		t.Fatalf("Run = %+v, %v; want no open writers", rep, err)
	}
	// Running (not quiesced), it is a writer of both the db and its log.
	h, err := OpenWriters(context.Background(), []string{e.db, filepath.Join(e.dir, "X500.log")})
	if err != nil || len(h) != 2 {
		t.Fatalf("OpenWriters while running = %+v, %v; want db and log", h, err)
	}
}

func TestQuiescedFilesGlobs(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"X500.db", "X500.log", "etc/a.conf", "ldif/1.ldif"} {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755)
		os.WriteFile(filepath.Join(dir, p), nil, 0o644)
	}
	cases := []struct {
		globs []string
		want  int
	}{{nil, 4}, {[]string{"X500.*"}, 2}, {[]string{dir + "/etc/*"}, 1}, {[]string{"*.none"}, 0}}
	for _, c := range cases {
		got, err := QuiescedFiles([]string{dir}, c.globs, nil)
		if err != nil || len(got) != c.want {
			t.Errorf("QuiescedFiles(%v) = %v, %v; want %d files", c.globs, got, err, c.want)
		}
	}
	if _, err := QuiescedFiles([]string{dir}, []string{"["}, nil); err == nil {
		t.Error("bad glob accepted")
	}
}

func TestBadOptions(t *testing.T) {
	if _, err := Run(context.Background(), Options{Freeze: "freeze-dry"}, nil); err == nil {
		t.Error("unknown freeze mode accepted")
	}
	if _, err := Run(context.Background(), Options{OnOpen: "ignore"}, nil); err == nil {
		t.Error("unknown on-open policy accepted")
	}
}
