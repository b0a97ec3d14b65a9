package engine

import (
	"context"
	"fmt"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

// dedupVerifier is what a backup uses of a repository that lost a
// compression dictionary (repo.Repository has it; docs/damage.md): in a
// degraded repository an indexed blob is deduplicated against only when it
// decodes, and one that does not is stored anew.
type dedupVerifier interface {
	Degraded(ctx context.Context) (bool, error)
	BlobUsable(ctx context.Context, id blob.ID) (bool, error)
	ReplaceBlob(ctx context.Context, t blob.Type, id blob.ID, data []byte) (repo.SaveResult, error)
}

// checkDegraded sets b.verify when the repository is degraded, and says so
// in the snapshot's problems (as a warning: the snapshot is complete).
func (b *backup) checkDegraded(ctx context.Context) error {
	dv, ok := b.repo.(dedupVerifier)
	if !ok {
		return nil
	}
	deg, err := dv.Degraded(ctx)
	if err != nil {
		return fmt.Errorf("look for lost compression dictionaries: %w", err)
	}
	if deg {
		b.verify = dv
		b.addProblem(repo.Problem{Path: "(repository)", Kind: repo.ProblemWarning,
			Error: "a compression dictionary that earlier snapshots need is missing or damaged (see `stasis check`): chunks were deduplicated only against stored blobs that decode, the others were stored again"})
	}
	return nil
}

// usable reports whether the indexed blobs ids may be reused: always,
// unless the repository is degraded; then only when each decodes.
func (b *backup) usable(ctx context.Context, ids ...blob.ID) (bool, error) {
	if b.verify == nil {
		return true, nil
	}
	for _, id := range ids {
		ok, err := b.verify.BlobUsable(ctx, id)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}
