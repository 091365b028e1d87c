package main

import (
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// steadySample is the process's allocation count and CPU time at one
// moment; two of them bracket the steady state (from "ready" to the stop
// signal), so the report can say what moving packets cost.
type steadySample struct {
	at           time.Time
	mallocs      uint64
	user, system time.Duration
}

func sampleSteady() steadySample {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return steadySample{at: time.Now(), mallocs: ms.Mallocs,
		user: time.Duration(ru.Utime.Nano()), system: time.Duration(ru.Stime.Nano())}
}

// steadyLines reports heap allocations per packet and CPU seconds per GB
// moved between a and b. The CPU includes the kernel's receive work that a
// TAP write runs in the writer's context.
func steadyLines(a, b steadySample, packets, bytes int64) []string {
	if b.at.IsZero() || a.at.IsZero() {
		return nil
	}
	allocs := b.mallocs - a.mallocs
	perPkt := 0.0
	if packets > 0 {
		perPkt = float64(allocs) / float64(packets)
	}
	cpu := (b.user - a.user) + (b.system - a.system)
	gb := float64(bytes) / 1e9
	perGB := "n/a"
	if gb > 0 {
		perGB = fmt.Sprintf("%.2f", cpu.Seconds()/gb)
	}
	return []string{
		fmt.Sprintf("steady state (%s): %d heap allocations for %d packets (%.4f per packet)", b.at.Sub(a.at).Round(time.Millisecond), allocs, packets, perPkt),
		fmt.Sprintf("CPU: %.2fs user + %.2fs system for %.2f GB moved (%s CPU-seconds per GB)", (b.user - a.user).Seconds(), (b.system - a.system).Seconds(), gb, perGB),
	}
}
