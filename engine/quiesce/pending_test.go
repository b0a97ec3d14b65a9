package quiesce

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// A run killed in its quiesced window leaves its pending-resume record;
// the next run warns of it, and ResumePending runs its resume hook once and
// removes it.
func TestResumePendingAfterKill(t *testing.T) {
	e := setup(t, "", "--close-on-pause")
	state := t.TempDir()
	e.opts.StateDir = state
	dieInWindow(t, e.opts) // stop mode: killed while paused
	e.wantState(t, "paused")
	recs, _ := filepath.Glob(filepath.Join(state, PendingDirName, "*.json"))
	if len(recs) != 1 {
		t.Fatalf("pending-resume records %v, want one", recs)
	}
	dead, err := DeadPending(state)
	if err != nil || len(dead) != 1 || dead[0].Resume != e.opts.Resume {
		t.Fatalf("DeadPending = %+v, %v", dead, err)
	}

	// The next run warns of the dead one (and leaves its record).
	rep, err := Run(context.Background(), e.opts, func(ctx context.Context, s *Stage) error { return nil })
	if err != nil || len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "died in its quiesced window") {
		t.Fatalf("Run = %+v, %v; want a warning about the dead run", rep, err)
	}
	// That run resumed the service itself; stop it again as the dead run left it.
	if out, err := e.svc.Ctl("pause"); err != nil {
		t.Fatalf("pause: %v: %s", err, out)
	}

	var log bytes.Buffer
	res, err := ResumePending(context.Background(), state, &log)
	if err != nil || len(res) != 1 || !res[0].Hook.OK() {
		t.Fatalf("ResumePending = %+v, %v\n%s", res, err, &log)
	}
	e.wantState(t, "running")
	if !strings.Contains(log.String(), "died in its quiesced window") {
		t.Errorf("log:\n%s", &log)
	}
	if recs, _ := filepath.Glob(filepath.Join(state, PendingDirName, "*")); len(recs) != 0 {
		t.Errorf("records left: %v", recs)
	}
	if res, err := ResumePending(context.Background(), state, nil); len(res) != 0 || err != nil {
		t.Errorf("second ResumePending = %+v, %v; want nothing to do", res, err)
	}
}

// A live run's record is never taken for a dead one's.
func TestResumePendingLeavesLiveRunAlone(t *testing.T) {
	e := setup(t, "", "--close-on-pause")
	e.opts.StateDir = t.TempDir()
	_, err := Run(context.Background(), e.opts, func(ctx context.Context, s *Stage) error {
		res, err := ResumePending(ctx, e.opts.StateDir, nil)
		if len(res) != 0 || err != nil {
			t.Errorf("ResumePending in a live window = %+v, %v; want nothing", res, err)
		}
		e.wantState(t, "paused")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e.wantState(t, "running")
	if recs, _ := filepath.Glob(filepath.Join(e.opts.StateDir, PendingDirName, "*")); len(recs) != 0 {
		t.Errorf("records left after a clean run: %v", recs)
	}
}
