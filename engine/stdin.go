package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/tree"
)

// StdinFile is a stream backed up as one regular file of the snapshot
// (`backup --stdin`, `backup --stdin-from-command`): a service's own
// consistent dump, chunked and deduplicated like any file, so that today's
// dump shares its unchanged chunks with yesterday's.
//
// The file is recorded with mode 0600, the owner running the backup, and
// as its mtime the Started time Finish reports (when the command started),
// else the time the stream was opened (BackupOptions.Now). Its name
// is chunked with the "db" profile when it matches BackupOptions.DBGlobs,
// else the default one. It is always read whole (a stream has no mtime to
// compare with the parent snapshot's).
type StdinFile struct {
	// Path is where the file appears in the snapshot, absolute ("stdin" and
	// other relative names are put under /). It must not be one of Paths,
	// nor inside one, nor hold one. Directories on the way to it that do
	// not exist on this machine are recorded as directories of mode 0700.
	Path string
	// Open starts the stream. Backup calls it once, on its walking
	// goroutine (see InWindow for when), with a context that is cancelled
	// when the backup fails, so that a command producing the stream can be
	// stopped; Backup reads the stream to its end.
	Open func(ctx context.Context) (io.Reader, error)
	// Finish is called once the stream was read to its end, or reading it
	// failed (readErr), on the goroutine that read it, before anything that
	// refers to the data is written. A non-nil error means the stream is not
	// whole (its command failed, was killed, timed out): Backup then writes
	// no snapshot and returns that error. The returned source is recorded in
	// the snapshot (Backup fills in its Path, Bytes and InWindow); nil means
	// an empty record.
	Finish func(readErr error) (*repo.StdinSource, error)
	// InWindow: the stream is opened before the Prefetch files are read and
	// read to its end before AfterPrefetch is called (inside a stop-mode
	// quiesce window, so the service's downtime includes it). Otherwise it
	// is opened after AfterPrefetch, when the walk of Paths begins, and read
	// alongside it.
	InWindow bool
}

// ErrStdinEmpty is matched by the error Backup returns with a snapshot whose
// stdin stream was empty: the snapshot is written (with a warning problem on
// the file), but a dump that produced nothing is worth a look.
var ErrStdinEmpty = errors.New("the stdin stream was empty")

// StdinPath returns the absolute path at which a stream named name is
// stored ("stdin" → "/stdin"), or an error when it collides with paths
// (absolute, clean): equal to one, inside one, or holding one.
func StdinPath(name string, paths []string) (string, error) {
	if name == "" {
		name = "stdin"
	}
	p := filepath.Clean("/" + name)
	if p == "/" {
		return "", fmt.Errorf("stdin file name %q: name a file, not the root", name)
	}
	for _, q := range paths {
		switch {
		case p == q:
			return "", fmt.Errorf("stdin file %s is also a path to back up: give it another name", p)
		case q == "/" || strings.HasPrefix(p, q+"/"):
			return "", fmt.Errorf("stdin file %s is inside the backup path %s: give it a name outside the backed-up paths", p, q)
		case strings.HasPrefix(q, p+"/"):
			return "", fmt.Errorf("stdin file %s would hold the backup path %s: give it another name", p, q)
		}
	}
	return p, nil
}

// withStdin returns paths plus the stdin file's path, sorted: the paths a
// snapshot records (and a parent must have).
func withStdin(paths []string, stdin string) []string {
	if stdin == "" {
		return paths
	}
	out := append(append([]string{}, paths...), stdin)
	sort.Strings(out)
	return out
}

// stdinStream is the stdin file of one backup (BackupOptions.Stdin): where
// it goes in the snapshot, the future of its node (resolved once the
// stream was read, or failed) and what Finish reported.
type stdinStream struct {
	opts    *StdinFile
	path    string    // absolute, in the snapshot (StdinPath)
	fut     *future   // its node, once read
	dir     tree.Node // a missing directory on the way to it, without a name (virtualDir)
	started bool      // set on the walking goroutine by startStdin
	reading sync.WaitGroup
	source  *repo.StdinSource // set once the stream was read to its end
}

// newStdinStream returns the stream of s, stored at path; the virtual
// directories on the way to it belong to the user running the backup and
// have the backup's start as mtime.
func newStdinStream(s *StdinFile, path string, names *idNames, start time.Time) *stdinStream {
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	return &stdinStream{opts: s, path: path, fut: newFuture(tree.Node{}),
		dir: tree.Node{Kind: tree.Dir, Mode: 0o700, UID: uid, GID: gid,
			User: names.user(uid), Group: names.group(gid), MTime: start.UnixNano(), CTime: start.UnixNano()}}
}

// virtualDir is the node of a directory on the way to the stdin file that
// does not exist here.
func (s *stdinStream) virtualDir(name string) tree.Node {
	n := s.dir
	n.Name = name
	return n
}

// wait waits until the stream's reader ended, if it was started; a nil
// stream has none.
func (s *stdinStream) wait() {
	if s != nil {
		s.reading.Wait()
	}
}

// startStdin opens the stdin stream (once) and reads it on a goroutine of
// the backup's group; the stdin future is resolved when it is read.
func (b *backup) startStdin(ctx context.Context) {
	s := b.stdin
	if s == nil || s.started {
		return
	}
	s.started = true
	s.reading.Add(1)
	b.group.Go(func() (err error) {
		defer s.reading.Done()
		defer close(s.fut.done)
		defer recoverTo(&err, "reading the stdin stream")
		return b.readStdin(ctx)
	})
}

// waitStdin waits until the stdin stream was read (InWindow).
func (b *backup) waitStdin(ctx context.Context) error {
	if b.stdin == nil {
		return nil
	}
	select {
	case <-b.stdin.fut.done:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// readStdin opens the stream, reads and saves it to its end and resolves
// the stdin file's node. Errors are fatal: without the whole stream there
// is no snapshot.
func (b *backup) readStdin(ctx context.Context) error {
	s := b.stdin
	n := &s.fut.node
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	openedAt := b.opts.Now()
	opened := openedAt.UnixNano()
	*n = tree.Node{Name: filepath.Base(s.path), Kind: tree.File, Mode: 0o600, UID: uid, GID: gid, Links: 1,
		User: b.names.user(uid), Group: b.names.group(gid), MTime: opened, CTime: opened}
	r, err := s.opts.Open(ctx)
	if err != nil {
		return fmt.Errorf("stdin file %s: %w", s.path, err)
	}
	if b.parentRoot != nil && b.walker.parentNode(ctx, b.parentRoot, s.path) != nil {
		b.counts.filesChanged.Add(1)
	} else {
		b.counts.filesNew.Add(1)
	}
	content, rerr := b.files.readStream(ctx, s.path, r)
	src, ferr := s.opts.Finish(rerr)
	if rerr != nil && (ctx.Err() != nil || isRepoError(rerr) || isPanic(rerr)) {
		return rerr
	}
	if ferr != nil {
		return ferr
	}
	if rerr != nil { // Finish did not see a problem in a failed read: still no snapshot
		return fmt.Errorf("stdin file %s: read the stream: %w", s.path, rerr)
	}
	total := contentSize(content)
	n.Content, n.Size = content, total
	b.counts.doneFiles.Add(1)
	b.counts.totalBytes.Add(int64(total))
	if src == nil {
		src = &repo.StdinSource{}
	}
	src.Path, src.Bytes, src.InWindow = s.path, int64(total), s.opts.InWindow
	if src.Started.IsZero() {
		src.Started = openedAt
	}
	n.MTime, n.CTime = src.Started.UnixNano(), src.Started.UnixNano() // the command's start
	s.source = src
	if total == 0 {
		what := "the stream"
		if len(src.Command) > 0 {
			what = "the command"
		}
		b.problems.add(repo.Problem{Path: s.path, Kind: repo.ProblemWarning,
			Error: what + " ended cleanly but wrote nothing: the file is empty (check that the dump has data)"})
	}
	return nil
}
