package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// copyTool is a stand-in backup program: sh and cp, a backup a copy of the
// tree in the repository directory.
func copyTool(name, work, root string) *Tool {
	repo := filepath.Join(work, "repo-"+name)
	return &Tool{Name: name, Bin: "/bin/sh", Repo: repo, Settings: name + " settings", S3Settings: name + " s3 settings",
		versionArgs: []string{"-c", "echo " + name + " 1.0"},
		initArgs:    []string{"-c", fmt.Sprintf("mkdir -p %q", repo)},
		backupArgs: func(n int) []string {
			return []string{"-c", fmt.Sprintf(`d=%q; mkdir -p "$d" && cp -a "$0/." "$d/"`, filepath.Join(repo, fmt.Sprint(n)))}
		},
		restoreArgs: func(n int, target, _ string) []string {
			dst := filepath.Join(target, root)
			return []string{"-c", fmt.Sprintf(`mkdir -p %q && cp -a %q/. %q/`, dst, filepath.Join(repo, fmt.Sprint(n)), dst)}
		},
	}
}

// TestSideBySideFlow runs run's scenarios and report with two stand-in
// tools (no stasis build, no real backup program).
func TestSideBySideFlow(t *testing.T) {
	defer func(f func()) { syncFS = f }(syncFS)
	syncFS = func() {} // others on this machine may be measuring
	w := smallWorkload(t)
	o := options{work: t.TempDir(), runs: 2, dbSize: w.DBSize, logSize: w.LogSize, files: w.Files, seed: w.Seed}
	b := &sideBySide{o: o, w: w, res: results{}, log: t.Logf}
	for _, name := range []string{"stasis", "restic"} {
		tl := copyTool(name, o.work, w.Root)
		b.tools = append(b.tools, tl)
		b.notes = append(b.notes, toolNote{tl.Name, tl.Version(t.Context()), tl.Settings})
	}
	total, err := readyWorkload(w, time.Now(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	change, err := b.backups(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.restores(t.Context()); err != nil {
		t.Fatal(err)
	}
	rep := string(b.report(total, change, "0.00 0.00 0.00", []string{"borg (not on PATH)"}))
	for _, want := range []string{
		"Command: `stasis-bench ",
		"Workload (seed 7): X500.db 1.0 MiB (255 pages of 4 KiB)",
		"in all. Daily change: ",
		"Median of 2 runs per figure.",
		"- stasis (stasis 1.0): stasis settings\n- restic (restic 1.0): restic settings\n- missing, not run: borg (not on PATH)\n\nPeak RSS of the harness itself: ",
		"| scenario | tool | wall s | CPU s (user+sys) | peak RSS MiB | read MiB (rchar) | repo growth MiB |\n",
		"\nIn parentheses: stasis ÷ peer (below 1: stasis is faster, smaller or reads less).\n",
	} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
	for _, sc := range scenarios {
		for _, name := range []string{"stasis", "restic"} {
			if n := len(b.res[sc][name]); n != 2 {
				t.Errorf("%s, %s: %d samples, want 2", sc, name, n)
			}
			if !strings.Contains(rep, "| "+sc+" | "+name+" |") {
				t.Errorf("no row %s, %s", sc, name)
			}
		}
	}
	if g := b.res[scInitial]["stasis"][0].Growth; g < w.DBSize {
		t.Errorf("initial backup grew the repository by %d bytes, want at least the database's %d", g, w.DBSize)
	}
	var out bytes.Buffer
	if err := o.publish(&out, []byte(rep)); err != nil || out.String() != rep {
		t.Errorf("publish: %v", err)
	}
}

// TestS3LocalFlow runs s3's scenarios and report on the local backend only
// (no SeaweedFS) with two stand-in tools.
func TestS3LocalFlow(t *testing.T) {
	defer func(f func()) { syncFS = f }(syncFS)
	syncFS = func() {}
	w := smallWorkload(t)
	if _, err := w.Generate(); err != nil {
		t.Fatal(err)
	}
	o := options{work: t.TempDir(), runs: 1, encrypt: true}
	r := &s3Run{o: o, w: w, base: filepath.Join(o.work, "s3"), log: t.Logf, all: map[string]results{}}
	for _, name := range []string{"stasis", "restic"} {
		r.picks = append(r.picks, pick{name: name, setup: func(_ context.Context, _, work string, _ options) *Tool { return copyTool(name, work, w.Root) }})
	}
	be := s3Backend{"local", "local directory (test)"}
	if err := r.measureBackend(t.Context(), be); err != nil {
		t.Fatal(err)
	}
	rep := string(r.report(4<<20, "0.00 0.00 0.00", "weed 1.0, `weed`", nil, []s3Backend{be}))
	for _, want := range []string{
		"in all.\n\nEvery run of a tool starts from a fresh, empty repository",
		"- stasis (stasis 1.0): stasis s3 settings\n- restic (restic 1.0): restic s3 settings\n- SeaweedFS (weed 1.0, `weed`): `weed server`",
		"- borg is not compared here: the harness runs it on local directories only.\n",
		"- kopia-0.21.1 is not compared here: the harness runs it on local directories only.\n\nRepository size: ",
		"\n\nPeak RSS of the harness itself: ",
		"smaller).\n\n### local directory (test)\n\n| scenario | tool | wall s | CPU s (user+sys) | peak RSS MiB | repository MiB |\n",
		"| full restore | restic | ",
		"\nIn parentheses: stasis ÷ restic (below 1: stasis is faster or smaller). Repository: its size after the command.\n",
	} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
	res := r.all["local"]
	if s := res[scInitial]["stasis"][0]; s.Size < w.DBSize {
		t.Errorf("repository size %d after the initial backup, want at least the database's %d", s.Size, w.DBSize)
	}
	if s := res[scS3Restore]["restic"][0]; s.Size != -1 {
		t.Errorf("restore sample has size %d, want -1", s.Size)
	}
}
