package main

import (
	"runtime"
	"runtime/debug"
	"testing"
)

// The soft memory limit never drops below what the key derivation needs,
// and above that it stays over the collector's own goal for the live heap
// (1.25×, GOGC 25), so that a large heap is not collected more often.
func TestMemoryLimitFor(t *testing.T) {
	for _, live := range []uint64{0, 1 << 20, 60 << 20, 100 << 20, 1 << 30, 50 << 30} {
		got := memoryLimitFor(live)
		if got < memoryFloor {
			t.Errorf("live heap %d MiB: limit %d MiB, below the floor %d MiB", live>>20, got>>20, memoryFloor>>20)
		}
		if goal := int64(live) + int64(live)/4; got <= goal && live > memoryFloor {
			t.Errorf("live heap %d MiB: limit %d MiB, not above GOGC's goal %d MiB", live>>20, got>>20, goal>>20)
		}
	}
}

// After a collection, the limit follows the live heap: with 200 MiB live it
// is raised above the floor, and once stopped it is left alone.
func TestTuneMemoryLimitFollowsTheLiveHeap(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	before := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(before)
	stop := tuneMemoryLimit()
	defer stop()
	live := make([]byte, 200<<20)
	for i := 0; i < 1000 && debug.SetMemoryLimit(-1) <= memoryFloor; i++ {
		runtime.GC()      // the finalizer runs after a collection,
		runtime.Gosched() // on the finalizer goroutine
	}
	if got := debug.SetMemoryLimit(-1); got < 200<<20 {
		t.Errorf("limit %d MiB with 200 MiB live; want it above the live heap", got>>20)
	}
	runtime.KeepAlive(live)
}
