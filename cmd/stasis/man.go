package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func init() { register((*app).genManCommand) }

// manDate is the date printed in every man page's footer: fixed, so that
// regenerating the pages changes them only when a command changes.
var manDate = time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)

// genManCommand writes one man page per command (cobra's doc generator).
// The pages in docs/man are made with `go run ./cmd/stasis gen-man docs/man`;
// TestManPagesAreCurrent fails when they are stale.
func (a *app) genManCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "gen-man DIR",
		Short:  "Write the man pages of every command into DIR",
		Args:   cobra.ExactArgs(1),
		Hidden: true,
		RunE: func(c *cobra.Command, args []string) error {
			for _, kv := range os.Environ() {
				if k, v, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "STASIS_") && v != "" {
					return usagef("gen-man: %s is set and would become a flag default in the pages: unset it first", k)
				}
			}
			return writeManPages(c.Root(), args[0])
		},
	}
}

func writeManPages(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	root.DisableAutoGenTag = true
	hdr := &doc.GenManHeader{Title: "STASIS", Section: "1", Source: "stasis", Manual: "stasis manual", Date: &manDate}
	if err := doc.GenManTree(root, hdr, dir); err != nil {
		return fmt.Errorf("man pages into %s: %w", dir, err)
	}
	return nil
}
