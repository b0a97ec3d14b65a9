package main

// A private OpenLDAP server (Debian packages slapd and ldap-utils) for the
// service tests: its own slapd.conf and mdb database in a temp dir, listening
// only on an ldapi:// socket in another temp dir, so it never meets a system
// slapd (the package's postinst may start one on port 389). The test starts
// it and stops it at its end (t.Cleanup), also on failure.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	slapdBin    = "/usr/sbin/slapd"
	slapaddBin  = "/usr/sbin/slapadd"
	slapcatBin  = "/usr/sbin/slapcat"
	ldapSuffix  = "dc=stasis,dc=test"
	ldapRootDN  = "cn=admin," + ldapSuffix
	ldapRootPW  = "stasis-test-secret"
	ldapEntryRE = `^dn: cn=w(\d{6}),` + ldapSuffix + `$`
)

// needSlapd skips the test unless slapd, slapadd, slapcat, ldapadd,
// ldapmodify and ldapsearch are installed.
func needSlapd(t testing.TB) {
	t.Helper()
	for _, p := range []string{slapdBin, slapaddBin, slapcatBin} {
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			t.Skipf("needs OpenLDAP's %s (Debian package slapd): %v", p, err)
		}
	}
	for _, c := range []string{"ldapadd", "ldapmodify", "ldapsearch"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("needs %s (Debian package ldap-utils)", c)
		}
	}
	if _, err := os.Stat("/etc/ldap/schema/inetorgperson.schema"); err != nil {
		t.Skipf("needs the schema files of the Debian package slapd: %v", err)
	}
}

// slapd is one private slapd instance.
type slapd struct {
	dir    string // the service tree that is backed up: slapd.conf and db/
	conf   string // dir/slapd.conf
	dbDir  string // dir/db: data.mdb, lock.mdb
	runDir string // pid file, args file and the ldapi socket (not backed up)
	uri    string // ldapi://... of runDir/ldapi
	ctl    string // runDir/slapdctl start|stop: what systemctl start|stop slapd is to a real server
}

// newSlapd writes an instance into dir (created) with its run files in a
// fresh temp dir, loads the base entry offline with slapadd, starts it and
// registers its stop. dbDir may be given to serve an existing (restored)
// database instead: then nothing is loaded and the config goes to the run
// dir, leaving dir as it is.
func newSlapd(t testing.TB, dir, dbDir string) *slapd {
	t.Helper()
	s := &slapd{dir: dir, runDir: t.TempDir()}
	if len(filepath.Join(s.runDir, "ldapi")) > 100 {
		t.Fatalf("run dir %s too long for a unix socket", s.runDir)
	}
	s.uri = "ldapi://" + strings.ReplaceAll(filepath.Join(s.runDir, "ldapi"), "/", "%2F")
	fresh := dbDir == ""
	if fresh {
		s.conf, s.dbDir = filepath.Join(dir, "slapd.conf"), filepath.Join(dir, "db")
		if err := os.MkdirAll(s.dbDir, 0o700); err != nil {
			t.Fatal(err)
		}
	} else {
		s.conf, s.dbDir = filepath.Join(s.runDir, "slapd.conf"), dbDir
	}
	if err := os.WriteFile(s.conf, []byte(slapdConf(s.dbDir, s.runDir)), 0o644); err != nil {
		t.Fatal(err)
	}
	s.ctl = filepath.Join(s.runDir, "slapdctl")
	if err := os.WriteFile(s.ctl, []byte(s.ctlScript()), 0o755); err != nil {
		t.Fatal(err)
	}
	if fresh {
		base := "dn: " + ldapSuffix + "\nobjectClass: dcObject\nobjectClass: organization\no: stasis\ndc: stasis\n"
		if out, err := s.tool(slapaddBin, base, "-f", s.conf, "-b", ldapSuffix); err != nil {
			t.Fatalf("slapadd the base entry: %v\n%s", err, out)
		}
	}
	t.Cleanup(func() {
		if out, err := exec.Command(s.ctl, "stop").CombinedOutput(); err != nil {
			t.Errorf("stop slapd of %s: %v\n%s", s.dir, err, out)
		}
	})
	s.start(t)
	return s
}

// slapdConf is a minimal slapd.conf: the Debian schema files, one mdb
// database under dbDir, pid and args files in runDir.
func slapdConf(dbDir, runDir string) string {
	return fmt.Sprintf(`# private test instance (stasis cmd/stasis/slapd_test.go)
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile  %s
argsfile %s
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
suffix   "%s"
rootdn   "%s"
rootpw   %s
directory %s
maxsize  1073741824
index    objectClass eq
`, filepath.Join(runDir, "slapd.pid"), filepath.Join(runDir, "slapd.args"), ldapSuffix, ldapRootDN, ldapRootPW, dbDir)
}

// ctlScript is the stop/start control of the instance, used by the test and
// as the quiesce and resume hooks. start returns once the server answers a
// search on the suffix; stop once the process has exited (slapd closes its
// database before it exits). Both poll with a deadline of 20 s.
func (s *slapd) ctlScript() string {
	pid := filepath.Join(s.runDir, "slapd.pid")
	return fmt.Sprintf(`#!/bin/sh
set -eu
conf=%s uri=%s pidfile=%s
case "$1" in
start)
	%s -f "$conf" -h "$uri"
	i=0
	until ldapsearch -x -H "$uri" -b %s -s base -LLL dn >/dev/null 2>&1; do
		i=$((i + 1))
		if [ "$i" -gt 2000 ]; then echo "slapd does not answer on $uri" >&2; exit 1; fi
		sleep 0.01
	done ;;
stop)
	[ -e "$pidfile" ] || exit 0
	pid=$(cat "$pidfile")
	kill -TERM "$pid" 2>/dev/null || exit 0
	i=0
	while kill -0 "$pid" 2>/dev/null && [ "$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null)" != Z ]; do
		i=$((i + 1))
		if [ "$i" -gt 2000 ]; then echo "slapd (pid $pid) did not exit" >&2; exit 1; fi
		sleep 0.01
	done ;;
*)
	echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
`, shq(s.conf), shq(s.uri), shq(pid), slapdBin, ldapSuffix)
}

// shq quotes s for /bin/sh.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func (s *slapd) start(t testing.TB) {
	t.Helper()
	if out, err := exec.Command(s.ctl, "start").CombinedOutput(); err != nil {
		t.Fatalf("start slapd on %s: %v\n%s", s.dbDir, err, out)
	}
}

// tool runs an OpenLDAP command with stdin and returns its combined output.
func (s *slapd) tool(name, stdin string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w", filepath.Base(name), strings.Join(args, " "), err)
	}
	return out, nil
}

// ldap runs ldapadd, ldapmodify or ldapsearch as the root DN on the socket.
func (s *slapd) ldap(ctx context.Context, name, stdin string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, append([]string{"-x", "-H", s.uri, "-D", ldapRootDN, "-w", ldapRootPW}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s on %s: %w: %s", name, s.uri, err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// search returns the sequence numbers of the writer's entries that the
// running server returns (ldapsearch).
func (s *slapd) search(t testing.TB) map[int]bool {
	t.Helper()
	out, err := s.ldap(context.Background(), "ldapsearch", "", "-b", ldapSuffix, "-LLL", "-o", "ldif-wrap=no", "(objectClass=inetOrgPerson)", "dn")
	if err != nil {
		t.Fatalf("search: %v", err)
	}
	return entrySeqs(out)
}

// entrySeqs returns the sequence numbers of the dn: cn=wNNNNNN lines of an
// LDIF (ldapsearch or slapcat output).
func entrySeqs(ldif []byte) map[int]bool {
	re := regexp.MustCompile(ldapEntryRE)
	seqs := map[int]bool{}
	sc := bufio.NewScanner(bytes.NewReader(ldif))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if m := re.FindSubmatch(sc.Bytes()); m != nil {
			n, _ := strconv.Atoi(string(m[1]))
			seqs[n] = true
		}
	}
	return seqs
}

// slapcat dumps the database of conf offline (slapcat -f conf -b suffix):
// what an operator would do to check or export it.
func slapcat(t testing.TB, conf string) []byte {
	t.Helper()
	cmd := exec.Command(slapcatBin, "-f", conf, "-b", ldapSuffix, "-o", "ldif-wrap=no")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("slapcat -f %s: %v\n%s", conf, err, &errb)
	}
	if !bytes.Contains(out.Bytes(), []byte("dn: "+ldapSuffix+"\n")) {
		t.Fatalf("slapcat -f %s: no base entry in its output:\n%.2000s", conf, out.Bytes())
	}
	return out.Bytes()
}

// entryLDIF is the writer's entry number n.
func entryLDIF(n int) string {
	return fmt.Sprintf("dn: cn=w%06d,%s\nobjectClass: inetOrgPerson\ncn: w%06d\nsn: writer\ndescription: write %d of the service test\n\n",
		n, ldapSuffix, n, n)
}

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

func (l *eventLog) lines(t testing.TB) []string {
	t.Helper()
	b, err := os.ReadFile(l.path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// ldapWriter adds entries cn=w000001, cn=w000002, ... one ldapadd process
// each, as fast as the server takes them, until stopped. Every attempt
// ("start N") and every acknowledged add ("ack N", ldapadd exited 0) or
// failure ("fail N") goes to the event log. A failure (the server is
// stopped) does not stop it: it goes on with the next number.
type ldapWriter struct {
	s      *slapd
	log    *eventLog
	cancel context.CancelFunc
	done   chan error

	mu      sync.Mutex
	next    int           // next number to start
	lastAck int           // highest acknowledged number
	changed chan struct{} // closed and replaced on every acknowledgement
}

func startWriter(t testing.TB, s *slapd, log *eventLog) *ldapWriter {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &ldapWriter{s: s, log: log, cancel: cancel, done: make(chan error, 1), next: 1, changed: make(chan struct{})}
	go func() { w.done <- w.run(ctx) }()
	t.Cleanup(func() { w.stop(t) })
	return w
}

func (w *ldapWriter) run(ctx context.Context) error {
	for ctx.Err() == nil {
		w.mu.Lock()
		n := w.next
		w.next++
		w.mu.Unlock()
		if err := w.log.add("start %d", n); err != nil {
			return err
		}
		_, err := w.s.ldap(ctx, "ldapadd", entryLDIF(n))
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
func (w *ldapWriter) waitAck(t testing.TB, from int) {
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
			t.Fatalf("writer stopped before add %d was acknowledged: %v", from, err)
		case <-deadline.C:
			t.Fatalf("no add numbered %d or later acknowledged within 60s (last %d): is slapd running?", from, last)
		}
	}
}

// nextSeq is the number the writer starts next.
func (w *ldapWriter) nextSeq() int { w.mu.Lock(); defer w.mu.Unlock(); return w.next }

func (w *ldapWriter) stop(t testing.TB) {
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

// check asserts that got (the restored entries) holds every add
// acknowledged before the capture and none started after it.
func (w window) check(t testing.TB, got map[int]bool) {
	t.Helper()
	if len(w.ackedBefore) == 0 {
		t.Fatal("no add was acknowledged before the capture: the test proves nothing")
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
		t.Errorf("%d adds acknowledged before the capture are not in the restore: %v", len(missing), missing)
	}
	if len(extra) > 0 {
		t.Errorf("%d adds started after the capture are in the restore: %v", len(extra), extra)
	}
	t.Logf("%d adds acknowledged before the capture, %d entries restored, %d adds failed while the server was stopped",
		len(w.ackedBefore), len(got), w.failed)
}
