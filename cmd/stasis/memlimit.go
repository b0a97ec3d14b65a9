package main

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// memoryFloor is the least soft memory limit stasis sets: above the key
// derivation's 64 MiB (argon2id), which every command on an encrypted
// repository holds for a moment.
const memoryFloor = 80 << 20

// memoryLimitFor returns the soft memory limit (debug.SetMemoryLimit) for a
// live heap of live bytes: 1.3 times it, at least memoryFloor. It stays just
// above the collector's goal (1.25 times the live heap, GOGC 25), so for a
// large heap it does not make the collector run more than GOGC does; what it
// changes is that the runtime gives memory freed since the last collection
// back to the system instead of keeping it mapped (an initial backup of the
// benchmark tree: 100-104 MiB peak RSS without it, 90-91 MiB with it, the
// same CPU; docs/benchmarks.md).
func memoryLimitFor(live uint64) int64 {
	return max(memoryFloor, int64(live/10*13))
}

// tuneMemoryLimit keeps the soft memory limit at memoryLimitFor of the live
// heap, set again after every collection (a finalizer of an object made
// anew each cycle, so an idle process such as `stasis mount` does no work
// for it), unless the environment sets GOMEMLIMIT. The returned function
// stops it.
func tuneMemoryLimit() (stop func()) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	debug.SetMemoryLimit(memoryFloor)
	var stopped atomic.Bool
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	var arm func()
	arm = func() {
		runtime.SetFinalizer(new(gcCycle), func(*gcCycle) {
			if stopped.Load() {
				return
			}
			metrics.Read(sample)
			if sample[0].Value.Kind() == metrics.KindUint64 {
				debug.SetMemoryLimit(memoryLimitFor(sample[0].Value.Uint64()))
			}
			arm()
		})
	}
	arm()
	return func() { stopped.Store(true) }
}

// gcCycle is the object whose finalizer runs once a collection has found
// it unreachable. It holds a pointer so that it is not a tiny allocation
// (those share a block, and their finalizers may never run).
type gcCycle struct{ _ *byte }
