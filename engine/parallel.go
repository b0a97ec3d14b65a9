package engine

import (
	"context"
	"runtime"

	"golang.org/x/sync/errgroup"
)

// parallel calls fn(ctx, worker, i) for every i in [0, n), on
// min(NumCPU, n) goroutines; worker (0 ≤ worker < that number) lets fn keep
// per-goroutine state such as a buffer or a chunker. Items are handed out
// in order; the first error cancels ctx for the rest and is returned. When
// ctx ends before every item was handed out, its error is returned.
func parallel(ctx context.Context, n int, fn func(ctx context.Context, worker, i int) error) error {
	g, gctx := errgroup.WithContext(ctx)
	next := make(chan int)
	g.Go(func() error {
		defer close(next)
		for i := 0; i < n; i++ {
			select {
			case next <- i:
			case <-gctx.Done():
				// Not every item was handed out: that is an error (the
				// first one, a worker's, is the one returned), also when
				// only the caller's ctx ended.
				return context.Cause(gctx)
			}
		}
		return nil
	})
	for w := 0; w < min(runtime.NumCPU(), n); w++ {
		g.Go(func() (err error) {
			defer recoverTo(&err, "a parallel part of a file")
			for i := range next {
				if err := fn(gctx, w, i); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// workers returns how many goroutines parallel uses for n items.
func workers(n int) int { return max(1, min(runtime.NumCPU(), n)) }
