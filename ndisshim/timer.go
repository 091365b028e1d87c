package ndisshim

import (
	"fmt"
	"sync"
	"time"
)

// Timer is an NDIS timer object (NdisAllocateTimerObject): one-shot or
// periodic, its handler run on its own goroutine.
//
// Cancel reports whether it stopped a pending firing; it returns false when
// the handler already fired (or is running). WaitForHandler then waits until
// a handler that already started has finished (what a halt must do after a
// failed cancel, as KeFlushQueuedDpcs does in a real driver).
type Timer struct {
	owner *Resources
	name  string
	fn    func()
	where string
	at    time.Time

	mu      sync.Mutex
	idle    sync.Cond // signalled when running drops to 0
	t       *time.Timer
	gen     uint64 // bumped by every Set and Cancel; a firing of an older gen is void
	armed   bool
	period  time.Duration
	running int
	freed   bool
	fired   uint64
}

// AllocateTimer allocates a timer object whose handler is fn
// (NdisAllocateTimerObject). Free it with Free before halt returns.
func (r *Resources) AllocateTimer(name string, fn func()) (*Timer, error) {
	if fn == nil {
		return nil, fmt.Errorf("ndisshim: timer %q: nil handler", name)
	}
	if err := r.live("AllocateTimer"); err != nil {
		return nil, err
	}
	t := &Timer{owner: r, name: name, fn: fn, where: callerSite(1), at: time.Now()}
	t.idle.L = &t.mu
	r.mu.Lock()
	r.timers[t] = struct{}{}
	r.mu.Unlock()
	return t, nil
}

// Set arms the timer to fire after due and then, if period > 0, every
// period (NdisSetTimerObject). It reports whether the timer was already
// armed (and is now re-armed).
func (t *Timer) Set(due, period time.Duration) (wasArmed bool, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.freed {
		return false, fmt.Errorf("ndisshim: set timer %q after free", t.name)
	}
	wasArmed = t.armed
	t.gen++
	if t.t != nil {
		t.t.Stop()
	}
	t.armed, t.period = true, period
	g := t.gen
	t.t = time.AfterFunc(due, func() { t.fire(g) })
	return wasArmed, nil
}

func (t *Timer) fire(g uint64) {
	t.mu.Lock()
	if g != t.gen || !t.armed || t.freed {
		t.mu.Unlock()
		return
	}
	if t.period == 0 {
		t.armed = false
	}
	t.running++
	t.fired++
	t.mu.Unlock()

	t.fn()

	t.mu.Lock()
	t.running--
	if t.running == 0 {
		t.idle.Broadcast()
	}
	if t.armed && t.period > 0 && g == t.gen && !t.freed {
		// No Set or Cancel since this firing's timer was made (each
		// bumps gen), so t.t is that timer and its function still
		// fires g: re-arming it allocates nothing, where a new
		// AfterFunc per period would (a periodic timer is steady
		// state: the adapter's statistics timer runs beside the
		// datapath for the adapter's life).
		t.t.Reset(t.period)
	}
	t.mu.Unlock()
}

// Cancel disarms the timer (NdisCancelTimerObject). It returns true when a
// pending firing was cancelled, false when the timer was not armed, or its
// one-shot handler has already fired or is running. Cancel does not wait
// for a running handler: call WaitForHandler for that.
func (t *Timer) Cancel() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	was := t.armed
	t.armed = false
	t.gen++
	if t.t != nil {
		t.t.Stop()
	}
	return was
}

// WaitForHandler waits until no handler of this timer is running. A handler
// must not call it on its own timer.
func (t *Timer) WaitForHandler() {
	t.mu.Lock()
	for t.running > 0 {
		t.idle.Wait()
	}
	t.mu.Unlock()
}

// Fired counts how many times the handler has started.
func (t *Timer) Fired() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fired
}

// Free releases the timer (NdisFreeTimerObject): it cancels it and waits
// for a running handler, so after Free the handler never runs again.
func (t *Timer) Free() {
	t.Cancel()
	t.WaitForHandler()
	t.mu.Lock()
	already := t.freed
	t.freed = true
	t.mu.Unlock()
	r := t.owner
	r.mu.Lock()
	delete(r.timers, t)
	r.mu.Unlock()
	if already {
		r.v.Record(Finding{Kind: FindBadFree, Object: fmt.Sprintf("timer %q", t.name), Where: callerSite(1), Detail: "freed twice"})
	}
}
