package main

// What the real-service tests share: an event log that the test and the
// hook processes append to (and hooks that write to it), a writer of
// numbered records (into LDAP entries or the SQL table w), and what the log
// says about a backup's capture window.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// eventLog is a file of one-line events appended with O_APPEND by the test
// and by the hook processes (echo EVENT >> FILE), so their order is the
// order of the writes: which acknowledgements came before the quiesce hook
// started is read off the file, without clocks.
type eventLog struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

func newEventLog(t testing.TB) *eventLog {
	t.Helper()
	p := filepath.Join(t.TempDir(), "events")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &eventLog{path: p, f: f}
}

func (l *eventLog) add(format string, args ...any) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.f.WriteString(fmt.Sprintf(format, args...) + "\n"); err != nil {
		return fmt.Errorf("event log %s: %w", l.path, err)
	}
	return nil
}

// hook returns a shell command that appends event to the log.
func (l *eventLog) hook(event string) string { return fmt.Sprintf("echo %s >> %s", event, shq(l.path)) }

// runClient runs cmd, a client of a service (ldapadd, psql, sqlite3), and
// returns its stdout; a failure's error ends in what it wrote to stderr.
func runClient(cmd *exec.Cmd) ([]byte, error) {
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%w: %s", err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// serviceHooks are the quiesce and resume hooks of a service controlled by
// a script (ctl stop|start, what systemctl is to a real one): quiesce logs
// "quiesce" and stops it, resume logs "resume", starts it and logs
// "resumed" once it runs.
type serviceHooks struct{ quiesce, resume string }

// stopStartHooks are the hooks of the service whose control script is ctl.
func (l *eventLog) stopStartHooks(ctl string) serviceHooks {
	return serviceHooks{
		quiesce: l.hook("quiesce") + " && " + ctl + " stop",
		resume:  l.hook("resume") + " && " + ctl + " start && " + l.hook("resumed"),
	}
}

// backupArgs is `backup --json --repo repoDir` with the hooks, followed by
// more.
func (h serviceHooks) backupArgs(repoDir string, more ...string) []string {
	return append([]string{"backup", "--json", "--repo", repoDir, "--quiesce", h.quiesce, "--resume", h.resume}, more...)
}

func (l *eventLog) lines(t testing.TB) []string {
	t.Helper()
	b, err := os.ReadFile(l.path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// seqWriter writes numbered records 1, 2, 3, ... to a service, one at a
// time with add (one client process each: ldapadd, psql), as fast as the
// service takes them, until stopped. Every attempt ("start N") and every
// acknowledged write ("ack N": add returned nil) or failure ("fail N") goes
// to the event log. A failure (the service is stopped) does not stop it: it
// goes on with the next number.
type seqWriter struct {
	add    func(ctx context.Context, n int) error
	log    *eventLog
	cancel context.CancelFunc
	done   chan error

	mu      sync.Mutex
	next    int           // next number to start
	lastAck int           // highest acknowledged number
	changed chan struct{} // closed and replaced on every acknowledgement
}

func startWriter(t testing.TB, log *eventLog, add func(ctx context.Context, n int) error) *seqWriter {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &seqWriter{add: add, log: log, cancel: cancel, done: make(chan error, 1), next: 1, changed: make(chan struct{})}
	go func() { w.done <- w.run(ctx) }()
	t.Cleanup(func() { w.stop(t) })
	return w
}

func (w *seqWriter) run(ctx context.Context) error {
	for ctx.Err() == nil {
		w.mu.Lock()
		n := w.next
		w.next++
		w.mu.Unlock()
		if err := w.log.add("start %d", n); err != nil {
			return err
		}
		err := w.add(ctx, n)
		if ctx.Err() != nil {
			return nil // killed by stop: neither acknowledged nor failed
		}
		event := "ack"
		if err != nil {
			event = "fail"
		}
		if err := w.log.add("%s %d", event, n); err != nil {
			return err
		}
		if event == "ack" {
			w.mu.Lock()
			w.lastAck = n
			close(w.changed)
			w.changed = make(chan struct{})
			w.mu.Unlock()
		}
	}
	return nil
}

// waitAck waits until an add numbered from or later is acknowledged.
func (w *seqWriter) waitAck(t testing.TB, from int) {
	t.Helper()
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		last, ch := w.lastAck, w.changed
		w.mu.Unlock()
		if last >= from {
			return
		}
		select {
		case <-ch:
		case err := <-w.done:
			w.done <- err
			t.Fatalf("writer stopped before write %d was acknowledged: %v", from, err)
		case <-deadline.C:
			t.Fatalf("no write numbered %d or later acknowledged within 60s (last %d): is the service running?", from, last)
		}
	}
}

// nextSeq is the number the writer starts next.
func (w *seqWriter) nextSeq() int { w.mu.Lock(); defer w.mu.Unlock(); return w.next }

func (w *seqWriter) stop(t testing.TB) {
	w.cancel()
	if err := <-w.done; err != nil {
		t.Errorf("writer: %v", err)
	}
	w.done <- nil
}

// window is what the event log says about one backup: the adds
// acknowledged before the capture began (they must be in the snapshot) and
// the adds started before it ended (only those may be).
type window struct {
	ackedBefore   []int
	startedBefore map[int]bool
	failed        int // adds that failed (the server was stopped)
}

// readWindow reads the log: the capture begins at the line begin and ends
// at the line end.
func readWindow(t testing.TB, lines []string, begin, end string) window {
	t.Helper()
	w := window{startedBefore: map[int]bool{}}
	seenBegin, seenEnd := false, false
	for _, l := range lines {
		switch l {
		case begin:
			seenBegin = true
			continue
		case end:
			seenEnd = true
			continue
		}
		ev, num, ok := strings.Cut(l, " ")
		n, err := strconv.Atoi(num)
		if !ok || err != nil {
			continue // another marker
		}
		switch {
		case ev == "ack" && !seenBegin:
			w.ackedBefore = append(w.ackedBefore, n)
		case ev == "start" && !seenEnd:
			w.startedBefore[n] = true
		case ev == "fail":
			w.failed++
		}
	}
	if !seenBegin || !seenEnd {
		t.Fatalf("event log lacks %q or %q:\n%s", begin, end, strings.Join(lines, "\n"))
	}
	return w
}

// checkLive fails t unless live (what the running service serves after
// the backup) holds every write acknowledged before the capture; service
// and write name them in the message ("the live server", "add").
func (w window) checkLive(t testing.TB, live map[int]bool, service, write string) {
	t.Helper()
	for _, n := range w.ackedBefore {
		if !live[n] {
			t.Fatalf("%s lost acknowledged %s %d", service, write, n)
		}
	}
}

// check asserts that got (the restored entries) holds every add
// acknowledged before the capture and none started after it.
func (w window) check(t testing.TB, got map[int]bool) {
	t.Helper()
	if len(w.ackedBefore) == 0 {
		t.Fatal("no write was acknowledged before the capture: the test proves nothing")
	}
	var missing, extra []int
	for _, n := range w.ackedBefore {
		if !got[n] {
			missing = append(missing, n)
		}
	}
	for n := range got {
		if !w.startedBefore[n] {
			extra = append(extra, n)
		}
	}
	sort.Ints(extra)
	if len(missing) > 0 {
		t.Errorf("%d writes acknowledged before the capture are not in the restore: %v", len(missing), missing)
	}
	if len(extra) > 0 {
		t.Errorf("%d writes started after the capture are in the restore: %v", len(extra), extra)
	}
	t.Logf("%d writes acknowledged before the capture, %d restored, %d failed (service stopped)",
		len(w.ackedBefore), len(got), w.failed)
}

// seqs parses the output of `SELECT n FROM w` (one number a line) into the
// set of the writer's numbers.
func seqs(t testing.TB, out string) map[int]bool {
	t.Helper()
	m := map[int]bool{}
	for _, f := range strings.Fields(out) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("SELECT n FROM w: %q", f)
		}
		m[n] = true
	}
	return m
}

// createTableW makes the table the writer inserts into (insertSQL).
const createTableW = "CREATE TABLE w (n integer PRIMARY KEY, note text NOT NULL)"

// insertSQL is the writer's INSERT number n into table w.
func insertSQL(n int) string {
	return fmt.Sprintf("INSERT INTO w VALUES (%d, 'write %d of the service test')", n, n)
}
