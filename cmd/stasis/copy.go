package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/crypto"
)

func init() { register((*app).copyCommand) }

// Environment variables of copy's source repository.
const (
	envFromRepo         = "STASIS_FROM_REPO"
	envFromPasswordFile = "STASIS_FROM_PASSWORD_FILE"
	envFromPassword     = "STASIS_FROM_PASSWORD"
)

// fromRepo is copy's source repository: --from-repo and its password and
// cache flags.
type fromRepo struct {
	loc      string
	pw       passwordFlags
	cacheDir string
}

func (a *app) copyCommand() *cobra.Command {
	var (
		from fromRepo
		filt repo.SnapshotFilter
	)
	from.pw = passwordFlags{fileFlag: "--from-password-file", commandFlag: "--from-password-command",
		fileEnv: envFromPasswordFile, passwordEnv: envFromPassword}
	c := &cobra.Command{
		Use:   "copy --from-repo SRC [SNAPSHOT|latest]... [--host H] [--tag T] [--path P]",
		Short: "Copy snapshots from another repository into this one, storing only what it lacks",
		Long: `Copy snapshots from the repository --from-repo (or $STASIS_FROM_REPO) into the
repository --repo, which must exist (stasis init). Without SNAPSHOT arguments
every snapshot of the source is copied; --host, --tag and --path narrow them
(and the snapshot "latest" picks). A snapshot copied before (the destination
has a snapshot whose original is it) is skipped and said so.

The two repositories have different keys, so every blob is decrypted from the
source, hashed with the destination's key and, when the destination lacks
it, compressed and encrypted as the destination's own backups are; trees are
rewritten with the new ids. A later copy reads only what changed since the
snapshot copied before. A copy that is stopped leaves the destination
consistent; the next one stores nothing twice.

The source's password comes from --from-password-file FILE (or
$STASIS_FROM_PASSWORD_FILE), --from-password-command CMD,
$STASIS_FROM_PASSWORD, or a prompt on a terminal, in this order; the
destination's from the usual --password-file, ... The source is locked shared,
the destination as a backup locks it. Both may be directories or s3: URLs (one
set of AWS_* credentials serves both).`,
		RunE: func(c *cobra.Command, args []string) error {
			ctx := c.Context()
			if from.loc == "" {
				return usagef("copy: no source repository given: use --from-repo DIR|s3:URL or set %s", envFromRepo)
			}
			st, err := a.storage(ctx)
			if err != nil {
				return err
			}
			if from.loc == a.repoDir {
				return usagef("copy: --from-repo and --repo are both %s; copy needs two repositories", from.loc)
			}
			// The destination must exist before the source is asked for
			// a password or locked.
			if ok, err := repo.ObjectExists(ctx, st, "config"); err != nil {
				return err
			} else if !ok {
				return fmt.Errorf("destination %s: %w (create one with `stasis init --repo %s`)", st.Location(), repo.ErrNoRepository, st.Location())
			}
			src, release, err := a.openSource(ctx, from)
			if err != nil {
				return err
			}
			defer release()
			return a.withRepo(ctx, func(dst *repo.Repository) error {
				if src.Config().ID == dst.Config().ID {
					return usagef("copy: %s and %s are the same repository (id %s)", src.Location(), dst.Location(), dst.Config().ID)
				}
				snaps, err := pickCopySnapshots(ctx, src, args, filt)
				if err != nil {
					return err
				}
				return a.runCopy(ctx, src, dst, snaps)
			})
		},
	}
	f := c.Flags()
	f.StringVar(&from.loc, "from-repo", os.Getenv(envFromRepo), "source repository: a directory or s3:URL (default $"+envFromRepo+")")
	f.StringVar(&from.pw.file, "from-password-file", "", "read the source repository's password from FILE (default $"+envFromPasswordFile+")")
	f.StringVar(&from.pw.command, "from-password-command", "", "run CMD (with /bin/sh -c) and read the source repository's password from its output")
	f.StringVar(&from.cacheDir, "from-cache-dir", "", "client cache directory of the source repository (default: --cache-dir's)")
	addFilterFlags(f, &filt)
	return c
}

// openSource opens copy's source repository under a shared lock of its
// own (takeLock, as lockRepo locks the destination). release unlocks and
// closes it. A lost source lock stops the command
// like a lost destination lock.
func (a *app) openSource(ctx context.Context, from fromRepo) (*repo.Repository, func(), error) {
	st, err := repo.OpenStorage(ctx, from.loc)
	if err != nil {
		return nil, nil, fmt.Errorf("source %s: %w", from.loc, err)
	}
	dir := st.Location()
	if ok, err := repo.ObjectExists(ctx, st, "config"); err != nil {
		return nil, nil, fmt.Errorf("source %s: %w", dir, err)
	} else if !ok {
		return nil, nil, fmt.Errorf("source %s (--from-repo): %w", dir, repo.ErrNoRepository)
	}
	_, unlock, err := a.takeLock(ctx, st, false, dir)
	if err != nil {
		return nil, nil, err
	}
	cacheDir := from.cacheDir
	if cacheDir == "" {
		cacheDir = a.cacheDir
	}
	pw := a.repoPasswordFrom(dir, a.passwordSourceOf(from.pw))
	r, err := repo.Open(ctx, st, repo.OpenOptions{CacheDir: cacheDir, CacheWait: a.locking.retry,
		Password: func(ctx context.Context) ([]byte, error) {
			p, err := pw(ctx)
			if errors.Is(err, crypto.ErrNoPassword) {
				return nil, errNoSourcePassword
			}
			return p, err
		}})
	if err != nil {
		unlock()
		return nil, nil, fmt.Errorf("source (--from-repo): %w", err)
	}
	return r, func() { r.Close(); unlock() }, nil
}

// errNoSourcePassword is copy's crypto.ErrNoPassword: it names the source's
// password flags.
var errNoSourcePassword error = noSourcePassword{}

type noSourcePassword struct{}

func (noSourcePassword) Error() string {
	return "no password given for the source: use --from-password-file FILE (or " + envFromPasswordFile +
		"=FILE), --from-password-command CMD, or " + envFromPassword + "=PASSWORD, or run on a terminal to be asked"
}

func (noSourcePassword) Is(target error) bool { return target == crypto.ErrNoPassword }

// pickCopySnapshots resolves the arguments of copy (ids and "latest"; all
// snapshots when none) in the source, narrowed by filt; each once.
func pickCopySnapshots(ctx context.Context, src *repo.Repository, args []string, filt repo.SnapshotFilter) ([]*repo.Snapshot, error) {
	if len(args) == 0 {
		list, bad, err := src.Snapshots(ctx)
		if err != nil {
			return nil, err
		}
		if len(bad) > 0 {
			return nil, fmt.Errorf("source %s: %w (run `stasis check` on it, or name the snapshots to copy)", src.Location(), errors.Join(bad...))
		}
		return repo.FilterSnapshots(list, filt), nil
	}
	out, err := findSnapshots(ctx, src, args, filt)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", src.Location(), err)
	}
	return out, nil
}

// copyJSON is one snapshot in copy's --json summary.
type copyJSON struct {
	Source      string `json:"source"`
	Snapshot    string `json:"snapshot"` // the copy in the destination
	Skipped     bool   `json:"skipped"`  // copied before
	BlobsAdded  int64  `json:"blobs_added"`
	BytesAdded  int64  `json:"bytes_added"`
	StoredAdded int64  `json:"stored_added"`
	BlobsRead   int64  `json:"blobs_read"`
}

func (a *app) runCopy(ctx context.Context, src, dst *repo.Repository, snaps []*repo.Snapshot) error {
	start := time.Now()
	opts := engine.CopyOptions{}
	// Progress (progress.go): a phase per snapshot; its files and bytes
	// against the snapshot's summary. Status lines go to stdout, with the
	// summary.
	prog := a.startProgress("copy", "files", a.stdout)
	opts.Progress = prog.Counts()
	stdout := prog.logWriter(a.stdout)
	var out []copyJSON
	var copied, skipped int
	var blobs, stored int64
	opts.OnSnapshot = func(cs engine.CopiedSnapshot) {
		out = append(out, copyJSON{Source: cs.Source.ID.String(), Snapshot: cs.Copy.ID.String(), Skipped: cs.Skipped,
			BlobsAdded: cs.BlobsAdded, BytesAdded: cs.BytesAdded, StoredAdded: cs.StoredAdded, BlobsRead: cs.BlobsRead})
		if cs.Skipped {
			skipped++
		} else {
			copied++
			blobs += cs.BlobsAdded
			stored += cs.StoredAdded
		}
		if a.json {
			return
		}
		if cs.Skipped {
			fmt.Fprintf(stdout, "snapshot %s already copied as %s\n", cs.Source.ID.Short(), cs.Copy.ID.Short())
		} else {
			fmt.Fprintf(stdout, "copied snapshot %s as %s (%d new blobs, %s)\n", cs.Source.ID.Short(), cs.Copy.ID.Short(), cs.BlobsAdded, humanBytes(cs.StoredAdded))
		}
	}
	_, err := engine.Copy(ctx, src, dst, snaps, opts)
	prog.done()
	if a.json {
		if out == nil {
			out = []copyJSON{}
		}
		writeJSONLine(a.stdout, map[string]any{"message_type": "summary", "from": src.Location(), "to": dst.Location(),
			"copied": copied, "skipped": skipped, "blobs_added": blobs, "stored_added": stored, "snapshots": out,
			"duration_seconds": time.Since(start).Seconds()})
	} else {
		fmt.Fprintf(a.stdout, "%d snapshots copied from %s to %s, %d already there; %d new blobs, %s added in %s\n",
			copied, src.Location(), dst.Location(), skipped, blobs, humanBytes(stored), humanDuration(time.Since(start)))
	}
	return err
}
