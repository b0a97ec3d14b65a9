package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// A peer is a backup program stasis is compared with. Adding one to the
// comparison is one entry in peers and a constructor of its Tool (the
// commands that create a repository, back up and restore: see newRestic).
type peer struct {
	name    string // its --tools name and its name in the tables
	binary  string // the program, looked up on PATH
	install string // how to install it, for the note when it is not on PATH
	s3      bool   // it has an S3 backend: the s3 subcommand runs it
	// setup makes its Tool with the repository and caches in work.
	setup func(ctx context.Context, bin, work string, o options) *Tool
}

// peers are the programs --tools can name besides stasis: Debian's restic
// and borg from PATH, and restic 0.18.1 and kopia 0.21.1 built from the Go
// module proxy into the peer cache (see peerCache).
var peers = []peer{
	{name: "restic", binary: "restic", install: "apt-get install restic", s3: true,
		setup: func(_ context.Context, bin, work string, _ options) *Tool { return newRestic("restic", bin, work) }},
	{name: "borg", binary: "borg", install: "apt-get install borgbackup",
		setup: func(_ context.Context, bin, work string, o options) *Tool { return newBorg(bin, work, o.borgComp) }},
	{name: "restic-0.18.1", binary: filepath.Join(peerCache(), "restic-0.18.1"), install: "bash cmd/stasis-bench/peers/build", s3: true,
		setup: func(_ context.Context, bin, work string, _ options) *Tool {
			return newRestic("restic-0.18.1", bin, work)
		}},
	{name: "kopia-0.21.1", binary: filepath.Join(peerCache(), "kopia-0.21.1"), install: "bash cmd/stasis-bench/peers/build",
		setup: func(_ context.Context, bin, work string, _ options) *Tool { return newKopia("kopia-0.21.1", bin, work) }},
}

// peerCache is where cmd/stasis-bench/peers/build puts the peers it builds:
// $STASIS_BENCH_PEERS, else $XDG_CACHE_HOME/stasis-bench, else
// ~/.cache/stasis-bench.
func peerCache() string {
	if d := os.Getenv("STASIS_BENCH_PEERS"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "stasis-bench")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "stasis-bench")
}

// setupStasis is the setup of stasis (which is built, not looked up).
func setupStasis(ctx context.Context, bin, work string, o options) *Tool {
	return newStasis(ctx, bin, work, o.encrypt)
}

// pick is a tool chosen with --tools and found.
type pick struct {
	name  string
	bin   string
	setup func(ctx context.Context, bin, work string, o options) *Tool
}

// tool makes the pick's Tool with the repository and caches in work.
func (p pick) tool(ctx context.Context, work string, o options) *Tool {
	return p.setup(ctx, p.bin, work, o)
}

// toolNames are the names --tools takes: every tool, or with s3 those with
// an S3 backend.
func toolNames(s3 bool) []string {
	names := []string{"stasis"}
	for _, p := range peers {
		if p.s3 || !s3 {
			names = append(names, p.name)
		}
	}
	return names
}

// pickTools resolves --tools, in its order: stasis is built (unless
// --stasis names it), a peer is looked up on PATH. A peer that is not
// installed is logged and named in missing (for the report) and the run
// goes on without it; with s3, a peer without an S3 backend is left out.
func pickTools(ctx context.Context, o options, s3 bool, log func(string, ...any)) (picks []pick, missing []string, err error) {
	for _, name := range strings.Split(o.tools, ",") {
		name = strings.TrimSpace(name)
		if name == "stasis" {
			bin, err := buildStasis(ctx, o)
			if err != nil {
				return nil, nil, err
			}
			picks = append(picks, pick{name: name, bin: bin, setup: setupStasis})
			continue
		}
		p, ok := findPeer(name)
		switch {
		case !ok:
			return nil, nil, fmt.Errorf("--tools: unknown tool %q (%s)", name, strings.Join(toolNames(s3), ", "))
		case s3 && !p.s3:
			// No S3 backend: not part of this comparison (see the notes).
			continue
		}
		bin, err := exec.LookPath(p.binary)
		if err != nil {
			missing = append(missing, fmt.Sprintf("%s (not on PATH: `%s`)", p.name, p.install))
			continue
		}
		picks = append(picks, pick{name: p.name, bin: bin, setup: p.setup})
	}
	for _, m := range missing {
		log("peer missing, continuing without it: %s", m)
	}
	return picks, missing, nil
}

// findPeer returns the peer called name.
func findPeer(name string) (peer, bool) {
	for _, p := range peers {
		if p.name == name {
			return p, true
		}
	}
	return peer{}, false
}
