package mountfs

import (
	"context"
	"errors"
	"testing"
)

func TestLRU(t *testing.T) {
	ctx := context.Background()
	c := newLRU[int, string](10)
	loads := 0
	get := func(k int, w int64) string {
		t.Helper()
		v, err := c.get(ctx, k, func() (string, int64, error) { loads++; return string(rune('a' + k)), w, nil })
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	get(1, 4)
	get(2, 4)
	get(1, 4) // 1 is now the most recently used
	get(3, 4) // evicts 2
	if n, w := c.stats(); n != 2 || w != 8 || loads != 3 {
		t.Fatalf("%d values of weight %d after %d loads, want 2, 8, 3", n, w, loads)
	}
	get(1, 4)
	if loads != 3 {
		t.Error("1 was evicted instead of 2")
	}
	get(2, 4)
	if loads != 4 {
		t.Error("2 was not evicted")
	}
	if v := get(4, 50); v != "e" {
		t.Errorf("got %q", v)
	}
	if n, w := c.stats(); n != 1 || w != 50 {
		t.Errorf("a value heavier than the cache: %d values of weight %d, want it alone", n, w)
	}
	get(4, 50)
	if loads != 5 {
		t.Error("the heavy value was loaded again right away")
	}
	// A failed load is not kept.
	boom := errors.New("boom")
	if _, err := c.get(ctx, 9, func() (string, int64, error) { return "", 1, boom }); !errors.Is(err, boom) {
		t.Fatalf("error %v", err)
	}
	if _, err := c.get(ctx, 9, func() (string, int64, error) { return "j", 1, nil }); err != nil {
		t.Errorf("second load after a failure: %v", err)
	}
}

// Concurrent gets of one key load it once.
func TestLRUSingleLoad(t *testing.T) {
	ctx := context.Background()
	c := newLRU[int, int](100)
	release := make(chan struct{})
	started := make(chan struct{})
	loads := 0
	results := make(chan int, 8)
	go func() {
		v, _ := c.get(ctx, 1, func() (int, int64, error) { loads++; close(started); <-release; return 42, 1, nil })
		results <- v
	}()
	<-started
	for i := 0; i < 7; i++ {
		go func() {
			v, _ := c.get(ctx, 1, func() (int, int64, error) { loads++; return -1, 1, nil })
			results <- v
		}()
	}
	// The waiters are blocked on the first load (or not yet started); both
	// end with its value.
	close(release)
	for i := 0; i < 8; i++ {
		if v := <-results; v != 42 {
			t.Errorf("get %d: %d, want the first load's 42", i, v)
		}
	}
	if loads != 1 {
		t.Errorf("%d loads, want 1", loads)
	}
}
