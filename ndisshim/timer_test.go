package ndisshim_test

import (
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

// TestTimerOneShot: a one-shot timer fires once; Cancel after the firing
// reports false; Set on an armed timer says so and replaces the arming; a
// timer can be armed again after firing; Set after Free is refused.
func TestTimerOneShot(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	fired := make(chan struct{}, 10)
	tm, err := r.a.AllocateTimer("oneshot", func() { fired <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	if was, err := tm.Set(time.Millisecond, 0); was || err != nil {
		t.Fatalf("first Set: wasArmed %v, %v", was, err)
	}
	<-fired
	tm.WaitForHandler()
	if tm.Fired() != 1 {
		t.Errorf("Fired %d, want 1", tm.Fired())
	}
	if tm.Cancel() {
		t.Error("Cancel after the one-shot fired reported true")
	}
	if was, _ := tm.Set(time.Hour, 0); was {
		t.Error("Set after firing says the timer was armed")
	}
	if was, _ := tm.Set(time.Millisecond, 0); !was {
		t.Error("Set on an armed timer says it was not armed")
	}
	<-fired
	tm.WaitForHandler()
	if tm.Fired() != 2 || tm.Cancel() {
		t.Errorf("after the re-armed firing: Fired %d (want 2), and Cancel must report false", tm.Fired())
	}
	tm.Free()
	if _, err := tm.Set(time.Millisecond, 0); err == nil || !strings.Contains(err.Error(), `timer "oneshot" after free`) {
		t.Errorf("Set after Free: %v", err)
	}
	if len(fired) != 0 {
		t.Errorf("%d extra firings", len(fired))
	}
	r.finish()
}

// TestTimerPeriodic: a periodic timer keeps firing; Cancel reports true
// (the next firing was pending) and after WaitForHandler it never runs
// again.
func TestTimerPeriodic(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	var runs atomic.Int64
	tick := make(chan struct{}, 1000)
	tm, _ := r.a.AllocateTimer("periodic", func() {
		runs.Add(1)
		tick <- struct{}{}
	})
	if _, err := tm.Set(time.Millisecond, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		<-tick
	}
	if !tm.Cancel() {
		t.Error("Cancel of a running periodic timer reported false")
	}
	tm.WaitForHandler()
	n := runs.Load()
	if n < 3 || tm.Fired() != uint64(n) {
		t.Errorf("runs %d, Fired %d", n, tm.Fired())
	}
	time.Sleep(20 * time.Millisecond) // ample for several more periods, were it still armed
	if runs.Load() != n {
		t.Errorf("periodic timer ran %d times after Cancel", runs.Load()-n)
	}
	tm.Free()
	r.finish()
}

// A periodic timer re-arms without allocating: the adapter's statistics
// timer runs beside the datapath for as long as the adapter does, and the
// datapath's claim is no heap allocation per packet in steady state (the
// exit report counts every allocation of the run). It used to make a new
// time.AfterFunc and closure every period (2 allocations a firing).
func TestTimerPeriodicAllocatesNothing(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	tick := make(chan struct{}, 1)
	tm, _ := r.a.AllocateTimer("periodic", func() {
		select {
		case tick <- struct{}{}:
		default:
		}
	})
	if _, err := tm.Set(time.Millisecond, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for range 10 { // warm up: the first firings' goroutines and timers
		<-tick
	}
	const periods = 200
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f0 := tm.Fired()
	deadline := time.After(shimtest.Hang)
	for tm.Fired()-f0 < periods {
		select {
		case <-tick:
		case <-deadline:
			t.Fatalf("a 1ms periodic timer fired %d times in %v", tm.Fired()-f0, shimtest.Hang)
		}
	}
	runtime.ReadMemStats(&after)
	fired := tm.Fired() - f0
	tm.Cancel()
	tm.WaitForHandler()
	tm.Free()
	r.finish()
	// The old code made 2 a firing; a new goroutine struct now and then
	// (each firing runs on a goroutine of its own) is not the timer's.
	if allocs := after.Mallocs - before.Mallocs; allocs > fired/4 {
		t.Errorf("%d heap allocations over %d firings of a periodic timer, want (nearly) none", allocs, fired)
	}
}

// TestTimerCancelWhileHandlerRuns: Cancel while the handler runs reports
// false and does not wait; WaitForHandler (and Free) wait for the handler
// to finish.
func TestTimerCancelWhileHandlerRuns(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	for _, how := range []string{"WaitForHandler", "Free"} {
		t.Run(how, func(t *testing.T) {
			entered, release := make(chan struct{}), make(chan struct{})
			var finished atomic.Bool
			tm, _ := r.a.AllocateTimer("slow", func() {
				close(entered)
				<-release
				finished.Store(true)
			})
			if _, err := tm.Set(0, 0); err != nil {
				t.Fatal(err)
			}
			<-entered
			if tm.Cancel() {
				t.Fatal("Cancel while the one-shot handler runs reported true")
			}
			done := make(chan struct{})
			go func() {
				if how == "Free" {
					tm.Free()
				} else {
					tm.WaitForHandler()
				}
				close(done)
			}()
			time.Sleep(10 * time.Millisecond)
			select {
			case <-done:
				t.Fatalf("%s returned while the handler was running", how)
			default:
			}
			close(release)
			<-done
			if !finished.Load() {
				t.Fatalf("%s returned before the handler finished", how)
			}
			if how == "WaitForHandler" {
				tm.Free()
			}
		})
	}
	if !cancelPendingTimer(r) {
		t.Error("Cancel of a pending timer reported false")
	}
	r.finish()
}

// cancelPendingTimer arms a timer far in the future and cancels it.
func cancelPendingTimer(r *rig) bool {
	var ran atomic.Bool
	tm, _ := r.a.AllocateTimer("far", func() { ran.Store(true) })
	defer tm.Free()
	_, _ = tm.Set(time.Hour, 0)
	return tm.Cancel() && !ran.Load()
}

// TestTimerCancelRacesFiring arms timers due in a few microseconds and
// cancels them after a random few microseconds, many times over. Whenever
// Cancel returns true the handler never runs for that arming (checked
// after everything settled); whenever it returns false the handler ran or
// is running, and after WaitForHandler it has finished. The same holds
// for one timer re-armed over and over: handler runs == false Cancels.
func TestTimerCancelRacesFiring(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	rng := newRand(t)
	spin := func(n int) {
		for start := time.Now(); time.Since(start) < time.Duration(n)*time.Microsecond; {
			runtime.Gosched()
		}
	}

	// Fresh timer per arming: the handler knows its arming.
	const N = 1500
	type arming struct{ started, finished atomic.Int32 }
	cancelled := make([]*arming, 0, N)
	var trues, falses int
	for i := range N {
		ar := &arming{}
		tm, err := r.a.AllocateTimer("race", func() {
			ar.started.Add(1)
			if i%4 == 0 {
				runtime.Gosched()
			}
			ar.finished.Add(1)
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tm.Set(time.Duration(rng.IntN(40))*time.Microsecond, 0); err != nil {
			t.Fatal(err)
		}
		spin(rng.IntN(40))
		if tm.Cancel() {
			trues++
			cancelled = append(cancelled, ar)
		} else {
			falses++
			tm.WaitForHandler()
			if ar.started.Load() != 1 || ar.finished.Load() != 1 {
				t.Fatalf("arming %d: Cancel false, but after WaitForHandler the handler started %d and finished %d times", i, ar.started.Load(), ar.finished.Load())
			}
		}
		tm.Free()
	}

	// One timer, re-armed N times.
	var runs atomic.Int64
	one, _ := r.a.AllocateTimer("rearmed", func() { runs.Add(1) })
	oneFalses := 0
	for range N {
		if _, err := one.Set(time.Duration(rng.IntN(40))*time.Microsecond, 0); err != nil {
			t.Fatal(err)
		}
		spin(rng.IntN(40))
		if !one.Cancel() {
			oneFalses++
			one.WaitForHandler()
		}
	}
	one.Free()

	time.Sleep(20 * time.Millisecond) // let any stray timer callback run (it must do nothing)
	for i, ar := range cancelled {
		if n := ar.started.Load(); n != 0 {
			t.Errorf("cancelled arming #%d: handler ran %d times after Cancel returned true", i, n)
		}
	}
	if runs.Load() != int64(oneFalses) || one.Fired() != uint64(oneFalses) {
		t.Errorf("re-armed timer: %d runs, Fired %d, %d false Cancels; they must be equal", runs.Load(), one.Fired(), oneFalses)
	}
	t.Logf("fresh timers: %d cancelled in time, %d fired first; re-armed timer: %d fired first", trues, falses, oneFalses)
	r.finish()
}
