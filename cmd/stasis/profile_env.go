package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
)

// startProfiles honours STASIS_CPUPROFILE=FILE and STASIS_MEMPROFILE=FILE,
// for measuring a real command (docs/benchmarks.md). The returned function
// writes the profiles; it is a no-op when neither is set.
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
	return func() {
		if cpuFile != nil {
			pprof.StopCPUProfile()
			cpuFile.Close()
		}
		if mem != "" {
			f, err := os.Create(mem)
			if err == nil {
				runtime.GC()
				err = pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
			if err != nil {
				fmt.Fprintf(stderr, "stasis: STASIS_MEMPROFILE: %v\n", err)
			}
		}
	}
}
