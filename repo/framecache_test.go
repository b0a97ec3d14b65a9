package repo

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

// Concurrent readers of one frame decode it once; a failed load is not
// kept, so the next reader loads again; the cache holds at most max frames.
func TestFrameCache(t *testing.T) {
	c := &frameCache{max: 2}
	var loads atomic.Int32
	gate, started := make(chan struct{}), make(chan struct{})
	var once sync.Once
	load := func() ([]byte, error) {
		loads.Add(1)
		once.Do(func() { close(started) })
		<-gate
		return []byte("frame"), nil
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if b, err := c.get(frameKey{offset: 1}, load); err != nil || string(b) != "frame" {
				t.Errorf("get = %q, %v", b, err)
			}
		}()
	}
	<-started // a reader is loading; the others wait for it or find the frame cached
	close(gate)
	wg.Wait()
	if n := loads.Load(); n != 1 {
		t.Errorf("%d loads of one frame by 4 readers, want 1", n)
	}

	boom := errors.New("boom")
	if _, err := c.get(frameKey{offset: 2}, func() ([]byte, error) { return nil, boom }); err != boom {
		t.Fatalf("failed load: %v", err)
	}
	if b, err := c.get(frameKey{offset: 2}, func() ([]byte, error) { return []byte("again"), nil }); err != nil || string(b) != "again" {
		t.Errorf("after a failed load: %q, %v; want a new load", b, err)
	}
	c.get(frameKey{offset: 3}, func() ([]byte, error) { return nil, nil })
	if c.len() != 2 {
		t.Errorf("%d frames cached, want at most 2", c.len())
	}
}

func (c *frameCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
