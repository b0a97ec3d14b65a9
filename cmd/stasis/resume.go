package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine/quiesce"
)

// resumePendingCommand is `stasis resume-pending`: the way out after a
// quiesced backup died in its window (SIGKILL, OOM, power loss) and could
// not run its resume hook.
func (a *app) resumePendingCommand() *cobra.Command {
	var stateDir string
	c := &cobra.Command{
		Use:   "resume-pending",
		Short: "Run the resume hook of a quiesced backup that died in its window",
		Long: `A quiesced backup (--quiesce/--resume) records its resume command in the
state directory before the quiesce hook runs, and removes the record once the
resume hook has run. When the process dies in between (SIGKILL, the OOM
killer, power loss), the service stays quiesced. resume-pending runs the
recorded resume command of every such run, with the run's hook timeout and
STASIS_REPO, STASIS_PATHS and STASIS_PHASE=resume, and removes the record
when the hook succeeds (a failed one is kept, so a later run tries again).
Records of backups still running are left alone. Nothing to do is success.

Run it from the backup unit's ExecStopPost= (docs/examples), or by hand. The
state directory is --state-dir, else $STASIS_STATE_DIR, else /var/lib/stasis
for root, else $XDG_STATE_HOME/stasis (~/.local/state/stasis). Exit 1 when a
resume hook failed: check the service.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, args []string) error {
			dir := stateDir
			if dir == "" {
				dir = quiesce.DefaultStateDir()
			}
			res, err := quiesce.ResumePending(c.Context(), dir, a.stderr)
			if a.json {
				if res == nil {
					res = []quiesce.PendingResult{}
				}
				writeJSONLine(a.stdout, map[string]any{"message_type": "summary", "resumed": res})
			} else {
				ok := 0
				for _, r := range res {
					if r.Error == "" {
						ok++
					}
				}
				fmt.Fprintf(a.stdout, "resume-pending: %d resumed, %d failed\n", ok, len(res)-ok)
			}
			return err
		},
	}
	c.Flags().StringVar(&stateDir, "state-dir", "", "directory of the pending-resume records (default $STASIS_STATE_DIR, /var/lib/stasis as root, else $XDG_STATE_HOME/stasis)")
	return c
}
