package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Control socket naming and limits.
const (
	ctlSuffix = ".ctl"
	pidSuffix = ".pid"
	// maxSockPath is the longest path a unix socket address can hold on Linux.
	maxSockPath = 107
	dialTimeout = 5 * time.Second
	// replyTimeout bounds how long a client waits for pause to finish the
	// current transaction.
	replyTimeout = 2 * time.Minute
)

func ctlPath(db string) (string, error) {
	p := db + ctlSuffix
	if len(p) > maxSockPath {
		return "", fmt.Errorf("control socket path %s is %d bytes, longer than the %d a unix socket allows: use a shorter --db path", p, len(p), maxSockPath)
	}
	return p, nil
}

// request sends one command to the service serving db and returns its reply
// (without the "ok " prefix).
func request(db, cmd string) (string, error) {
	sock, err := ctlPath(db)
	if err != nil {
		return "", err
	}
	conn, err := net.DialTimeout("unix", sock, dialTimeout)
	if err != nil {
		return "", fmt.Errorf("no zoomsim service answers on %s (is `zoomsim run --db %s` running?): %w", sock, db, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(replyTimeout))
	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return "", fmt.Errorf("send %q to %s: %w", cmd, sock, err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("no reply to %q from %s (the service may have exited): %w", cmd, sock, err)
	}
	line = strings.TrimSuffix(line, "\n")
	if rest, ok := strings.CutPrefix(line, "ok "); ok {
		return rest, nil
	}
	return "", fmt.Errorf("service on %s refused %q: %s", sock, cmd, strings.TrimPrefix(line, "error "))
}

func cmdControl(cmd string, args []string, stdout, stderr io.Writer) error {
	fs := newFlags(cmd, stderr)
	db := fs.String("db", "", "database file the service runs on")
	if err := parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return err
	}
	if *db == "" || fs.NArg() > 0 {
		return usageError{"need --db PATH and no other arguments"}
	}
	reply, err := request(*db, cmd)
	if err != nil {
		return err
	}
	var state string
	var n, last uint64
	if _, err := fmt.Sscanf(reply, "%s %d %d", &state, &n, &last); err != nil {
		return fmt.Errorf("unexpected reply %q: %w", reply, err)
	}
	fmt.Fprintf(stdout, "%s transactions=%d last_tx=%d\n", state, n, last)
	return nil
}
