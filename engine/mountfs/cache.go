package mountfs

import (
	"container/list"
	"context"
	"errors"
	"sync"
)

// lru is a cache of decoded blobs bounded by the sum of their weights
// (about their bytes in memory). get loads a missing value once even when
// several goroutines ask for it at the same time (the kernel sends
// lookups and reads in parallel); the others wait for that load. A failed
// load is not cached: the next get tries again. Safe for concurrent use.
type lru[K comparable, V any] struct {
	max int64

	mu      sync.Mutex
	weight  int64
	order   *list.List // front: most recently used; elements hold *lruEntry
	entries map[K]*list.Element
	loading map[K]*lruCall[V]
}

type lruEntry[K comparable, V any] struct {
	key    K
	val    V
	weight int64
}

type lruCall[V any] struct {
	done chan struct{}
	val  V
	err  error
}

func newLRU[K comparable, V any](max int64) *lru[K, V] {
	return &lru[K, V]{max: max, order: list.New(), entries: map[K]*list.Element{}, loading: map[K]*lruCall[V]{}}
}

// get returns the cached value of key, or loads it with load (which
// returns the value and its weight) and caches it, evicting the least
// recently used values until the weights fit. A value heavier than the
// whole cache is kept alone (until the next load): the directory tree of a
// huge directory is then not decoded again for each lookup of its
// entries. Waiting for another goroutine's load stops when ctx is done.
func (c *lru[K, V]) get(ctx context.Context, key K, load func() (V, int64, error)) (V, error) {
	for {
		v, err, retry := c.try(ctx, key, load)
		if !retry {
			return v, err
		}
	}
}

// try is one attempt of get. retry is set when another goroutine's load
// was stopped by that goroutine's context (an interrupted request), not
// by ctx: the value is then loaded again.
func (c *lru[K, V]) try(ctx context.Context, key K, load func() (V, int64, error)) (_ V, _ error, retry bool) {
	c.mu.Lock()
	if el, ok := c.entries[key]; ok {
		c.order.MoveToFront(el)
		v := el.Value.(*lruEntry[K, V]).val
		c.mu.Unlock()
		return v, nil, false
	}
	if call, ok := c.loading[key]; ok {
		c.mu.Unlock()
		select {
		case <-call.done:
			if call.err != nil && isContextErr(call.err) && ctx.Err() == nil {
				return call.val, call.err, true
			}
			return call.val, call.err, false
		case <-ctx.Done():
			var zero V
			return zero, ctx.Err(), false
		}
	}
	call := &lruCall[V]{done: make(chan struct{})}
	c.loading[key] = call
	c.mu.Unlock()

	v, w, err := load()
	call.val, call.err = v, err
	c.mu.Lock()
	delete(c.loading, key)
	if err == nil {
		c.entries[key] = c.order.PushFront(&lruEntry[K, V]{key: key, val: v, weight: w})
		c.weight += w
		for c.weight > c.max && c.order.Len() > 1 {
			el := c.order.Back()
			e := el.Value.(*lruEntry[K, V])
			c.order.Remove(el)
			delete(c.entries, e.key)
			c.weight -= e.weight
		}
	}
	c.mu.Unlock()
	close(call.done)
	return v, err, false
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// stats returns the number of cached values and their total weight.
func (c *lru[K, V]) stats() (n int, weight int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.weight
}
