package main

import (
	"bytes"
	"encoding/json"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// statusLines parses out's JSON lines and returns the status lines (which
// must name command) and the others, in order.
func statusLines(t *testing.T, command, out string) (status, other []map[string]any) {
	t.Helper()
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%s: not a JSON line: %q", command, l)
		}
		if m["message_type"] == "status" {
			if m["command"] != command {
				t.Errorf("status line of %s names command %v", command, m["command"])
			}
			status = append(status, m)
		} else {
			other = append(other, m)
		}
	}
	if len(status) == 0 {
		t.Fatalf("%s --json wrote no status line:\n%s", command, out)
	}
	return status, other
}

// wantLast fails unless the last status line has these values (JSON numbers).
func wantLast(t *testing.T, command string, status []map[string]any, want map[string]float64) {
	t.Helper()
	last := status[len(status)-1]
	for k, v := range want {
		if got, ok := last[k].(float64); !ok || got != v {
			t.Errorf("%s: last status line has %s %v, want %v (%v)", command, k, last[k], v, last)
		}
	}
	if _, ok := last["seconds_elapsed"].(float64); !ok {
		t.Errorf("%s: last status line lacks seconds_elapsed: %v", command, last)
	}
}

// Every long command with --json writes status lines whose last values
// are those of its summary; stdout stays parseable as before.
func TestProgressJSONStatusLinesMatchTheSummary(t *testing.T) {
	setupEnv(t)
	src := tapeSource(t)
	repoDir := filepath.Join(t.TempDir(), "repo")

	out := mustRun(t, "backup", "--init", "--json", "--repo", repoDir, src)
	status, other := statusLines(t, "backup", out)
	sum := other[len(other)-1]
	if sum["message_type"] != "summary" {
		t.Fatalf("backup: last line %v, want the summary", sum)
	}
	files := sum["files_new"].(float64) + sum["files_changed"].(float64) + sum["files_unchanged"].(float64)
	wantLast(t, "backup", status, map[string]float64{"files_done": files, "total_files": files,
		"bytes_done": sum["total_bytes"].(float64), "total_bytes": sum["total_bytes"].(float64), "percent_done": 1, "seconds_remaining": 0})

	// A second snapshot that replaces a file, so that prune has work.
	rng := rand.New(rand.NewSource(8))
	b := make([]byte, 200<<10)
	rng.Read(b)
	os.WriteFile(filepath.Join(src, "X500.db"), b, 0o600)
	mustRun(t, "backup", "--repo", repoDir, src)

	out = mustRun(t, "restore", "--json", "--repo", repoDir, "latest", "--target", t.TempDir())
	status, other = statusLines(t, "restore", out)
	sum = other[len(other)-1]
	wantLast(t, "restore", status, map[string]float64{"files_done": sum["files"].(float64), "bytes_done": sum["bytes"].(float64),
		"total_files": sum["files"].(float64), "total_bytes": sum["bytes"].(float64), "percent_done": 1})

	code, out, errs := stasis(t, "check", "--read-data", "--json", "--repo", repoDir)
	if code != 0 {
		t.Fatalf("check: exit %d\n%s%s", code, out, errs)
	}
	var rep struct{ Packs float64 }
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Packs < 2 {
		t.Fatalf("check --json stdout is no longer one JSON report: %v\n%s", err, out)
	}
	status, _ = statusLines(t, "check", errs)
	wantLast(t, "check", status, map[string]float64{"files_done": rep.Packs, "total_files": rep.Packs, "percent_done": 1})
	if last := status[len(status)-1]; last["bytes_done"] != last["total_bytes"] || last["bytes_done"].(float64) == 0 {
		t.Errorf("check: last status line %v: want all pack bytes read", last)
	}

	mustRun(t, "forget", "--repo", repoDir, "--keep-last", "1")
	code, out, errs = stasis(t, "prune", "--json", "--max-unused", "0", "--repo", repoDir)
	if code != 0 {
		t.Fatalf("prune: exit %d\n%s%s", code, out, errs)
	}
	var pr struct{ PacksDeleted, PacksRepacked, PacksUnindexed float64 }
	if err := json.Unmarshal([]byte(out), &pr); err != nil {
		t.Fatalf("prune --json stdout is no longer one JSON report: %v\n%s", err, out)
	}
	gone := pr.PacksDeleted + pr.PacksRepacked + pr.PacksUnindexed
	if gone == 0 {
		t.Fatalf("prune removed no pack; the test needs some: %s", out)
	}
	status, _ = statusLines(t, "prune", errs)
	wantLast(t, "prune", status, map[string]float64{"files_done": gone, "total_files": gone, "percent_done": 1})
	if last := status[len(status)-1]; last["phase"] != "deleting" {
		t.Errorf("prune: last status line %v, want phase deleting", last)
	}

	tapes := t.TempDir()
	out = mustRun(t, "tape", "export", "--json", "--repo", repoDir, "--device", filepath.Join(tapes, "vol-%03d.tar"))
	status, other = statusLines(t, "tape export", out)
	sum = other[len(other)-1]
	wantLast(t, "tape export", status, map[string]float64{"files_done": sum["members"].(float64), "bytes_done": sum["bytes"].(float64),
		"total_files": sum["members"].(float64), "total_bytes": sum["bytes"].(float64), "percent_done": 1})
	members, size := sum["members"].(float64), sum["bytes"].(float64)

	vol := filepath.Join(tapes, "vol-001.tar")
	code, out, errs = stasis(t, "tape", "verify", "--json", "--device", vol)
	if code != 0 {
		t.Fatalf("tape verify: exit %d\n%s%s", code, out, errs)
	}
	var vr map[string]any
	if err := json.Unmarshal([]byte(out), &vr); err != nil || vr["ok"] != true {
		t.Fatalf("tape verify --json stdout: %v\n%s", err, out)
	}
	status, _ = statusLines(t, "tape verify", errs)
	wantLast(t, "tape verify", status, map[string]float64{"files_done": members, "bytes_done": size, "total_files": members, "total_bytes": size})

	code, out, errs = stasis(t, "tape", "import", "--json", "--repo", filepath.Join(t.TempDir(), "imported"), "--device", vol)
	if code != 0 {
		t.Fatalf("tape import: exit %d\n%s%s", code, out, errs)
	}
	var imp struct{ Files, Bytes float64 }
	if err := json.Unmarshal([]byte(out), &imp); err != nil || imp.Files != members {
		t.Fatalf("tape import --json stdout: %v (%d members exported)\n%s", err, int(members), out)
	}
	status, _ = statusLines(t, "tape import", errs)
	wantLast(t, "tape import", status, map[string]float64{"files_done": imp.Files, "bytes_done": imp.Bytes, "percent_done": 1})
}

// Without --json and without a terminal, no command prints progress: no
// status lines, no carriage returns or escape sequences.
func TestProgressNothingOnANonTerminal(t *testing.T) {
	setupEnv(t)
	src := sampleTree(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	tapes := t.TempDir()
	for _, args := range [][]string{
		{"backup", "--init", src},
		{"restore", "latest", "--target", t.TempDir()},
		{"check", "--read-data"},
		{"prune"},
		{"tape", "export", "--device", filepath.Join(tapes, "vol-%03d.tar")},
		{"tape", "verify", "--device", filepath.Join(tapes, "vol-001.tar")},
	} {
		code, out, errs := stasis(t, append(args, "--repo", repoDir)...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s%s", args, code, out, errs)
		}
		if strings.ContainsAny(out+errs, "\r\033") || strings.Contains(out+errs, `"status"`) {
			t.Errorf("%v printed progress on a non-terminal:\nstdout %q\nstderr %q", args, out, errs)
		}
	}
}

// On a terminal the reporter draws one line with the counts, the share
// done and the bytes; a log line clears it first; done clears it.
func TestProgressTerminalLine(t *testing.T) {
	var term bytes.Buffer
	r := newReporter("restore", "files", &term, nil) // not run: the test ticks
	c := r.Counts()
	c.SetTotals(10, 4<<20)
	c.Add(5, 2<<20)
	r.tick(r.start.Add(2 * time.Second))
	line := term.String()
	for _, want := range []string{"restore: 5/10 files, 2.0 MiB/4.0 MiB, 1.0 MiB/s, ETA 2s", "50%", "|"} {
		if !strings.Contains(line, want) {
			t.Errorf("terminal line %q lacks %q", line, want)
		}
	}
	term.Reset()
	r.logWriter(&term).Write([]byte("reading all packs\n"))
	if got := term.String(); got != "\r\033[Kreading all packs\n" {
		t.Errorf("log line written as %q; want the progress line cleared first", got)
	}
	r.tick(time.Now())
	term.Reset()
	r.done()
	if got := term.String(); got != "\r\033[K" {
		t.Errorf("done wrote %q; want the line cleared", got)
	}
	r.done() // twice is harmless
}

// --json status lines come at most once a progressJSONEvery, and once more
// at the end, with the share done and the time left.
func TestProgressJSONStatusRate(t *testing.T) {
	var out bytes.Buffer
	r := newReporter("check", "packs", nil, &out)
	c := r.Counts()
	c.SetTotals(4, 1000)
	c.Add(1, 250)
	r.tick(r.start.Add(progressJSONEvery / 2)) // too soon: nothing
	r.tick(r.start.Add(3 * progressJSONEvery))
	r.tick(r.start.Add(3*progressJSONEvery + progressRedraw)) // too soon again
	c.Add(3, 750)
	r.done()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d status lines, want 2:\n%s", len(lines), out.String())
	}
	var first, last map[string]any
	json.Unmarshal([]byte(lines[0]), &first)
	json.Unmarshal([]byte(lines[1]), &last)
	if first["percent_done"] != 0.25 || first["seconds_remaining"] != 9.0 || first["files_done"] != 1.0 || first["total_bytes"] != 1000.0 {
		t.Errorf("first status line %v; want a quarter done, 9 s left", first)
	}
	if last["percent_done"] != 1.0 || last["bytes_done"] != 1000.0 || last["files_done"] != 4.0 {
		t.Errorf("last status line %v; want all done", last)
	}
	// Without totals, there is no share done and no time left.
	out.Reset()
	r = newReporter("prune", "packs", nil, &out)
	r.Counts().Add(3, 0)
	r.done()
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil || m["files_done"] != 3.0 {
		t.Fatalf("status line %q: %v", out.String(), err)
	}
	if _, ok := m["percent_done"]; ok {
		t.Errorf("status line without totals has percent_done: %v", m)
	}
}
