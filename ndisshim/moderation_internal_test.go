package ndisshim

import (
	"testing"
	"time"
)

// Moderation waits only after a wake-up busy with small frames, and never
// when off.
func TestModeration(t *testing.T) {
	var slept []time.Duration
	defer func(f func(time.Duration)) { moderationSleep = f }(moderationSleep)
	moderationSleep = func(d time.Duration) { slept = append(slept, d) }
	m := Moderation{Delay: 100 * time.Microsecond, Frames: 8, SmallFrame: 512}
	for _, frames := range []int{0, 1, 7, 8, 64} {
		m.After(frames, frames*100)
	}
	m.After(8, 8*65536) // large frames: no wait
	m.After(8, 8*512)   // at the limit: waits
	Moderation{}.After(64, 64)
	Moderation{Delay: time.Millisecond}.After(1, 65536) // Frames 0 counts as 1, SmallFrame 0 any size
	Moderation{Delay: time.Millisecond}.After(0, 0)
	want := []time.Duration{100 * time.Microsecond, 100 * time.Microsecond, 100 * time.Microsecond, time.Millisecond}
	if len(slept) != len(want) {
		t.Fatalf("slept %v, want %v", slept, want)
	}
	for i := range want {
		if slept[i] != want[i] {
			t.Fatalf("slept %v, want %v", slept, want)
		}
	}
}
