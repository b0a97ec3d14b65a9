package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/stasisbackup/stasis/cmd/zoomsim/zdb"
)

// service is one running zoomsim. Only the goroutine in loop touches db, log
// and paused-state transitions; control connections talk to it through reqs.
type service struct {
	dbPath, logPath string
	closeOnPause    bool
	interval        time.Duration
	limit           uint64    // stop after this many transactions (0 = never)
	fakeClock       time.Time // if set, log times are fakeClock + txid seconds

	db  *zdb.DB
	log *os.File
	rng *rand.Rand

	txCount atomic.Uint64
	lastTx  atomic.Uint64
	paused  atomic.Bool
	reqs    chan ctlReq
}

type ctlReq struct {
	cmd   string
	reply chan string
}

func cmdRun(args []string, stdout, stderr io.Writer) error {
	fset := newFlags("run", stderr)
	db := fset.String("db", "", "database file (created if missing)")
	pages := fset.Int("pages", 1024, "data pages when creating the database")
	seed := fset.Int64("seed", 1, "seed for creation and for the transaction sequence")
	logPath := fset.String("log", "", "transaction log (default X500.log beside the db)")
	closeOnPause := fset.Bool("close-on-pause", false, "close the db and log files while paused")
	interval := fset.Duration("interval", 0, "pause between transactions")
	limit := fset.Uint64("transactions", 0, "exit 0 after this many transactions (0 = run until signalled)")
	fake := fset.String("fake-clock", "", "RFC 3339 time: log times start there and advance 1s per transaction (deterministic logs)")
	if err := parse(fset, args); err != nil {
		return err
	}
	if *db == "" || fset.NArg() > 0 {
		return usageError{"need --db PATH and no other arguments"}
	}
	s := &service{dbPath: *db, logPath: *logPath, closeOnPause: *closeOnPause,
		interval: *interval, limit: *limit, reqs: make(chan ctlReq)}
	if s.logPath == "" {
		s.logPath = filepath.Join(filepath.Dir(*db), "X500.log")
	}
	if *fake != "" {
		t, err := time.Parse(time.RFC3339, *fake)
		if err != nil {
			return usageError{fmt.Sprintf("--fake-clock: %v", err)}
		}
		s.fakeClock = t
	}
	if _, err := os.Stat(*db); errors.Is(err, fs.ErrNotExist) {
		if err := zdb.Create(*db, *pages, *seed); err != nil {
			return err
		}
	}
	st, err := zdb.Scan(*db)
	if err != nil {
		return fmt.Errorf("refusing to run on %s: %w", *db, err)
	}
	s.lastTx.Store(st.MaxTxID)
	s.rng = rand.New(rand.NewSource(*seed ^ int64(st.MaxTxID)*7919))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	ln, err := s.listen()
	if err != nil {
		return err
	}
	defer ln.Close()
	pidFile := *db + pidSuffix
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	defer os.Remove(pidFile)
	if err := s.open(); err != nil {
		return err
	}
	go s.serve(ln)
	fmt.Fprintf(stdout, "ready pid=%d ctl=%s\n", os.Getpid(), ln.Addr())
	if f, ok := stdout.(*os.File); ok {
		_ = f.Sync()
	}
	err = s.loop(ctx)
	if cerr := s.close(); err == nil {
		err = cerr
	}
	return err
}

// listen opens the control socket, refusing when another service answers on
// it and removing a stale socket file left by one that died.
func (s *service) listen() (*net.UnixListener, error) {
	sock, err := ctlPath(s.dbPath)
	if err != nil {
		return nil, err
	}
	if _, err := request(s.dbPath, "status"); err == nil {
		return nil, fmt.Errorf("another zoomsim already serves %s (socket %s); stop it first", s.dbPath, sock)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove stale control socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on control socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	return ln, nil
}

func (s *service) open() error {
	db, err := zdb.Open(s.dbPath)
	if err != nil {
		return err
	}
	lf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		db.Close()
		return fmt.Errorf("open transaction log: %w", err)
	}
	s.db, s.log = db, lf
	return nil
}

func (s *service) close() error {
	if s.db == nil {
		return nil
	}
	err := errors.Join(s.db.Sync(), s.db.Close(), s.log.Close())
	s.db, s.log = nil, nil
	return err
}

// loop runs transactions and applies pause/resume requests between them.
func (s *service) loop(ctx context.Context) error {
	for {
		// Requests first, without waiting.
		select {
		case <-ctx.Done():
			return nil
		case r := <-s.reqs:
			if err := s.handle(r); err != nil {
				return err
			}
			continue
		default:
		}
		if s.paused.Load() {
			if stop, err := s.await(ctx, nil); stop || err != nil {
				return err
			}
			continue
		}
		if err := s.transact(); err != nil {
			return err
		}
		if s.limit > 0 && s.txCount.Load() >= s.limit {
			return nil
		}
		if s.interval > 0 {
			t := time.NewTimer(s.interval)
			// An ended context is seen at the top of the loop.
			_, err := s.await(ctx, t.C)
			t.Stop()
			if err != nil {
				return err
			}
		}
	}
}

// await waits for the context to end (stop), a control request (handled;
// its error returned) or timer to fire (nil: never).
func (s *service) await(ctx context.Context, timer <-chan time.Time) (stop bool, err error) {
	select {
	case <-ctx.Done():
		return true, nil
	case r := <-s.reqs:
		return false, s.handle(r)
	case <-timer:
		return false, nil
	}
}

func (s *service) transact() error {
	id := s.lastTx.Load() + 1
	tx, err := s.db.Transact(s.rng, id)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	if !s.fakeClock.IsZero() {
		now = s.fakeClock.Add(time.Duration(id) * time.Second)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s tx=%d pages=", now.Format(time.RFC3339), id)
	for i, p := range tx.Pages {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d:%+d", p, tx.Deltas[i])
	}
	b.WriteString(" commit\n")
	if _, err := s.log.WriteString(b.String()); err != nil {
		return fmt.Errorf("append to transaction log %s: %w", s.logPath, err)
	}
	if err := s.db.Sync(); err != nil {
		return err
	}
	if err := s.log.Sync(); err != nil {
		return fmt.Errorf("sync transaction log %s: %w", s.logPath, err)
	}
	s.lastTx.Store(id)
	s.txCount.Add(1)
	return nil
}

// handle applies pause or resume between transactions and replies.
func (s *service) handle(r ctlReq) error {
	var err error
	switch r.cmd {
	case "pause":
		if !s.paused.Load() && s.closeOnPause {
			err = s.close()
		}
		if err == nil {
			s.paused.Store(true)
		}
	case "resume":
		if s.paused.Load() && s.db == nil {
			err = s.open()
		}
		if err == nil {
			s.paused.Store(false)
		}
	}
	if err != nil {
		r.reply <- "error " + err.Error()
		return err
	}
	r.reply <- s.state()
	return nil
}

func (s *service) state() string {
	st := "running"
	if s.paused.Load() {
		st = "paused"
	}
	return fmt.Sprintf("ok %s %d %d", st, s.txCount.Load(), s.lastTx.Load())
}

// serve answers control connections until ln is closed. status is answered
// here at once; pause and resume go to the loop and wait for it.
func (s *service) serve(ln *net.UnixListener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go s.conn(conn)
	}
}

func (s *service) conn(c net.Conn) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(dialTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	cmd := strings.TrimSpace(line)
	var reply string
	switch cmd {
	case "status":
		reply = s.state()
	case "pause", "resume":
		r := ctlReq{cmd: cmd, reply: make(chan string, 1)}
		s.reqs <- r // the loop is blocked forever only after it returned; then the process exits
		reply = <-r.reply
	default:
		reply = fmt.Sprintf("error unknown command %q (want pause, resume or status)", cmd)
	}
	_, _ = io.WriteString(c, reply+"\n")
}
