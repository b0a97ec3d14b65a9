package engine_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

// The blob saver stores each new chunk once, under its hash, and counts it;
// a chunk the repository has already is not stored again.
func TestBlobSaverStoresNewChunksOnce(t *testing.T) {
	r := enginetest.NewRepo(t)
	p := engine.NewParts(ctx, r, engine.BackupOptions{})
	p.RunBlobSavers(2)
	var ids []blob.ID
	for _, data := range []string{"alpha", "beta", "alpha"} {
		id, err := p.SaveChunk(ctx, []byte(data))
		if err != nil {
			t.Fatalf("save %q: %v", data, err)
		}
		if want := r.Hash([]byte(data)); id != want {
			t.Errorf("save %q = %s, want its hash %s", data, id.Short(), want.Short())
		}
		ids = append(ids, id)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if has, err := r.HasBlob(id); err != nil || !has {
			t.Errorf("chunk %d (%s) is not stored: %v", i, id.Short(), err)
		}
	}
	if got, err := r.LoadBlob(ctx, ids[1], nil); err != nil || string(got) != "beta" {
		t.Errorf("load chunk beta = %q, %v", got, err)
	}
	if s := p.Summary(); s.BlobsAdded != 2 || s.BytesAdded != int64(len("alpha")+len("beta")) || s.StoredAdded <= 0 {
		t.Errorf("counts: %d blobs, %d bytes, %d stored; want 2 blobs of 9 bytes, some stored", s.BlobsAdded, s.BytesAdded, s.StoredAdded)
	}

	again := engine.NewParts(ctx, r, engine.BackupOptions{})
	again.RunBlobSavers(1)
	if _, err := again.SaveChunk(ctx, []byte("beta")); err != nil {
		t.Fatal(err)
	}
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}
	if s := again.Summary(); s.BlobsAdded != 0 || s.BytesAdded != 0 {
		t.Errorf("a stored chunk saved again added %d blobs, %d bytes; want none", s.BlobsAdded, s.BytesAdded)
	}
}

// A chunk waits for room in the queue; when the backup ends first, save
// returns the context's error instead of blocking for ever.
func TestBlobSaverStopsAtCancel(t *testing.T) {
	r := enginetest.NewRepo(t)
	p := engine.NewParts(ctx, r, engine.BackupOptions{Savers: 1}) // a queue of 2 chunks, and no saver runs
	for _, data := range []string{"one", "two"} {
		if _, err := p.SaveChunk(ctx, []byte(data)); err != nil {
			t.Fatalf("save %q into the queue: %v", data, err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := p.SaveChunk(cctx, []byte("three")); !errors.Is(err, context.Canceled) {
		t.Errorf("save into a full queue after cancel = %v, want context.Canceled", err)
	}
	p.RunBlobSavers(1)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if s := p.Summary(); s.BlobsAdded != 2 {
		t.Errorf("%d blobs added, want the 2 queued", s.BlobsAdded)
	}
}

// blobSaverFailingRepo fails every SaveBlob, as a full disk would.
type blobSaverFailingRepo struct{ *repo.Repository }

func (r blobSaverFailingRepo) SaveBlob(context.Context, blob.Type, blob.ID, []byte) (repo.SaveResult, error) {
	return repo.SaveResult{}, errors.New("injected save failure")
}

// A chunk that cannot be stored ends the saver with an error naming it.
func TestBlobSaverReportsAFailedSave(t *testing.T) {
	r := blobSaverFailingRepo{enginetest.NewRepo(t)}
	p := engine.NewParts(ctx, r, engine.BackupOptions{})
	p.RunBlobSavers(1)
	id, err := p.SaveChunk(ctx, []byte("lost"))
	if err != nil {
		t.Fatal(err)
	}
	err = p.Close()
	if err == nil || err.Error() != "save chunk "+id.Short()+": injected save failure" {
		t.Errorf("Close = %v; want the failed save of chunk %s", err, id.Short())
	}
}
