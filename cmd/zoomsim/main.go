// Command zoomsim is a stand-in for the Zoomit directory service: it keeps a
// page-structured database (X500.db, format in package zdb) open and writes
// multi-page transactions into it in place, so that a plain copy taken while
// it runs is torn. stasis tests, the README demo and benchmarks use it.
//
// Usage:
//
//	zoomsim init   --db PATH [--pages N] [--seed S]
//	zoomsim run    --db PATH [--pages N] [--seed S] [--log PATH] [--close-on-pause]
//	               [--interval DUR] [--transactions N] [--fake-clock RFC3339]
//	zoomsim pause  --db PATH
//	zoomsim resume --db PATH
//	zoomsim status --db PATH
//	zoomsim check  PATH
//
// run creates the database if it is missing, refuses an inconsistent one, and
// then runs transactions until SIGTERM or SIGINT (or --transactions are done):
// each picks 2..8 pages spread over the file, moves amounts between them (the
// sum of balances stays constant), writes each page with its own pwrite,
// appends a line to the transaction log (default X500.log beside the db) and
// fsyncs both. On SIGTERM/SIGINT it finishes the current transaction and
// exits 0. While running it writes its pid to PATH.pid and prints one line
// "ready pid=N ctl=SOCKET" to stdout once the control socket accepts.
//
// # Control protocol
//
// run listens on the unix stream socket PATH.ctl. A client connects, writes
// one command line and reads one reply line, then the connection closes:
//
//	pause\n   -> "ok paused N T\n" once the current transaction is finished,
//	             fsynced, and the service has stopped writing (with
//	             --close-on-pause it has also closed the db and log files)
//	resume\n  -> "ok running N T\n" (reopens the files if they were closed)
//	status\n  -> "ok running N T\n" or "ok paused N T\n"
//	other     -> "error MESSAGE\n"
//
// N is the number of transactions this process has committed, T the id of the
// last committed transaction. pause and resume are idempotent. The pause,
// resume and status subcommands speak this protocol, print "paused N" /
// "running N" style lines and exit 1 with a message when no service answers.
//
// check exits 0 when the file is consistent and 1 naming the first bad page.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/stasisbackup/stasis/cmd/zoomsim/zdb"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  zoomsim init   --db PATH [--pages N] [--seed S]
  zoomsim run    --db PATH [--pages N] [--seed S] [--log PATH] [--close-on-pause] [--interval DUR]
  zoomsim pause|resume|status --db PATH
  zoomsim check  PATH
`

// run dispatches a subcommand and returns the exit code: 0 ok, 1 failure,
// 2 usage error.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "init":
		err = cmdInit(args[1:], stderr)
	case "run":
		err = cmdRun(args[1:], stdout, stderr)
	case "pause", "resume", "status":
		err = cmdControl(args[0], args[1:], stdout, stderr)
	case "check":
		err = cmdCheck(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "zoomsim: unknown command %q\n%s", args[0], usage)
		return 2
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "zoomsim %s: %v\n%s", args[0], err, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "zoomsim %s: %v\n", args[0], err)
		return 1
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("zoomsim "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	return nil
}

func cmdInit(args []string, stderr io.Writer) error {
	fs := newFlags("init", stderr)
	db := fs.String("db", "", "database file to create (replaced if it exists)")
	pages := fs.Int("pages", 1024, "number of 4096-byte data pages")
	seed := fs.Int64("seed", 1, "seed for balances and directory records")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *db == "" || fs.NArg() > 0 {
		return usageError{"need --db PATH and no other arguments"}
	}
	return zdb.Create(*db, *pages, *seed)
}

func cmdCheck(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("check", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"need exactly one PATH"}
	}
	st, err := zdb.Scan(fs.Arg(0))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok: %d pages, total %d, last transaction %d\n", fs.Arg(0), st.Pages, st.Total, st.MaxTxID)
	return nil
}
