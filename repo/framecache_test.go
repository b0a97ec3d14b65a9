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
	load := func([]byte) ([]byte, error) {
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
			e, err := c.get(frameKey{offset: 1}, load)
			if err != nil || string(e.plain) != "frame" {
				t.Errorf("get = %v, %v", e, err)
				return
			}
			c.release(e)
		}()
	}
	<-started // a reader is loading; the others wait for it or find the frame cached
	close(gate)
	wg.Wait()
	if n := loads.Load(); n != 1 {
		t.Errorf("%d loads of one frame by 4 readers, want 1", n)
	}

	boom := errors.New("boom")
	if _, err := c.get(frameKey{offset: 2}, func([]byte) ([]byte, error) { return nil, boom }); err != boom {
		t.Fatalf("failed load: %v", err)
	}
	e, err := c.get(frameKey{offset: 2}, func([]byte) ([]byte, error) { return []byte("again"), nil })
	if err != nil || string(e.plain) != "again" {
		t.Fatalf("after a failed load: %v, %v; want a new load", e, err)
	}
	c.release(e)
	e, _ = c.get(frameKey{offset: 3}, func([]byte) ([]byte, error) { return []byte{}, nil })
	c.release(e)
	if c.len() != 2 {
		t.Errorf("%d frames cached, want at most 2", c.len())
	}
}

// A frame's buffer is given to a later load only once the frame has left
// the cache and its last reader released it: a reader never sees its frame
// overwritten.
func TestFrameCacheReusesBuffersOfReleasedFrames(t *testing.T) {
	c := &frameCache{max: 1}
	var got [][]byte // the dst each load was given
	load := func(fill byte) func([]byte) ([]byte, error) {
		return func(dst []byte) ([]byte, error) {
			got = append(got, dst)
			b := dst[:0]
			for range 1000 {
				b = append(b, fill)
			}
			return b, nil
		}
	}
	held, err := c.get(frameKey{offset: 1}, load('a'))
	if err != nil {
		t.Fatal(err)
	}
	e2, _ := c.get(frameKey{offset: 2}, load('b')) // evicts frame 1, which is still read
	if got[1] != nil {
		t.Fatal("frame 2 was loaded into the buffer of frame 1, which a reader holds")
	}
	for _, b := range held.plain {
		if b != 'a' {
			t.Fatalf("frame 1 changed under its reader: %q", held.plain[:10])
		}
	}
	c.release(held) // frame 1 is out of the cache: its buffer is free now
	c.release(e2)
	e3, _ := c.get(frameKey{offset: 3}, load('c')) // evicts frame 2 (released): two free buffers
	if got[2] == nil || cap(got[2]) < 1000 {
		t.Fatalf("frame 3 got a new buffer (%d), want a released one", cap(got[2]))
	}
	if string(e3.plain[:3]) != "ccc" || len(e3.plain) != 1000 {
		t.Errorf("frame 3 reads %q (%d bytes)", e3.plain[:3], len(e3.plain))
	}
	c.release(e3)
}

func (c *frameCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
