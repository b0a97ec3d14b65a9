package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/tree"
)

func init() { register((*app).dumpCommand) }

// dumpFlags are the flags of `stasis dump`.
type dumpFlags struct {
	archive, target string
	filt            repo.SnapshotFilter
}

func (a *app) dumpCommand() *cobra.Command {
	var df dumpFlags
	c := &cobra.Command{
		Use:   "dump ID|latest PATH",
		Short: "Write one file of a snapshot, or a directory as a tar archive, to stdout",
		Long: `Write the snapshot entry at PATH (the path as backed up) to stdout, or to
--target FILE. A regular file gives its content; a directory (or any entry
with --archive tar) gives a POSIX tar archive (PAX format) of it and
everything below it, with the stored modes, owners (ids and names), times to
the nanosecond, symlinks, hard links, FIFOs and devices; member names start
at the directory's own name (dumping /srv/zoomserv gives zoomserv/...).
In an archive a sparse file is a GNU sparse member (PAX, format 1.0), which
GNU tar extracts with its holes; a sparse file dumped alone gives its holes
as zeros.

Every chunk is verified before it is written. A chunk that fails stops the
dump with exit code 1 and the file named; what was written is then
incomplete (with --target nothing is left behind). Files the snapshot holds
no content for are left out of an archive, listed, and the exit code is 1.
Binary output is not written to a terminal.

  stasis dump latest /srv/zoomserv/X500.db > X500.db
  stasis dump latest /srv/zoomserv | tar -x -p -C /tmp/r
  stasis dump --host zoom1 latest /srv/zoomserv --target /tmp/zoomserv.tar`,
		Args: exactArgs(2, "a snapshot ID (or latest) and a PATH"),
		RunE: func(c *cobra.Command, args []string) error {
			if df.archive != "" && df.archive != "tar" {
				return usagef("dump: --archive %q: the only archive format is tar", df.archive)
			}
			return a.withRepo(c.Context(), func(r *repo.Repository) error { return a.runDump(c.Context(), r, &df, args[0], args[1]) })
		},
	}
	f := c.Flags()
	f.StringVar(&df.archive, "archive", "", "archive format: tar (the default for directories; files give their content unless this is set)")
	f.StringVarP(&df.target, "target", "t", "", "write to FILE instead of stdout (replaced only when the dump succeeds)")
	addFilterFlags(f, &df.filt)
	return c
}

// runDump is `stasis dump ref path` on r: it writes the entry at path of
// snapshot ref, and with --target says what it wrote.
func (a *app) runDump(ctx context.Context, r *repo.Repository, df *dumpFlags, ref, path string) error {
	sn, err := r.FindSnapshot(ctx, ref, df.filt)
	if err != nil {
		return err
	}
	p := filepath.Clean("/" + path)
	n, err := engine.Lookup(ctx, r, sn, p)
	if err != nil {
		return err
	}
	asTar := df.archive == "tar" || n.Kind != tree.File
	out, err := a.dumpOutput(df.target, asTar)
	if err != nil {
		return err
	}
	res, err := a.dumpEntry(ctx, r, sn, p, n, asTar, out)
	if errors.Is(err, errBinaryTerminal) {
		return usagef("dump: %s is binary and stdout is a terminal: redirect it (stasis dump %s %s > FILE) or give --target FILE",
			quotePath(p), ref, path)
	}
	written := errors.Is(err, engine.ErrDumpIncomplete) || errors.Is(err, engine.ErrDumpInconsistent)
	if err != nil && !written {
		return fmt.Errorf("dump of %s from snapshot %s failed, the output is incomplete: %w", quotePath(p), sn.ID.Short(), err)
	}
	if df.target != "" {
		entries, bytes := int64(1), int64(n.Size)
		if res != nil {
			entries, bytes = res.Entries, res.Bytes
		}
		if a.json {
			writeJSONLine(a.stdout, map[string]any{"message_type": "summary", "snapshot_id": sn.ID.String(), "path": p,
				"target": df.target, "archive": asTar, "entries": entries, "bytes": bytes})
		} else {
			fmt.Fprintf(a.stdout, "dumped %s of snapshot %s to %s: %d entries, %s\n", quotePath(p), sn.ID.Short(), df.target, entries, humanBytes(bytes))
		}
	}
	if errors.Is(err, engine.ErrDumpIncomplete) { // a complete archive of the rest
		return fmt.Errorf("dump of %s from snapshot %s: %w (the entries listed above are not in it)", quotePath(p), sn.ID.Short(), err)
	}
	if err != nil { // ErrDumpInconsistent: written whole
		return fmt.Errorf("dump of %s from snapshot %s: %w", quotePath(p), sn.ID.Short(), err)
	}
	return nil
}

// dumpEntry writes the entry n at p of sn to out, as a tar archive or as
// the file's content, lists on stderr what an archive left out, and
// finishes out (or aborts it on an error other than
// engine.ErrDumpIncomplete or ErrDumpInconsistent). The result is nil for a file's content.
func (a *app) dumpEntry(ctx context.Context, r *repo.Repository, sn *repo.Snapshot, p string, n *tree.Node, asTar bool, out *dumpOut) (*engine.DumpResult, error) {
	var (
		res *engine.DumpResult
		err error
	)
	if asTar {
		res, err = engine.DumpTar(ctx, r, sn, p, out)
	} else {
		err = engine.DumpFile(ctx, r, p, n, out)
	}
	if res != nil {
		printProblems(a.stderr, "entries were left out of the archive", res.Problems)
		printProblems(a.stderr, "warnings", res.Warnings)
	}
	if err == nil || errors.Is(err, engine.ErrDumpIncomplete) || errors.Is(err, engine.ErrDumpInconsistent) {
		if ferr := out.finish(); ferr != nil {
			err = ferr
		}
	} else {
		out.abort()
	}
	return res, err
}

// errBinaryTerminal is returned by a terminal's guard when the output is binary.
var errBinaryTerminal = errors.New("binary output to a terminal")

// dumpOut is where a dump goes: stdout (guarded when it is a terminal) or a
// file written under a temporary name and renamed when complete.
type dumpOut struct {
	*bufio.Writer
	file       *os.File // --target
	tmp, final string   // set when file is a temporary to rename
}

func (a *app) dumpOutput(target string, asTar bool) (*dumpOut, error) {
	if target == "" {
		w := a.stdout
		if isTerminal(w) {
			if asTar {
				return nil, usagef("dump: stdout is a terminal and a tar archive is binary: redirect it (stasis dump ... > FILE.tar) or give --target FILE")
			}
			w = &terminalGuard{w: w}
		}
		return &dumpOut{Writer: bufio.NewWriterSize(w, 1<<20)}, nil
	}
	fi, err := os.Stat(target)
	switch {
	case err == nil && fi.IsDir():
		return nil, usagef("dump: --target %s is a directory; give a file name", target)
	case err == nil && !fi.Mode().IsRegular(): // a device or a FIFO: write to it directly
		f, err := os.OpenFile(target, os.O_WRONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("dump target: %w", err)
		}
		return &dumpOut{Writer: bufio.NewWriterSize(f, 1<<20), file: f}, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("dump target: %w", err)
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+".stasis-dump-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
	if err != nil {
		return nil, fmt.Errorf("dump target: %w", err)
	}
	return &dumpOut{Writer: bufio.NewWriterSize(f, 1<<20), file: f, tmp: tmp, final: target}, nil
}

// finish flushes and, for a target file, syncs and renames it into place.
func (o *dumpOut) finish() error {
	if err := o.Flush(); err != nil {
		o.abort()
		return fmt.Errorf("dump output: %w", err)
	}
	if o.file == nil {
		return nil
	}
	if o.tmp != "" {
		if err := o.file.Sync(); err != nil {
			o.abort()
			return fmt.Errorf("dump target %s: %w", o.final, err)
		}
	}
	if err := o.file.Close(); err != nil {
		o.abort()
		return fmt.Errorf("dump target %s: %w", o.final, err)
	}
	if o.tmp != "" {
		if err := os.Rename(o.tmp, o.final); err != nil {
			os.Remove(o.tmp)
			return fmt.Errorf("dump target: %w", err)
		}
	}
	return nil
}

// abort ends a failed dump: stdout gets what was written before the failure
// (the exit code says it is incomplete), a temporary target file is removed.
func (o *dumpOut) abort() {
	if o.file == nil {
		o.Flush()
		return
	}
	o.file.Close()
	if o.tmp != "" {
		os.Remove(o.tmp)
	}
}

// terminalGuard passes text through to a terminal and refuses binary
// output: its first write decides (a NUL byte or invalid UTF-8 in the first
// 8 KiB is binary).
type terminalGuard struct {
	w       io.Writer
	checked bool
}

func (g *terminalGuard) Write(p []byte) (int, error) {
	if !g.checked {
		if looksBinary(p) {
			return 0, errBinaryTerminal
		}
		g.checked = true
	}
	return g.w.Write(p)
}

func looksBinary(p []byte) bool {
	if len(p) > 8<<10 {
		p = p[:8<<10]
		// A rune cut at the end is not invalid.
		for i := 0; i < utf8.UTFMax && len(p) > 0 && !utf8.RuneStart(p[len(p)-1]); i++ {
			p = p[:len(p)-1]
		}
		if len(p) > 0 && !utf8.FullRune(p[len(p)-1:]) {
			p = p[:len(p)-1]
		}
	}
	for _, b := range p {
		if b == 0 {
			return true
		}
	}
	return !utf8.Valid(p)
}
