package main

import (
	"fmt"
	"io/fs"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/tree"
)

func (a *app) lsCommand() *cobra.Command {
	var long bool
	var (
		at   string
		filt repo.SnapshotFilter
	)
	c := &cobra.Command{
		Use:   "ls ID|latest|--at TIME [PATH]",
		Short: "List the entries of a snapshot, below PATH when given",
		Args: func(c *cobra.Command, args []string) error {
			if n := len(args); (at == "" && (n < 1 || n > 2)) || (at != "" && n > 1) {
				return usagef("ls: give a snapshot ID (or latest, or --at TIME) and optionally a PATH")
			}
			return nil
		},
		RunE: a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			ctx := c.Context()
			sn, err := a.pickSnapshot(ctx, r, args, at, filt)
			if err != nil {
				return err
			}
			prefix, paths := "/", args
			if at == "" {
				paths = args[1:] // after the snapshot ID
			}
			if len(paths) == 1 {
				prefix = paths[0]
			}
			n := 0
			err = engine.Walk(ctx, r, sn, prefix, func(p string, nd *tree.Node) error {
				n++
				switch {
				case a.json:
					writeJSONLine(a.stdout, map[string]any{"path": p, "type": nd.Kind.String(), "size": nd.Size, "mode": nd.Mode,
						"uid": nd.UID, "gid": nd.GID, "mtime": time.Unix(0, nd.MTime), "link_target": nd.LinkTarget, "flags": nd.Flags})
				case long:
					fmt.Fprintf(a.stdout, "%s %5d %5d %12d %s %s%s\n", modeString(nd), nd.UID, nd.GID, nd.Size,
						time.Unix(0, nd.MTime).Local().Format("2006-01-02 15:04:05"), quotePath(p), linkSuffix(nd))
				default:
					fmt.Fprintln(a.stdout, quotePath(p))
				}
				return nil
			})
			if err != nil {
				return err
			}
			if n == 0 && prefix != "/" {
				return fmt.Errorf("ls: %s is not in snapshot %s", prefix, sn.ID.Short())
			}
			return nil
		}),
	}
	c.Flags().BoolVarP(&long, "long", "l", false, "show mode, owner, size and time")
	c.Flags().StringVar(&at, "at", "", "list the newest snapshot at or before TIME")
	addFilterFlags(c.Flags(), &filt)
	return c
}

func modeString(n *tree.Node) string {
	m := fs.FileMode(n.Mode & 0o777)
	switch n.Kind {
	case tree.Dir:
		m |= fs.ModeDir
	case tree.Symlink:
		m |= fs.ModeSymlink
	case tree.FIFO:
		m |= fs.ModeNamedPipe
	case tree.Socket:
		m |= fs.ModeSocket
	case tree.CharDev:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case tree.BlockDev:
		m |= fs.ModeDevice
	}
	return m.String()
}

func linkSuffix(n *tree.Node) string {
	if n.Kind == tree.Symlink {
		return " -> " + quotePath(n.LinkTarget)
	}
	return ""
}
