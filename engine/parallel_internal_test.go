package engine

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

// parallel reports the end of its ctx when it did not hand out every item,
// so that a cancelled restore never takes a file written in part for whole.
func TestParallelReportsItemsNotRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var ran atomic.Int64
	err := parallel(ctx, 1000, func(ctx context.Context, _, i int) error {
		if ran.Add(1) == 3 {
			cancel()
		}
		return nil // an item that does not look at ctx
	})
	if !errors.Is(err, context.Canceled) || ran.Load() == 1000 {
		t.Errorf("parallel with ctx cancelled after 3 items: ran %d, err %v; want context.Canceled", ran.Load(), err)
	}
	if err := parallel(context.Background(), 10, func(context.Context, int, int) error { return nil }); err != nil {
		t.Errorf("parallel of 10 items: %v", err)
	}
}
