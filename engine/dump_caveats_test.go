package engine_test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
)

// backupWhileAppending backs up dir (Retries 1) while a goroutine keeps
// appending to the file busy in it, so that busy is stored marked
// changed-while-read; it fails t unless the backup returns ErrIncomplete
// and a snapshot.
func backupWhileAppending(t *testing.T, r *repo.Repository, dir, busy string) *repo.Snapshot {
	t.Helper()
	stop, started := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		f, err := os.OpenFile(busy, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			close(started)
			return
		}
		defer f.Close()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
				f.Write([]byte("y"))
				if i == 0 {
					close(started) // the backup starts once the file is growing
				}
			}
		}
	}()
	<-started
	sn, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{dir}, Now: clock(day1), Retries: 1})
	close(stop)
	wg.Wait()
	if !errors.Is(err, engine.ErrIncomplete) || sn == nil {
		t.Fatalf("backup of a file being written: %v, want ErrIncomplete and a snapshot", err)
	}
	return sn
}

// A dump holding a file that was changing while it was backed up is no
// clean success: written whole, but the error says so (restore reports the
// same file as not restored cleanly). A socket, which tar cannot hold, is
// an entry left out of the archive.
func TestDumpOfChangedFileOrSocketIsNoCleanSuccess(t *testing.T) {
	dir := t.TempDir()
	busy := filepath.Join(dir, "busy.db")
	os.WriteFile(busy, bytes.Repeat([]byte("x"), 8<<20), 0o644)
	os.WriteFile(filepath.Join(dir, "calm"), []byte("calm"), 0o644)
	r := enginetest.NewRepo(t)
	sn := backupWhileAppending(t, r, dir, busy)

	n := lookup(t, r, sn, busy)
	var out bytes.Buffer
	err := engine.DumpFile(ctx, r, busy, n, &out)
	if !errors.Is(err, engine.ErrDumpInconsistent) || uint64(out.Len()) != n.Size {
		t.Errorf("file dump of a changed file: %v, %d of %d bytes; want ErrDumpInconsistent after all of it", err, out.Len(), n.Size)
	}
	out.Reset()
	res, err := engine.DumpTar(ctx, r, sn, dir, &out)
	if !errors.Is(err, engine.ErrDumpInconsistent) || len(res.Warnings) != 1 || res.Warnings[0].Path != busy || len(res.Problems) != 0 {
		t.Errorf("tar dump with a changed file: %v, %+v; want ErrDumpInconsistent naming busy.db", err, res)
	}

	sockDir := filepath.Join(t.TempDir(), "svc")
	os.Mkdir(sockDir, 0o755)
	l, err := net.Listen("unix", filepath.Join(sockDir, "ctl.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	os.WriteFile(filepath.Join(sockDir, "data"), []byte("data"), 0o644)
	sn2 := backup(t, r, day1, sockDir)
	res, err = engine.DumpTar(ctx, r, sn2, sockDir, &out)
	if !errors.Is(err, engine.ErrDumpIncomplete) || len(res.Problems) != 1 || res.Problems[0].Path != filepath.Join(sockDir, "ctl.sock") {
		t.Errorf("tar dump with a socket: %v, %+v; want ErrDumpIncomplete naming the socket", err, res)
	}
}
