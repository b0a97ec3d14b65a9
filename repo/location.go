package repo

import (
	"context"
	"fmt"
	"strings"

	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/backend/s3"
)

// Storage is where a repository's objects live (see package backend).
type Storage = backend.Storage

// OpenStorage returns the storage of a repository location: a local
// directory, or s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX] for S3-compatible
// object storage (credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
// AWS_SESSION_TOKEN and AWS_REGION).
func OpenStorage(ctx context.Context, location string) (Storage, error) {
	if location == "" {
		return nil, fmt.Errorf("no repository location given")
	}
	if strings.HasPrefix(location, "s3:") {
		cfg, err := s3.Parse(location)
		if err != nil {
			return nil, err
		}
		st, err := s3.Open(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return st, nil
	}
	return backend.NewLocal(location), nil
}
