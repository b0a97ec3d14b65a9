package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stasisbackup/stasis/engine/retention"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

// ForgetOptions say which snapshots Forget removes.
type ForgetOptions struct {
	Policy retention.Policy
	// Host limits forget to the snapshots of one host ("" = all hosts).
	Host string
	// DryRun decides and reports but removes nothing.
	DryRun bool
	// AllowRemoveAll lets a policy remove every snapshot of a group.
	AllowRemoveAll bool
	// Now is the time the policy is applied at; its location sets the
	// periods (zero: time.Now() in local time).
	Now time.Time
}

// ForgetReport lists every decision (newest first within each group) and
// the snapshots actually removed.
type ForgetReport struct {
	Decisions []retention.Decision
	Removed   []blob.ID
}

// ErrNoKeepRule is matched when Forget is given a policy without a rule.
var ErrNoKeepRule = errors.New("no keep rule given")

// Forget applies a retention policy: it decides for every snapshot (of
// Host, when set) whether to keep it, refuses with an error matching
// retention.ErrRemovesAll when a group would lose every snapshot (nothing
// is removed then), and removes the others unless DryRun. Forget only
// removes snapshot files; Prune gives the space back. The caller must hold
// an exclusive lock. The report is returned also with the guard's error.
func Forget(ctx context.Context, r *repo.Repository, o ForgetOptions) (*ForgetReport, error) {
	if o.Policy.Empty() {
		return nil, fmt.Errorf("forget: %w", ErrNoKeepRule)
	}
	if err := o.Policy.Validate(); err != nil {
		return nil, fmt.Errorf("forget: %w", err)
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	list, bad, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("forget: %d snapshot records do not decode (first: %v); run `stasis repair snapshots` first", len(bad), bad[0])
	}
	var in []retention.Snapshot
	for _, sn := range list {
		if o.Host != "" && sn.Host != o.Host {
			continue
		}
		in = append(in, retention.Snapshot{ID: sn.ID.String(), Time: sn.Time, Host: sn.Host, Paths: sn.Paths, Tags: sn.Tags})
	}
	rep := &ForgetReport{Decisions: retention.Apply(in, o.Policy, o.Now)}
	if err := retention.Guard(rep.Decisions, o.AllowRemoveAll); err != nil {
		return rep, fmt.Errorf("forget: %w", err)
	}
	if o.DryRun {
		return rep, nil
	}
	for _, d := range rep.Decisions {
		if d.Keep {
			continue
		}
		id, err := blob.ParseID(d.ID)
		if err != nil {
			return rep, err
		}
		if err := r.RemoveSnapshot(ctx, id); err != nil {
			return rep, err
		}
		rep.Removed = append(rep.Removed, id)
	}
	return rep, nil
}
