package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
)

func (a *app) checkCommand() *cobra.Command {
	var readData bool
	c := &cobra.Command{
		Use:   "check [--read-data]",
		Short: "Verify the repository's structure, and with --read-data every byte",
		Args:  exactArgs(0, "no arguments"),
		RunE: a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			var prog *reporter // progress.go; status lines on stderr: stdout is one JSON document
			if readData {
				prog = a.startProgress("check", "packs", a.stderr)
			}
			log := a.logger(prog.logWriter(a.stderr))
			rep, err := engine.Check(c.Context(), r, engine.CheckOptions{ReadData: readData, Log: log, Progress: prog.Counts()})
			prog.done()
			if err != nil {
				return err
			}
			if a.json {
				writeJSON(a.stdout, rep)
			} else {
				for _, w := range rep.Warnings {
					fmt.Fprintf(a.stdout, "warning: %s\n", w)
				}
				for _, e := range rep.Errors {
					fmt.Fprintf(a.stdout, "error: %s\n", e)
				}
				fmt.Fprintf(a.stdout, "checked %d snapshots, %d trees, %d packs: ", rep.Snapshots, rep.Trees, rep.Packs)
				if rep.OK() {
					fmt.Fprintln(a.stdout, "no errors")
				} else {
					fmt.Fprintf(a.stdout, "%d errors\n", len(rep.Errors))
				}
			}
			if !rep.OK() {
				return exitError{exitFatal, fmt.Errorf("%w: the repository is damaged: %d errors", errReported, len(rep.Errors))}
			}
			return nil
		}),
	}
	c.Flags().BoolVar(&readData, "read-data", false, "read every pack and re-hash every blob")
	return c
}
