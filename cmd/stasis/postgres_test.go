package main

// A private PostgreSQL cluster (Debian package postgresql) for the service
// tests: initdb into a temp dir (with data checksums), listening only on a
// unix socket in a directory of its own (listen_addresses=''), so it never
// meets a system cluster. As root it runs as user postgres (runuser), as
// PostgreSQL refuses to run as root. Stopped at the test's end.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// postgres is one private cluster.
type postgres struct {
	bin     string // directory of initdb, pg_ctl, pg_checksums
	data    string // the data directory (backed up)
	sockDir string // unix socket and server log (not backed up)
	ctl     string // sockDir/pgctl start|stop: systemctl start|stop postgresql to this cluster
	asUser  string // "postgres" as root (runuser), "" otherwise
}

// needPostgres skips unless PostgreSQL's server programs and psql are
// installed, and returns their directory.
func needPostgres(t testing.TB) string {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(bins) == 0 {
		t.Skip("needs PostgreSQL's server (Debian package postgresql): no /usr/lib/postgresql/*/bin/pg_ctl")
	}
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("needs psql (Debian package postgresql-client)")
	}
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("postgres"); err != nil {
			t.Skip("as root, needs the user postgres (made by the Debian package postgresql) to run the server")
		}
		if _, err := exec.LookPath("runuser"); err != nil {
			t.Skip("as root, needs runuser (util-linux) to run the server as postgres")
		}
	}
	return filepath.Dir(bins[len(bins)-1])
}

// sharedDir makes a fresh directory that the user postgres can enter (as
// t.TempDir's are 0700 root's) under parent ("" = the system's temp dir),
// removed at the test's end. A parent in the test's temp dirs is made
// enterable too, up to the system's temp dir.
func sharedDir(t testing.TB, parent, pattern string) string {
	t.Helper()
	if parent == "" {
		parent = os.TempDir()
	}
	openDirsBelow(parent, os.TempDir())
	d, err := os.MkdirTemp(parent, pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// openDirsBelow makes dir and its parents below top (top itself excluded)
// enterable by every user (mode 0755): the test's temp dirs and restored
// parents of a data directory, which postgres must enter.
func openDirsBelow(dir, top string) {
	for d := dir; strings.HasPrefix(d, top+"/"); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
}

// newPostgresW is newPostgres of a fresh cluster in data holding the
// writer's empty table w.
func newPostgresW(t testing.TB, bin, data string) *postgres {
	t.Helper()
	pg := newPostgres(t, bin, data, true)
	if _, err := pg.psql(context.Background(), createTableW); err != nil {
		t.Fatal(err)
	}
	return pg
}

// newPostgres initialises a cluster in data (which must not exist; its
// parent must be enterable by postgres) when init is set, starts it and
// registers its stop.
func newPostgres(t testing.TB, bin, data string, init bool) *postgres {
	t.Helper()
	pg := &postgres{bin: bin, data: data, sockDir: sharedDir(t, "", "stasis-pgsock-")}
	if os.Geteuid() == 0 {
		pg.asUser = "postgres"
		if err := chownTo(pg.sockDir, "postgres"); err != nil {
			t.Fatal(err)
		}
	}
	if init {
		if err := os.Mkdir(data, 0o700); err != nil {
			t.Fatal(err)
		}
		if pg.asUser != "" {
			if err := chownTo(data, pg.asUser); err != nil {
				t.Fatal(err)
			}
		}
		if out, err := pg.cmd("initdb", "-D", data, "-k", "-A", "trust", "-U", "postgres", "--no-sync").CombinedOutput(); err != nil {
			t.Fatalf("initdb: %v\n%s", err, out)
		}
	}
	pg.ctl = filepath.Join(pg.sockDir, "pgctl")
	if err := os.WriteFile(pg.ctl, []byte(pg.ctlScript()), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(pg.ctl, "stop").CombinedOutput(); err != nil {
			t.Errorf("stop postgres on %s: %v\n%s", pg.data, err, out)
		}
	})
	if out, err := exec.Command(pg.ctl, "start").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(pg.sockDir, "server.log"))
		t.Fatalf("start postgres on %s: %v\n%s\n%s", data, err, out, log)
	}
	return pg
}

func chownTo(path, name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("chown %s to %s: %w", path, name, err)
	}
	return nil
}

// cmd is a server program of the cluster, run as its user.
func (pg *postgres) cmd(name string, args ...string) *exec.Cmd {
	p := filepath.Join(pg.bin, name)
	if pg.asUser != "" {
		return exec.Command("runuser", append([]string{"-u", pg.asUser, "--", p}, args...)...)
	}
	return exec.Command(p, args...)
}

// ctlScript stops (fast shutdown: clients disconnected, a shutdown
// checkpoint written) and starts the cluster; pg_ctl -w returns once the
// server is down or accepts connections.
func (pg *postgres) ctlScript() string {
	run := ""
	if pg.asUser != "" {
		run = "runuser -u " + pg.asUser + " -- "
	}
	return fmt.Sprintf(`#!/bin/sh
set -eu
data=%s
case "$1" in
start) %s%s -D "$data" -w -t 60 -l %s -o %s start ;;
stop)  [ -e "$data/postmaster.pid" ] || exit 0
       %s%s -D "$data" -w -t 60 -m fast stop ;;
*)     echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
`, shq(pg.data), run, filepath.Join(pg.bin, "pg_ctl"), shq(filepath.Join(pg.sockDir, "server.log")),
		shq("-c listen_addresses='' -k "+pg.sockDir), run, filepath.Join(pg.bin, "pg_ctl"))
}

// psql runs SQL on the cluster and returns its unaligned, tuples-only output.
func (pg *postgres) psql(ctx context.Context, sql string) (string, error) {
	cmd := exec.CommandContext(ctx, "psql", "-h", pg.sockDir, "-U", "postgres", "-d", "postgres", "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql)
	out, err := runClient(cmd)
	if err != nil {
		return string(out), fmt.Errorf("psql %q on %s: %w", sql, pg.sockDir, err)
	}
	return string(out), nil
}

// rows returns the numbers in table w.
func (pg *postgres) rows(t testing.TB) map[int]bool {
	t.Helper()
	out, err := pg.psql(context.Background(), "SELECT n FROM w")
	if err != nil {
		t.Fatal(err)
	}
	return seqs(t, out)
}

// insert is the writer's INSERT number n (a seqWriter's add).
func (pg *postgres) insert(ctx context.Context, n int) error {
	_, err := pg.psql(ctx, insertSQL(n))
	return err
}
