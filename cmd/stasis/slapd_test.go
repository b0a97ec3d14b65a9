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
	"strconv"
	"strings"
	"testing"
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
	out, err := runClient(cmd)
	if err != nil {
		return out, fmt.Errorf("%s on %s: %w", name, s.uri, err)
	}
	return out, nil
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

// addEntry adds the writer's entry number n with ldapadd (a seqWriter's
// add).
func (s *slapd) addEntry(ctx context.Context, n int) error {
	_, err := s.ldap(ctx, "ldapadd", entryLDIF(n))
	return err
}

// offlineConf writes a slapd.conf for the database in db (slapdConf, with
// run files in a temp dir) into a temp dir and returns it: what slapcat
// and slapadd read to work on a database offline.
func offlineConf(t testing.TB, db string) string {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "slapd.conf")
	if err := os.WriteFile(conf, []byte(slapdConf(db, t.TempDir())), 0o644); err != nil {
		t.Fatal(err)
	}
	return conf
}

// entryLDIF is the writer's entry number n.
func entryLDIF(n int) string {
	return fmt.Sprintf("dn: cn=w%06d,%s\nobjectClass: inetOrgPerson\ncn: w%06d\nsn: writer\ndescription: write %d of the service test\n\n",
		n, ldapSuffix, n, n)
}
