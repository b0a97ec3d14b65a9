package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"runtime/trace"
	"time"
)

// startProfiles honours STASIS_CPUPROFILE=FILE, STASIS_MEMPROFILE=FILE and
// STASIS_TRACE=FILE (an execution trace, `go tool trace FILE`: where the
// wall time goes when the CPU profile does not say), for measuring a real
// command (docs/benchmarks.md). The heap profile is
// the one taken when the live heap was largest (it is checked every 10 ms),
// so it shows what makes the peak RSS, not what is left at the end. The
// returned function writes the profiles; it is a no-op when neither is set.
func startProfiles(stderr io.Writer) func() {
	cpu, mem := os.Getenv("STASIS_CPUPROFILE"), os.Getenv("STASIS_MEMPROFILE")
	var cpuFile *os.File
	if cpu != "" {
		f, err := os.Create(cpu)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(stderr, "stasis: STASIS_CPUPROFILE: %v\n", err)
		} else {
			cpuFile = f
		}
	}
	var peak *heapPeak
	if mem != "" {
		peak = watchHeapPeak()
	}
	var traceFile *os.File
	if name := os.Getenv("STASIS_TRACE"); name != "" {
		f, err := os.Create(name)
		if err == nil {
			if err = trace.Start(f); err != nil {
				f.Close()
			}
		}
		if err != nil {
			fmt.Fprintf(stderr, "stasis: STASIS_TRACE: %v\n", err)
		} else {
			traceFile = f
		}
	}
	return func() {
		if traceFile != nil {
			trace.Stop()
			traceFile.Close()
		}
		if cpuFile != nil {
			pprof.StopCPUProfile()
			cpuFile.Close()
		}
		if peak != nil {
			if err := os.WriteFile(mem, peak.stop(), 0o644); err != nil {
				fmt.Fprintf(stderr, "stasis: STASIS_MEMPROFILE: %v\n", err)
			} else {
				fmt.Fprintf(stderr, "stasis: heap profile at the largest live heap seen (%.1f MiB) in %s\n", float64(peak.max)/(1<<20), mem)
			}
		}
	}
}

// heapPeak keeps the heap profile taken at the largest live heap seen.
type heapPeak struct {
	done, stopped chan struct{}
	max           uint64
	profile       []byte
}

func watchHeapPeak() *heapPeak {
	p := &heapPeak{done: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(p.stopped)
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(sample)
			if live := sample[0].Value.Uint64(); live > p.max+p.max/20 || p.profile == nil {
				var b bytes.Buffer
				if pprof.Lookup("heap").WriteTo(&b, 0) == nil {
					p.max, p.profile = live, b.Bytes()
				}
			}
			select {
			case <-p.done:
				return
			case <-tick.C:
			}
		}
	}()
	return p
}

// stop ends the watch and returns the profile of the peak.
func (p *heapPeak) stop() []byte {
	close(p.done)
	<-p.stopped
	if p.profile == nil {
		runtime.GC()
		var b bytes.Buffer
		pprof.Lookup("heap").WriteTo(&b, 0)
		return b.Bytes()
	}
	return p.profile
}
