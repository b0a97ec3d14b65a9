package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/tape"
	"github.com/stasisbackup/stasis/engine/tapeio"
	"github.com/stasisbackup/stasis/repo"
)

func (a *app) tapeCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "tape export|list|verify|import|restore",
		Short: "Write the repository to tape volumes, check them, and bring it back",
		Long: `Tape volumes are tar archives written in fixed-size blocks (docs/tape.md):
GNU tar lists and extracts them without stasis. They carry the repository
files as they are on disk, so an encrypted repository stays encrypted.`,
	}
	c.AddCommand(a.tapeExportCommand(), a.tapeListCommand(), a.tapeVerifyCommand(),
		a.tapeImportCommand(), a.tapeRestoreCommand())
	return c
}

// parseSize accepts a byte count with an optional K, M, G or T suffix
// (powers of 1024, optionally followed by "iB" or "B").
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		if i := strings.IndexByte("KMGT", t[n-1]); i >= 0 {
			mult = int64(1) << (10 * (i + 1))
			t = t[:n-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: use a byte count such as 262144, 256K, 400G or 12T", s)
	}
	return n * mult, nil
}

// parseBlockSize reads a --block-size value: "" is zero (the default
// size), else a multiple of 512 bytes up to 1G.
func parseBlockSize(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	n, err := parseSize(s)
	if err != nil || n == 0 || n%tape.TarBlock != 0 || n > 1<<30 {
		return 0, usagef("--block-size %q: use a multiple of 512 bytes", s)
	}
	return int(n), nil
}

// tapeFlags are the volume-reading flags of list, verify, import, restore.
type tapeFlags struct {
	devices   []string
	blockSize string
}

func (f *tapeFlags) add(c *cobra.Command) {
	c.Flags().StringArrayVarP(&f.devices, "device", "d", nil, "volume file or tape device (repeatable; a %d is replaced by 1, 2, ... while the files exist)")
	c.Flags().StringVar(&f.blockSize, "block-size", "", "read in blocks of this size (default 256K; a multiple of the size written, for a tape drive)")
}

// volumes returns the read options the flags give and the volume files to
// read (paths).
func (f *tapeFlags) volumes() (tapeio.ReadOptions, []string, error) {
	var o tapeio.ReadOptions
	var err error
	if o.BlockSize, err = parseBlockSize(f.blockSize); err != nil {
		return o, nil, err
	}
	paths, err := f.paths()
	return o, paths, err
}

// paths expands the --device values: a path with a % verb is the series of
// existing files it names for volume 1, 2, ...
func (f *tapeFlags) paths() ([]string, error) {
	if len(f.devices) == 0 {
		return nil, usagef("give the volumes with --device PATH (repeatable)")
	}
	var out []string
	for _, d := range f.devices {
		if !strings.Contains(d, "%") {
			out = append(out, d)
			continue
		}
		dev := &tape.PathDevice{Path: d}
		for seq := 1; ; seq++ {
			if _, err := os.Stat(dev.VolumePath(seq)); err != nil {
				if seq == 1 {
					return nil, fmt.Errorf("--device %s: no volume file %s", d, dev.VolumePath(1))
				}
				break
			}
			out = append(out, dev.VolumePath(seq))
		}
	}
	return out, nil
}

// volumeCommand returns a tape command that takes no arguments and reads
// the volumes given with --device: run gets the read options and the volume
// files of the tapeFlags.
func volumeCommand(use, short, long string, run func(c *cobra.Command, ro tapeio.ReadOptions, paths []string) error) *cobra.Command {
	var tf tapeFlags
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, args []string) error {
			ro, paths, err := tf.volumes()
			if err != nil {
				return err
			}
			return run(c, ro, paths)
		},
	}
	tf.add(c)
	return c
}

// exportFlags are the flags of tape export.
type exportFlags struct {
	o                     tapeio.ExportOptions
	dev                   tape.PathDevice
	blockSize, volumeSize string
}

func (f *exportFlags) add(c *cobra.Command) {
	fs := c.Flags()
	fs.StringVarP(&f.dev.Path, "device", "d", "", "volume file (with %d: one file per volume) or tape device")
	fs.StringVar(&f.dev.ChangeVolume, "change-volume", "", "command run before each volume after the first (like tar -F)")
	fs.StringVar(&f.o.Write.Label, "label", "", "free text stored in every volume label")
	fs.StringVar(&f.blockSize, "block-size", "", "size of every write (default 256K)")
	fs.StringVar(&f.volumeSize, "volume-size", "", "capacity of a volume (default: until end of media)")
	fs.BoolVar(&f.o.Incremental, "incremental", false, "write only packs and snapshots not yet on the current set")
	fs.BoolVar(&f.o.NewSet, "new-set", false, "start a new tape set")
}

// options returns the export options and the device the flags give.
func (f *exportFlags) options() (tapeio.ExportOptions, *tape.PathDevice, error) {
	o, dev := f.o, f.dev
	if dev.Path == "" {
		return o, nil, usagef("tape export: --device PATH is required")
	}
	var err error
	if o.Write.BlockSize, err = parseBlockSize(f.blockSize); err != nil {
		return o, nil, err
	}
	if f.volumeSize != "" {
		if o.Write.VolumeSize, err = parseSize(f.volumeSize); err != nil {
			return o, nil, usageError{err}
		}
	}
	return o, &dev, nil
}

func (a *app) tapeExportCommand() *cobra.Command {
	var f exportFlags
	c := &cobra.Command{
		Use:   "export --device PATH [--label TEXT] [--volume-size SIZE] [--incremental] [--new-set]",
		Short: "Write the repository (packs, snapshots, config, keys) to tape volumes",
		Long: `Writes every pack and snapshot file, then config and key files, to a new
tape set; with --incremental only those not yet on a volume of the current set,
appending volumes to it (--new-set starts a new set). --device vol-%03d.tar
writes one file per volume; a tape device with --change-volume CMD runs CMD
(STASIS_TAPE_VOLUME=<n> in its environment) before each further volume. The
catalogs are recorded in the repository under tape/.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, args []string) error {
			ctx := c.Context()
			o, dev, err := f.options()
			if err != nil {
				return err
			}
			return a.withRepo(ctx, func(r *repo.Repository) error {
				prog := a.startProgress("tape export", "members", a.stdout) // progress.go
				o.Progress = prog.Counts()
				if prog != nil {
					vol := 0
					o.Write.Progress = func(v int, _ string, _ int64) { // on Export's goroutine
						if v != vol {
							vol = v
							prog.setNote(fmt.Sprintf("volume %d", v))
						}
					}
				}
				dev.Stdout, dev.Stderr = prog.logWriter(a.stderr), prog.logWriter(a.stderr) // --change-volume's output
				start := time.Now()
				res, err := tapeio.Export(ctx, r, dev, o)
				prog.done()
				if res != nil {
					a.exportSummary(res, dev, time.Since(start))
				}
				return err
			})
		},
	}
	f.add(c)
	return c
}

func (a *app) exportSummary(res *tapeio.ExportResult, dev *tape.PathDevice, d time.Duration) {
	for _, p := range res.Problems {
		fmt.Fprintf(a.stderr, "warning: %s\n", p)
	}
	if a.json {
		writeJSONLine(a.stdout, map[string]any{"message_type": "summary", "set_id": res.SetID, "appended": res.Appended,
			"volumes": len(res.Catalogs), "members": res.Members, "bytes": res.Bytes, "skipped": res.Skipped,
			"problems": res.Problems, "duration_seconds": d.Seconds()})
		return
	}
	for _, c := range res.Catalogs {
		var n int64
		for _, e := range c.Members {
			n += e.Size
		}
		note := ""
		if len(c.Dropped) > 0 {
			note = fmt.Sprintf(" (end of media: %d members continued on volume %d)", len(c.Dropped), c.Volume+1)
		}
		fmt.Fprintf(a.stdout, "volume %d (%s): %d members, %s%s\n", c.Volume, dev.VolumePath(c.Volume), len(c.Members), humanBytes(n), note)
	}
	how := "new set"
	if res.Appended {
		how = "appended to set"
	}
	fmt.Fprintf(a.stdout, "tape export: %s %s, %d volumes, %d members, %s in %s", how, res.SetID, len(res.Catalogs), res.Members, humanBytes(res.Bytes), humanDuration(d))
	if res.Skipped > 0 {
		fmt.Fprintf(a.stdout, ", %d packs and snapshots already on the set", res.Skipped)
	}
	fmt.Fprintln(a.stdout)
}

func (a *app) tapeListCommand() *cobra.Command {
	return volumeCommand("list --device PATH", "Show the label and members of a volume, from the volume alone", "",
		func(c *cobra.Command, ro tapeio.ReadOptions, paths []string) error {
			for _, p := range paths {
				f, err := os.Open(p)
				if err != nil {
					return fmt.Errorf("open volume %s: %w", p, err)
				}
				v, err := tape.ListVolume(c.Context(), f, tape.ReadOptions{BlockSize: ro.BlockSize})
				f.Close()
				if err != nil {
					return fmt.Errorf("volume %s: %w", p, err)
				}
				if a.json {
					writeJSONLine(a.stdout, v)
					continue
				}
				l := v.Label
				fmt.Fprintf(a.stdout, "%s: volume %d of set %s, label %q, repository %s, written %s, block size %d\n",
					p, l.Volume, l.SetID, l.Label, l.RepositoryID, l.Time.Local().Format("2006-01-02 15:04:05"), l.BlockSize)
				for _, e := range v.Seen {
					fmt.Fprintf(a.stdout, "  %12d  %s  %s\n", e.Size, e.BLAKE3[:16], e.Name)
				}
				fmt.Fprintf(a.stdout, "  %d members, %d earlier catalogs", len(v.Seen), len(v.Earlier))
				if v.Truncated {
					fmt.Fprintf(a.stdout, ", TRUNCATED (%s)", v.TruncatedBy)
				}
				fmt.Fprintln(a.stdout)
			}
			return nil
		})
}

func (a *app) tapeVerifyCommand() *cobra.Command {
	return volumeCommand("verify --device PATH... [--repo DIR]", "Read volumes back and check every member against the catalogs",
		`Checks every member's size and BLAKE3 against the volume's own catalog, the
copies carried by the other volumes given, and, with --repo, the catalog the
repository recorded when it wrote the volume. Exits 1 naming every bad member.`,
		func(c *cobra.Command, ro tapeio.ReadOptions, paths []string) error {
			ctx := c.Context()
			recorded := map[string][]tape.Catalog{}
			if a.repoDir != "" {
				err := a.withRepo(ctx, func(r *repo.Repository) (err error) {
					recorded, err = tapeio.RecordedSets(ctx, r)
					return err
				})
				if err != nil {
					return err
				}
			}
			prog := a.startProgress("tape verify", "members", a.stderr) // progress.go; stderr: stdout's lines have no message_type
			ro.Progress = prog.Counts()
			reports, err := tapeio.Verify(ctx, paths, ro, recorded)
			prog.done()
			bad := 0
			for _, vr := range reports {
				if a.json {
					writeJSONLine(a.stdout, vr)
					continue
				}
				if vr.OK {
					fmt.Fprintf(a.stdout, "%s: volume %d of set %s: %d members ok%s\n", vr.Path, vr.Volume, vr.SetID, vr.Good, vr.Note)
					continue
				}
				bad++
				fmt.Fprintf(a.stdout, "%s: volume %d of set %s: BAD: %s\n", vr.Path, vr.Volume, vr.SetID, vr.Error)
				for _, p := range vr.Bad {
					fmt.Fprintf(a.stdout, "  bad member %s\n", p)
				}
			}
			if err != nil {
				return err
			}
			if bad > 0 {
				return exitError{exitFatal, fmt.Errorf("tape verify: %d of %d volumes are bad", bad, len(reports))}
			}
			return nil
		})
}

func (a *app) tapeImportCommand() *cobra.Command {
	var tf tapeFlags
	c := &cobra.Command{
		Use:   "import --repo DIR --device PATH...",
		Short: "Build a complete repository from tape volumes given in any order",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, args []string) error {
			ctx := c.Context()
			dir, err := a.needRepo()
			if err != nil {
				return err
			}
			ro, paths, err := tf.volumes()
			if err != nil {
				return err
			}
			start := time.Now()
			st, err := a.storage(ctx)
			if err != nil {
				return err
			}
			prog := a.startProgress("tape import", "members", a.stderr) // progress.go; stderr: stdout's line has no message_type
			ro.Progress = prog.Counts()
			res, err := tapeio.Import(ctx, st, paths, tapeio.ImportOptions{Read: ro, Log: a.logger(prog.logWriter(a.stderr)),
				Open: repo.OpenOptions{Password: a.repoPassword(dir), CacheDir: a.cacheDir}})
			prog.done()
			if res == nil {
				return err
			}
			if a.json {
				writeJSONLine(a.stdout, res)
			} else {
				for _, v := range res.MissingVolumes {
					fmt.Fprintf(a.stdout, "missing volume %d of set %s\n", v, res.SetID)
				}
				for _, e := range res.MissingMembers {
					fmt.Fprintf(a.stdout, "missing member %s (on volume %d)\n", e.Name, e.Volume)
				}
				for _, p := range res.Bad {
					fmt.Fprintf(a.stdout, "bad member %s\n", p)
				}
				fmt.Fprintf(a.stdout, "tape import: set %s, volumes %v read, %d files, %s into %s in %s\n",
					res.SetID, res.VolumesRead, res.Files, humanBytes(res.Bytes), dir, humanDuration(time.Since(start)))
				if res.Rebuild != nil {
					fmt.Fprintf(a.stdout, "index rebuilt: %d packs, %d blobs, %d snapshots\n", res.Rebuild.Packs, res.Rebuild.Blobs, res.Rebuild.Snapshots)
				}
			}
			if errors.Is(err, tapeio.ErrImportIncomplete) {
				return exitError{exitFatal, fmt.Errorf("%w: give the missing volumes, or run `stasis check` and `stasis repair snapshots` on what was imported", err)}
			}
			return err
		},
	}
	tf.add(c)
	return c
}

// restoreFlags are the flags of tape restore.
type restoreFlags struct {
	tf tapeFlags
	at string
	o  tapeio.RestoreOptions
}

func (f *restoreFlags) add(c *cobra.Command) {
	f.tf.add(c)
	fs := c.Flags()
	fs.StringVar(&f.at, "at", "", "restore the newest snapshot at or before TIME")
	fs.StringVarP(&f.o.Restore.Target, "target", "t", "", "directory to restore into")
	fs.StringArrayVarP(&f.o.Restore.Includes, "include", "i", nil, "restore only this snapshot path and below (repeatable)")
	fs.BoolVar(&f.o.Restore.Overwrite, "overwrite", false, "allow a non-empty target and replace files in it")
	fs.StringVar(&f.o.SpoolDir, "spool-dir", "", "directory for the temporary spool of needed packs (default $TMPDIR)")
}

// options returns the restore options the flags and args (the snapshot)
// give, and the volume files to read.
func (f *restoreFlags) options(args []string) (tapeio.RestoreOptions, []string, error) {
	o := f.o
	if (len(args) == 1) == (f.at != "") || len(args) > 1 {
		return o, nil, usagef("tape restore: give exactly one of a snapshot ID, \"latest\" or --at TIME")
	}
	if o.Restore.Target == "" {
		return o, nil, usagef("tape restore: --target DIR is required")
	}
	if f.at != "" {
		t, err := parseTime(f.at)
		if err != nil {
			return o, nil, usageError{err}
		}
		o.At = t
	} else {
		o.Snapshot = args[0]
	}
	var paths []string
	var err error
	o.Read, paths, err = f.tf.volumes()
	return o, paths, err
}

func (a *app) tapeRestoreCommand() *cobra.Command {
	var f restoreFlags
	c := &cobra.Command{
		Use:   "restore --device PATH... (ID|latest|--at TIME) --target DIR",
		Short: "Restore a snapshot straight from tape volumes, without a repository",
		Long: `Reads the catalogs, then only the volumes holding what the snapshot needs, each
once, keeping the needed packs in a temporary spool directory (--spool-dir,
default $TMPDIR). Needs the repository password (the key files are on the
volumes). A damaged member costs only the files whose data is in it.`,
		RunE: func(c *cobra.Command, args []string) error {
			o, paths, err := f.options(args)
			if err != nil {
				return err
			}
			o.Open = repo.OpenOptions{Password: a.repoPassword("on tape")}
			prog := a.startProgress("tape restore", "files", a.stdout) // progress.go
			o.Restore.Progress = prog.Counts()
			o.Log = a.logger(prog.logWriter(a.stderr))
			start := time.Now()
			res, err := tapeio.Restore(c.Context(), paths, o)
			prog.done()
			return a.tapeRestoreReport(res, o.Restore.Target, time.Since(start), err)
		},
	}
	f.add(c)
	return c
}

// tapeRestoreReport prints the outcome of tapeio.Restore (res, err) into
// target, which took d, and returns the command's error.
func (a *app) tapeRestoreReport(res *tapeio.RestoreResult, target string, d time.Duration, err error) error {
	printBad := func() {
		for _, p := range res.Bad {
			fmt.Fprintf(a.stderr, "bad member %s\n", p)
		}
	}
	if res == nil || res.RestoreResult == nil {
		if res != nil {
			printBad()
		}
		return err
	}
	if a.json {
		writeJSONLine(a.stdout, map[string]any{"message_type": "summary", "snapshot_id": res.SnapshotID, "target": target,
			"volumes_read": res.VolumesRead, "missing_volumes": res.MissingVolumes, "bad_members": res.Bad,
			"files": res.Files, "dirs": res.Dirs, "others": res.Others, "bytes": res.RestoreResult.Bytes,
			"duration_seconds": d.Seconds(), "problems": res.Problems})
	} else {
		fmt.Fprintf(a.stdout, "restored snapshot %.8s (%s) from volumes %v to %s: %d files, %d dirs, %d other entries, %s in %s\n",
			res.SnapshotID, res.SnapshotTime.Local().Format("2006-01-02 15:04:05"), res.VolumesRead, target,
			res.Files, res.Dirs, res.Others, humanBytes(res.RestoreResult.Bytes), humanDuration(d))
	}
	if err != nil {
		printBad()
		printProblems(a.stderr, "entries were not restored cleanly", res.Problems)
		if errors.Is(err, engine.ErrRestoreIncomplete) {
			return exitError{exitFatal, err}
		}
	}
	return err
}
