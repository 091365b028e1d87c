package ndisshim

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// recordSleeps replaces moderationSleep for the test and returns the
// delays it was asked for.
func recordSleeps(t *testing.T) *[]time.Duration {
	var slept []time.Duration
	old := moderationSleep
	t.Cleanup(func() { moderationSleep = old })
	moderationSleep = func(d time.Duration) { slept = append(slept, d) }
	return &slept
}

func checkSlept(t *testing.T, slept, want []time.Duration) {
	t.Helper()
	if len(slept) != len(want) {
		t.Fatalf("slept %v, want %v", slept, want)
	}
	for i := range want {
		if slept[i] != want[i] {
			t.Fatalf("slept %v, want %v", slept, want)
		}
	}
}

// Moderation waits only after a wake-up busy with small frames, and never
// when off.
func TestModeration(t *testing.T) {
	slept := recordSleeps(t)
	var waits atomic.Int64
	m := Moderation{Delay: 100 * time.Microsecond, Frames: 8, SmallFrame: 512}.NewModerator(nil, &waits, nil)
	for _, frames := range []int{0, 1, 7, 8, 64} {
		m.After(frames, frames*100)
	}
	m.After(8, 8*65536) // large frames: no wait
	m.After(8, 8*512)   // at the limit: waits
	Moderation{}.NewModerator(nil, nil, nil).After(64, 64)
	Moderation{Delay: time.Millisecond}.NewModerator(nil, nil, nil).After(1, 65536) // Frames 0 counts as 1, SmallFrame 0 any size
	Moderation{Delay: time.Millisecond}.NewModerator(nil, nil, nil).After(0, 0)
	checkSlept(t, *slept, []time.Duration{100 * time.Microsecond, 100 * time.Microsecond, 100 * time.Microsecond, time.Millisecond})
	if waits.Load() != 3 {
		t.Errorf("waits counted %d, want 3", waits.Load())
	}
}

// OneWay moderation waits only while the opposite direction is quiet: a
// one-way flood waits; the same wake-ups with ACKs coming back (one frame
// back for every few sent) do not.
func TestModerationOneWay(t *testing.T) {
	slept := recordSleeps(t)
	var reverse atomic.Int64
	reverse.Store(1000) // counted before the moderator starts: not "moved"
	m := Moderation{Delay: 50 * time.Microsecond, Frames: 8, SmallFrame: 512, OneWay: true}.NewModerator(reverse.Load, nil, nil)

	m.After(64, 64*100) // nothing came back: waits
	reverse.Add(3)      // 3 back for 64 (under 1 per ReverseRatio): still one-way
	m.After(64, 64*100)
	reverse.Add(8) // 8 back for 64 (ACKs): no wait
	m.After(64, 64*100)
	m.After(64, 64*100) // quiet again since the last busy wake-up: waits
	reverse.Add(1)      // one back for 8: no wait
	m.After(8, 8*100)
	reverse.Add(500) // whatever comes back, a quiet wake-up never waits
	m.After(1, 100)
	m.After(16, 16*100) // the 500 moved since the last busy wake-up: no wait
	checkSlept(t, *slept, []time.Duration{50 * time.Microsecond, 50 * time.Microsecond, 50 * time.Microsecond})
}

// The wake-up after a wait has the budget (Limit), and only that one: a
// wake-up that does not wait lifts it. Runs that took the whole budget
// are counted.
func TestModerationBudget(t *testing.T) {
	slept := recordSleeps(t)
	var waits, spent atomic.Int64
	m := Moderation{Delay: 100 * time.Microsecond, Frames: 8, SmallFrame: 512, Budget: 100}.NewModerator(nil, &waits, &spent)
	limit := func(want int) {
		t.Helper()
		if got := m.Limit(1024); got != want {
			t.Fatalf("Limit(1024) = %d, want %d", got, want)
		}
	}
	limit(1024) // no wait yet
	m.After(1024, 1024*64)
	limit(100)
	if got := m.Limit(50); got != 50 {
		t.Errorf("Limit(50) after a wait = %d, want 50 (the DPC's own bound is smaller)", got)
	}
	m.After(100, 100*64) // took its whole budget, still a flood: waits again
	limit(100)
	m.After(60, 60*64) // less than the budget: the TAP was empty
	limit(100)
	m.After(2, 2*64) // quiet: no wait, no budget
	limit(1024)
	m.After(1024, 1024*1500) // large frames: no wait
	limit(1024)
	checkSlept(t, *slept, []time.Duration{100 * time.Microsecond, 100 * time.Microsecond, 100 * time.Microsecond})
	if waits.Load() != 3 || spent.Load() != 1 {
		t.Errorf("waits %d, budgets spent %d; want 3 and 1", waits.Load(), spent.Load())
	}

	none := Moderation{Delay: 100 * time.Microsecond, Frames: 8}.NewModerator(nil, nil, nil)
	none.After(1024, 1024*64)
	if got := none.Limit(1024); got != 1024 {
		t.Errorf("no budget: Limit(1024) after a wait = %d, want 1024", got)
	}
}

// TestPreciseSleepWaitsThroughSignals: a signal that lands on the sleeping
// thread cuts nanosleep(2) short (EINTR, whatever SA_RESTART says); the
// moderation wait sleeps again for the rest, so it never ends early.
// SIGURG is the Go runtime's own preemption signal, harmless to send.
func TestPreciseSleepWaitsThroughSignals(t *testing.T) {
	const d = 40 * time.Millisecond
	tid := make(chan int)
	done := make(chan time.Duration)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		t0 := time.Now()
		preciseSleep(d)
		done <- time.Since(t0)
	}()
	id := <-tid
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	sent := 0
	for {
		select {
		case slept := <-done:
			if slept < d {
				t.Fatalf("slept %v of %v: a signal (%d sent to its thread) ended it early", slept, d, sent)
			}
			if sent < 2 {
				t.Fatalf("only %d signals sent during a %v sleep: nothing tested", sent, d)
			}
			return
		case <-tick.C:
			if err := unix.Tgkill(unix.Getpid(), id, unix.SIGURG); err != nil {
				t.Fatalf("tgkill: %v", err)
			}
			sent++
		}
	}
}

// BenchmarkModerationWait: how long a moderation wait of 50µs and 300µs
// really lasts (ns/op), through the runtime's timers (time.Sleep, the old
// wait) and through nanosleep(2) (preciseSleep), in the same run:
//
//	go test -run '^$' -bench ModerationWait ./ndisshim
func BenchmarkModerationWait(b *testing.B) {
	for _, d := range []time.Duration{50 * time.Microsecond, 300 * time.Microsecond} {
		for _, w := range []struct {
			name  string
			sleep func(time.Duration)
		}{{"time.Sleep", time.Sleep}, {"nanosleep", preciseSleep}} {
			b.Run(fmt.Sprintf("%s/%v", w.name, d), func(b *testing.B) {
				for b.Loop() {
					w.sleep(d)
				}
			})
		}
	}
}
