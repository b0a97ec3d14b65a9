package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/stasisbackup/stasis/internal/backendtest"
)

// The s3 subcommand: stasis and restic, each on a local directory and on
// S3 (a SeaweedFS started on loopback for the run), through the scenarios
// of s3Scenarios.

// s3Scenarios are the scenarios of the s3 subcommand, in the order they run
// and are reported.
var s3Scenarios = []string{scInitial, scUnchanged, scRestore}

// s3Bucket is the bucket every S3 repository of a run gets a prefix in.
const s3Bucket = "stasis-bench"

// s3Backend is where one table's repositories live.
type s3Backend struct {
	name string // "local" or "s3"
	desc string // for the table's heading
}

// s3Sample is a Sample and the repository size after the command (-1 for a
// restore).
type s3Sample struct {
	Sample
	Size int64
}

// s3Results holds every sample of one backend: scenario → tool → runs.
type s3Results map[string]map[string][]s3Sample

func (r s3Results) add(sc, tool string, s s3Sample) {
	if r[sc] == nil {
		r[sc] = map[string][]s3Sample{}
	}
	r[sc][tool] = append(r[sc][tool], s)
}

func runS3(ctx context.Context, o options, stdout io.Writer, log func(string, ...any)) (err error) {
	w := o.workload()
	base := filepath.Join(o.work, "s3")
	var names, missing []string
	var stasisBin, resticBin string
	for _, name := range strings.Split(o.tools, ",") {
		switch name = strings.TrimSpace(name); name {
		case "stasis":
			if stasisBin, err = buildStasis(ctx, o); err != nil {
				return err
			}
			names = append(names, name)
		case "restic":
			if resticBin, err = exec.LookPath("restic"); err != nil {
				missing = append(missing, "restic (not on PATH: `apt-get install restic`)")
			} else {
				names = append(names, name)
			}
		case "borg":
			// No S3 backend: not part of this comparison (see the notes).
		default:
			return fmt.Errorf("--tools: unknown tool %q (stasis, restic)", name)
		}
	}
	for _, m := range missing {
		log("peer missing, continuing without it: %s", m)
	}
	if len(names) == 0 {
		return fmt.Errorf("no tool to run (s3 runs stasis and restic)")
	}

	start := time.Now()
	loadBefore := loadAvg()
	total, err := readyWorkload(w, start, log)
	if err != nil {
		return err
	}

	weedBin, _, err := backendtest.WeedBinary()
	if err != nil {
		return fmt.Errorf("SeaweedFS: %w", err)
	}
	srv, err := backendtest.StartSeaweed(1)
	if err != nil {
		return err
	}
	// Stopped on every return, an error or a cancelled context (Ctrl-C,
	// SIGTERM: main's context) included. Should the harness die without
	// it, weed gets SIGKILL (Pdeathsig) and the next start removes its
	// directory.
	defer srv.Stop()
	log("SeaweedFS S3 on %s (data in %s), ready after %s", srv.Endpoint, srv.Dir, srv.Startup.Round(time.Millisecond))
	if err := srv.Client().MakeBucket(ctx, s3Bucket, minio.MakeBucketOptions{Region: backendtest.SeaweedRegion}); err != nil {
		return fmt.Errorf("SeaweedFS: create bucket %s: %w", s3Bucket, err)
	}

	if err := os.MkdirAll(base, 0o755); err != nil {
		return err
	}
	backends := []s3Backend{
		{"local", fmt.Sprintf("local directory (%s)", disk(base))},
		{"s3", fmt.Sprintf("SeaweedFS S3 on loopback (`s3:http://%s/%s/PREFIX`, data on %s)", srv.Endpoint, s3Bucket, disk(srv.Dir))},
	}
	versions := map[string]string{}
	settings := map[string]string{}
	all := map[string]s3Results{}
	resets := 0
	for _, be := range backends {
		res := s3Results{}
		all[be.name] = res
		var tools []*Tool
		for _, name := range names {
			dir := filepath.Join(base, be.name)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			var t *Tool
			if name == "stasis" {
				t = newStasis(ctx, stasisBin, dir, true)
				cache := filepath.Join(dir, "cache-stasis")
				t.Scratch = append(t.Scratch, cache)
				t.Env = append(t.Env, "STASIS_CACHE_DIR="+cache)
				t.Settings = strings.Replace(t.Settings, "no cache", "local cache in the work directory (STASIS_CACHE_DIR; not counted in the repository size)", 1)
			} else {
				t = newRestic(resticBin, dir)
				t.Settings = strings.Replace(t.Settings, "not counted in growth", "RESTIC_CACHE_DIR in the work directory; not counted in the repository size", 1)
			}
			if _, ok := versions[name]; !ok {
				versions[name] = t.Version(ctx, "version")
				settings[name] = t.Settings
			}
			tools = append(tools, t)
		}
		for r := 0; r < o.runs; r++ {
			for _, t := range tools {
				name := t.Name
				// size is the repository's size: du of the directory, or
				// the sum of the object sizes under the prefix.
				var size func() (int64, error)
				if be.name == "local" {
					if err := t.Reset(ctx); err != nil {
						return err
					}
					size = func() (int64, error) { return diskUsage(t.Repo) }
				} else {
					resets++
					prefix := fmt.Sprintf("%s-%d", name, resets)
					tg, err := srv.Target(s3Bucket, prefix)
					if err != nil {
						return err
					}
					if err := resetS3(ctx, t, tg); err != nil {
						return err
					}
					size = func() (int64, error) { return objectBytes(ctx, srv.Client(), s3Bucket, prefix+"/") }
				}
				measureOne := func(sc string, cmd *exec.Cmd, repoSize bool) error {
					if o.cold {
						if err := dropCaches(); err != nil {
							return err
						}
					}
					s, err := measure(cmd)
					if err != nil {
						return fmt.Errorf("%s, %s, %s: %w", be.name, sc, t.Name, err)
					}
					ss := s3Sample{Sample: s, Size: -1}
					if repoSize {
						if ss.Size, err = size(); err != nil {
							return err
						}
					}
					repo := "—"
					if repoSize {
						repo = mib(ss.Size)
					}
					log("%-5s %-26s %-6s wall %6.2fs cpu %6.2fs rss %7s repo %9s", be.name, sc, t.Name, s.Wall.Seconds(), s.CPU.Seconds(), mib(s.MaxRSS), repo)
					res.add(sc, t.Name, ss)
					return nil
				}
				if err := measureOne(scInitial, t.Backup(ctx, w.Root), true); err != nil {
					return err
				}
				if err := measureOne(scUnchanged, t.Backup(ctx, w.Root), true); err != nil {
					return err
				}
				target := filepath.Join(base, "restore-"+t.Name)
				if err := os.RemoveAll(target); err != nil {
					return err
				}
				if err := os.MkdirAll(target, 0o755); err != nil {
					return err
				}
				syscall.Sync() // as in run: no tool pays for another's cleanup
				if err := measureOne(scRestore, t.Restore(ctx, target, ""), false); err != nil {
					return err
				}
				if err := verifyRestore(w.Root, filepath.Join(target, w.Root), false); err != nil {
					return fmt.Errorf("%s: %s by %s is wrong: %w", be.name, scRestore, t.Name, err)
				}
				if err := os.RemoveAll(target); err != nil {
					return err
				}
			}
		}
	}
	log("done in %s", time.Since(start).Round(time.Second))

	var rep bytes.Buffer
	fmt.Fprintf(&rep, "Command: `%s`\n\n", commandLine())
	fmt.Fprintf(&rep, "Machine: %s; work directory on %s. Go %s.\n\n", machine(), disk(o.work), strings.TrimPrefix(runtimeVersion(), "go"))
	fmt.Fprintf(&rep, "Workload (seed %d): X500.db %s (%d pages of 4 KiB), transaction log %s, %d small LDIF/config files; %s in all.\n\n",
		w.Seed, mib(w.DBSize), w.pages(), mib(w.LogSize), w.Files, mib(total))
	cache := "warm (the tree was read once before the first run; the repositories were just written)"
	if o.cold {
		cache = "cold (`echo 3 > /proc/sys/vm/drop_caches` before every measured command)"
	}
	fmt.Fprintf(&rep, "Every run of a tool starts from a fresh, empty repository (local: a new directory; S3: a new prefix in bucket %s) and an empty client cache, "+
		"then takes the initial backup, the re-backup with nothing changed and the full restore (into an empty directory, checked against the tree). "+
		"Page cache: %s. Median of %d runs per figure. Load average (1, 5, 15 min) before: %s; after: %s "+
		"(above the number of CPUs, other processes competed for them: wall times are inflated, CPU times much less so).\n\n",
		s3Bucket, cache, o.runs, loadBefore, loadAvg())
	for _, name := range names {
		fmt.Fprintf(&rep, "- %s (%s): %s\n", name, versions[name], settings[name])
	}
	for _, m := range missing {
		fmt.Fprintf(&rep, "- missing, not run: %s\n", m)
	}
	fmt.Fprintf(&rep, "- SeaweedFS (%s, `%s`): `weed server` with master, one volume server, filer and S3 gateway in one process on 127.0.0.1, started for this run and stopped after it; "+
		"the tools get AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION=%s. Its CPU time and memory are not in the figures (it is not a child of the measured command).\n",
		weedVersion(ctx, weedBin), filepath.Base(weedBin), backendtest.SeaweedRegion)
	fmt.Fprintf(&rep, "- borg is not compared here: it has no S3 backend.\n")
	fmt.Fprintf(&rep, "\nRepository size: local, du of the repository directory (allocated blocks, directories included: restic's 256 data/ subdirectories "+
		"alone take about 1 MiB on ext4, which shows on a small workload); S3, the sum of the object sizes under the prefix (ListObjects). "+
		"The client caches are not counted. Both tools keep their caches between the commands of a run: the re-backup and the restore read them.\n\n")
	fmt.Fprintf(&rep, "Peak RSS of the harness itself: %s (a child's ru_maxrss starts at its parent's peak on Linux, so no figure below can be smaller).\n", mib(selfPeakRSS()))
	for _, be := range backends {
		fmt.Fprintf(&rep, "\n### %s\n\n", be.desc)
		writeS3Table(&rep, all[be.name], names)
	}
	stdout.Write(rep.Bytes())
	if o.out != "" {
		if err := os.WriteFile(o.out, rep.Bytes(), 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	return nil
}

// resetS3 points t at the (fresh, empty) S3 target tg, empties its caches
// and creates the repository there (not measured): Tool.Reset for a
// repository that is not a directory.
func resetS3(ctx context.Context, t *Tool, tg backendtest.S3Target) error {
	t.Repo = tg.URL
	// The repository variable the tool already has (STASIS_REPO or
	// RESTIC_REPOSITORY) now names the target; the AWS_* ones are replaced.
	env := slices.Clone(tg.Env)
	for _, kv := range t.Env {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "STASIS_REPO" || k == "RESTIC_REPOSITORY":
			env = append(env, k+"="+tg.URL)
		case !strings.HasPrefix(k, "AWS_"):
			env = append(env, kv)
		}
	}
	t.Env = env
	return t.initFresh(ctx)
}

// objectBytes is the sum of the sizes of the objects of bucket under prefix.
func objectBytes(ctx context.Context, c *minio.Client, bucket, prefix string) (int64, error) {
	var n int64
	for obj := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			return 0, fmt.Errorf("list %s/%s: %w", bucket, prefix, obj.Err)
		}
		n += obj.Size
	}
	return n, nil
}

func weedVersion(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

// writeS3Table prints one backend's markdown table; restic's cells show its
// figure and, in parentheses, stasis ÷ restic.
func writeS3Table(w io.Writer, res s3Results, names []string) {
	fmt.Fprintln(w, "| scenario | tool | wall s | CPU s (user+sys) | peak RSS MiB | repository MiB |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|")
	for _, sc := range s3Scenarios {
		base, haveBase := res[sc]["stasis"]
		var b s3Sample
		if haveBase {
			b = medianS3(base)
		}
		for _, name := range names {
			ss, ok := res[sc][name]
			if !ok {
				continue
			}
			m := medianS3(ss)
			cell := func(v, bv float64, format string) string {
				s := fmt.Sprintf(format, v)
				if haveBase && name != "stasis" && v > 0 {
					s += fmt.Sprintf(" (%.2f)", bv/v)
				}
				return s
			}
			size := "—"
			if m.Size >= 0 {
				size = cell(float64(m.Size)/(1<<20), float64(b.Size)/(1<<20), "%.2f")
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", sc, name,
				cell(m.Wall.Seconds(), b.Wall.Seconds(), "%.2f"),
				cell(m.CPU.Seconds(), b.CPU.Seconds(), "%.2f"),
				cell(float64(m.MaxRSS)/(1<<20), float64(b.MaxRSS)/(1<<20), "%.0f"),
				size)
		}
	}
	fmt.Fprintln(w, "\nIn parentheses: stasis ÷ restic (below 1: stasis is faster or smaller). Repository: its size after the command.")
}

// medianS3 is median with the repository size's median too.
func medianS3(ss []s3Sample) s3Sample {
	plain := make([]Sample, len(ss))
	sizes := make([]int64, len(ss))
	for i, s := range ss {
		plain[i], sizes[i] = s.Sample, s.Size
	}
	sort.Slice(sizes, func(i, j int) bool { return sizes[i] < sizes[j] })
	m := s3Sample{Sample: median(plain)}
	switch {
	case len(sizes) == 0:
	case len(sizes)%2 == 1:
		m.Size = sizes[len(sizes)/2]
	default:
		m.Size = (sizes[len(sizes)/2-1] + sizes[len(sizes)/2]) / 2
	}
	return m
}
