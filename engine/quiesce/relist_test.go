package quiesce

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// Excluded files and everything below an excluded directory are not
// quiesced: the backup does not read them.
func TestQuiescedFilesLeaveOutExcludes(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"base/1/16384", "postmaster.pid", "pg_stat_tmp/global.stat", "PG_VERSION"} {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755)
		os.WriteFile(filepath.Join(dir, p), []byte(p), 0o644)
	}
	got, err := QuiescedFiles([]string{dir}, nil, []string{"postmaster.pid", filepath.Join(dir, "pg_stat_tmp")})
	want := []string{filepath.Join(dir, "PG_VERSION"), filepath.Join(dir, "base/1/16384")}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("QuiescedFiles = %v, %v; want %v", got, err, want)
	}
	if _, err := QuiescedFiles([]string{dir}, nil, []string{"["}); err == nil {
		t.Error("bad exclude glob accepted")
	}
}

// The files held still are those there once the service is quiesced: a
// file the quiesce hook removes (a pid file) is not staged, and one it
// writes (a shutdown checkpoint's new WAL segment) is, in every mode that
// stages or prefetches.
func TestFilesListedAgainAfterQuiesceHook(t *testing.T) {
	for _, mode := range []Freeze{FreezeStop, FreezeCopy, FreezeReflink} {
		t.Run(string(mode), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pg")
			os.MkdirAll(filepath.Join(dir, "pg_wal"), 0o755)
			pid, wal1, wal2 := filepath.Join(dir, "server.pid"), filepath.Join(dir, "pg_wal", "0001"), filepath.Join(dir, "pg_wal", "0002")
			os.WriteFile(pid, []byte("4242\n"), 0o644)
			os.WriteFile(wal1, []byte("first segment"), 0o644)
			stop := "rm " + pid + " && printf 'checkpoint' > " + wal2
			opts := Options{Paths: []string{dir}, Quiesce: stop, Resume: "true", Freeze: mode,
				Staging: filepath.Join(t.TempDir(), "staging")}
			if mode == FreezeStop {
				opts.Staging = ""
			}
			var files []string
			var walCopy []byte
			rep, err := Run(context.Background(), opts, func(ctx context.Context, s *Stage) error {
				files = s.Files
				b, err := os.ReadFile(s.Path(wal2))
				walCopy = b
				return err
			})
			if err != nil {
				t.Fatalf("Run: %v (report %+v)", err, rep)
			}
			if want := []string{wal1, wal2}; !slices.Equal(files, want) {
				t.Errorf("quiesced files %v, want %v", files, want)
			}
			if string(walCopy) != "checkpoint" || rep.QuiescedFiles != 2 {
				t.Errorf("new segment read as %q, %d files quiesced; want its content, 2", walCopy, rep.QuiescedFiles)
			}
		})
	}
}

// A stage says which files its selection takes (to tell the resumed
// service's new files from those held still): every file without quiesce
// paths, else those matching one.
func TestStageHeldStillIsTheSelection(t *testing.T) {
	all := &Stage{Freeze: FreezeStop}
	dbs := &Stage{Freeze: FreezeStop, globs: []string{"*.db"}}
	for p, want := range map[string][2]bool{
		"/srv/zoomserv/X500.db":    {true, true},
		"/srv/zoomserv/log/tx.log": {true, false},
	} {
		if got := [2]bool{all.HeldStill(p), dbs.HeldStill(p)}; got != want {
			t.Errorf("HeldStill(%s) = %v (no globs, *.db), want %v", p, got, want)
		}
	}
}
