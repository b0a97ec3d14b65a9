package main

import (
	"errors"
	"fmt"
	"log"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine/mountfs"
	"github.com/stasisbackup/stasis/repo"
)

func init() { register((*app).mountCommand) }

func (a *app) mountCommand() *cobra.Command {
	var (
		filt       repo.SnapshotFilter
		allowOther bool
		debug      bool
	)
	c := &cobra.Command{
		Use:   "mount MOUNTPOINT",
		Short: "Mount the snapshots as a read-only file system (FUSE) to browse and copy files",
		Long: `Mount the repository's snapshots read-only on MOUNTPOINT (an existing
directory) and serve them until Ctrl-C, SIGTERM or ` + "`umount MOUNTPOINT`" + `:

  MOUNTPOINT/snapshots/<time>/<backed-up paths>/...   one directory per snapshot
  MOUNTPOINT/snapshots/latest                         the newest (a symlink)
  MOUNTPOINT/hosts/<host>/<time>/...                  the same, by host
  MOUNTPOINT/latest                                   symlink to snapshots/<newest>

<time> is the snapshot's time (2006-01-02T15:04:05Z07:00, local time); two
snapshots of the same second get their short id appended. Listing snapshots/
or hosts/ reads the list again, so new backups appear. A file's content is
fetched chunk by chunk as it is read, every chunk verified; sizes, modes,
owners, times, symlinks and hard links are as stored. --host, --tag and --path show only
the snapshots they select.

Needs FUSE: /dev/fuse, and either root (mounts directly) or fusermount3 (the
Debian package fuse3). The mount holds a shared repository lock, like restore.
See docs/mount.md.`,
		Args: exactArgs(1, "a mountpoint"),
		RunE: a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			ctx := c.Context()
			logger := log.New(a.stderr, "stasis: ", 0)
			fsys := mountfs.New(ctx, r, mountfs.Options{Filter: filt, Log: logger.Printf})
			srv, err := mountfs.Mount(ctx, args[0], fsys, mountfs.MountOptions{
				AllowOther: allowOther, Debug: debug, Logger: log.New(a.stderr, "stasis: fuse: ", 0)})
			if err != nil {
				return err
			}
			if a.json {
				writeJSONLine(a.stdout, map[string]any{"message_type": "mounted", "mountpoint": srv.Dir(), "repository": r.Location()})
			} else {
				fmt.Fprintf(a.stdout, "mounted the snapshots of %s on %s (read-only); Ctrl-C, SIGTERM or `umount %s` unmounts\n",
					r.Location(), srv.Dir(), srv.Dir())
			}
			done := make(chan struct{})
			go func() {
				srv.Wait()
				close(done)
			}()
			select {
			case <-done:
				a.sayUnmounted(srv.Dir(), "unmounted from outside")
				return nil
			case <-ctx.Done():
			}
			// Ctrl-C or SIGTERM (exit 0), or a lost lock (run reports it).
			if err := srv.Unmount(); err != nil {
				if errors.Is(err, syscall.EBUSY) {
					fmt.Fprintf(a.stderr, "stasis: %v\n", err)
					return nil
				}
				return err
			}
			a.sayUnmounted(srv.Dir(), "unmounted")
			return nil
		}),
	}
	f := c.Flags()
	addFilterFlags(f, &filt)
	f.BoolVar(&allowOther, "allow-other", false, "let other users see the mount (needs user_allow_other in /etc/fuse.conf unless root)")
	f.BoolVar(&debug, "fuse-debug", false, "log every FUSE request to stderr")
	return c
}

func (a *app) sayUnmounted(dir, how string) {
	if a.json {
		writeJSONLine(a.stdout, map[string]any{"message_type": "unmounted", "mountpoint": dir})
		return
	}
	fmt.Fprintf(a.stdout, "%s %s\n", how, dir)
}
