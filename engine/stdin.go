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

	"github.com/restic/chunker"
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

// addStdin puts the stdin file into the path trie of walkRoot.
func (b *backup) addStdin(root *pathTrie) {
	n := root
	parts := strings.Split(strings.TrimPrefix(b.stdinPath, "/"), "/")
	for i, c := range parts {
		if n.children[c] == nil {
			n.children[c] = &pathTrie{children: map[string]*pathTrie{}}
		}
		n = n.children[c]
		if i == len(parts)-1 {
			n.stdin = b.stdinFut
		}
	}
}

// virtualDir is the node of a directory on the way to the stdin file that
// does not exist here.
func (b *backup) virtualDir(name string) tree.Node {
	return tree.Node{Name: name, Kind: tree.Dir, Mode: 0o700, UID: uint32(os.Getuid()), GID: uint32(os.Getgid()),
		User: b.names.user(uint32(os.Getuid())), Group: b.names.group(uint32(os.Getgid())), MTime: b.start.UnixNano(), CTime: b.start.UnixNano()}
}

// startStdin opens the stdin stream (once) and reads it on a goroutine of
// the backup's group; the stdin future is resolved when it is read.
func (b *backup) startStdin(ctx context.Context) {
	if b.stdinFut == nil || b.stdinStarted {
		return
	}
	b.stdinStarted = true
	b.stdinWG.Add(1)
	b.group.Go(func() (err error) {
		defer b.stdinWG.Done()
		defer close(b.stdinFut.done)
		defer recoverTo(&err, "reading the stdin stream")
		return b.readStdin(ctx)
	})
}

// waitStdin waits until the stdin stream was read (InWindow).
func (b *backup) waitStdin(ctx context.Context) error {
	if b.stdinFut == nil {
		return nil
	}
	select {
	case <-b.stdinFut.done:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func (b *backup) readStdin(ctx context.Context) error {
	s := b.opts.Stdin
	n := &b.stdinFut.node
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	openedAt := b.opts.Now()
	opened := openedAt.UnixNano()
	*n = tree.Node{Name: filepath.Base(b.stdinPath), Kind: tree.File, Mode: 0o600, UID: uid, GID: gid, Links: 1,
		User: b.names.user(uid), Group: b.names.group(gid), MTime: opened, CTime: opened}
	r, err := s.Open(ctx)
	if err != nil {
		return fmt.Errorf("stdin file %s: %w", b.stdinPath, err)
	}
	if b.parentRoot != nil && b.parentNode(ctx, b.parentRoot, b.stdinPath) != nil {
		b.filesChanged.Add(1)
	} else {
		b.filesNew.Add(1)
	}
	profile := b.profileFor(b.stdinPath)
	ck := chunker.NewWithBoundaries(nil, b.pol, profile.Min, profile.Max)
	content, read, rerr := b.chunkReader(ctx, r, profile, ck)
	b.bytesRead.Add(read)
	src, ferr := s.Finish(rerr)
	if rerr != nil && (ctx.Err() != nil || isRepoError(rerr) || isPanic(rerr)) {
		return rerr
	}
	if ferr != nil {
		return ferr
	}
	if rerr != nil { // Finish did not see a problem in a failed read: still no snapshot
		return fmt.Errorf("stdin file %s: read the stream: %w", b.stdinPath, rerr)
	}
	var total uint64
	for _, e := range content {
		total += e.Length
	}
	n.Content, n.Size = content, total
	b.doneFiles.Add(1)
	b.totalBytes.Add(int64(total))
	if src == nil {
		src = &repo.StdinSource{}
	}
	src.Path, src.Bytes, src.InWindow = b.stdinPath, int64(total), s.InWindow
	if src.Started.IsZero() {
		src.Started = openedAt
	}
	n.MTime, n.CTime = src.Started.UnixNano(), src.Started.UnixNano() // the command's start
	b.stdinSource = src
	if total == 0 {
		what := "the stream"
		if len(src.Command) > 0 {
			what = "the command"
		}
		b.addProblem(repo.Problem{Path: b.stdinPath, Kind: repo.ProblemWarning,
			Error: what + " ended cleanly but wrote nothing: the file is empty (check that the dump has data)"})
	}
	return nil
}

// profileFor returns the chunk profile of the file at path: "db" when its
// base name matches a db glob, else "default".
func (b *backup) profileFor(path string) repo.ChunkProfile {
	base := filepath.Base(path)
	for _, g := range b.dbGlobs {
		if ok, _ := filepath.Match(g, base); ok {
			return b.profiles["db"]
		}
	}
	return b.profiles["default"]
}
