package ndisshim_test

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

// gatedDPC is a DPC that says when it runs (entered) and waits for the
// test (gate) before it returns, and records whether two runs overlapped.
type gatedDPC struct {
	runs, inside atomic.Int32
	overlap      atomic.Bool
	entered      chan struct{}
	gate         chan struct{}
}

func newGatedDPC(gateRoom int) *gatedDPC {
	return &gatedDPC{entered: make(chan struct{}, 1), gate: make(chan struct{}, gateRoom)}
}

func (d *gatedDPC) enter() {
	if d.inside.Add(1) > 1 {
		d.overlap.Store(true)
	}
}

func (d *gatedDPC) run() {
	d.enter()
	d.runs.Add(1)
	d.entered <- struct{}{}
	<-d.gate
	d.inside.Add(-1)
}

// TestInterruptDeregisterStopsAndJoins: each raise of the line runs the
// DPC once, never concurrently with itself; Deregister stops the source
// once and does not return while a DPC is running; after it returns the
// DPC never runs again; a second Deregister is an error.
func TestInterruptDeregisterStopsAndJoins(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	src := newFakeSource()
	d := newGatedDPC(100)
	runs, overlap, entered, gate := &d.runs, &d.overlap, d.entered, d.gate
	in, err := r.a.RegisterInterrupt("test-intr", src, d.run, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		src.kick()
		<-entered
		gate <- struct{}{}
		if got := runs.Load(); got != int32(i+1) {
			t.Fatalf("after %d interrupts the DPC ran %d times", i+1, got)
		}
	}
	src.kick()
	<-entered // a DPC is running and blocked on the gate
	done := make(chan error, 1)
	go func() { done <- in.Deregister() }()
	shimtest.WaitFor(t, "Deregister to stop the source", func() bool { return src.stops.Load() == 1 })
	select {
	case err := <-done:
		t.Fatalf("Deregister returned (%v) while the DPC was running", err)
	default:
	}
	gate <- struct{}{}
	if err := <-done; err != nil {
		t.Fatalf("Deregister: %v", err)
	}
	n := runs.Load()
	src.kick()
	time.Sleep(5 * time.Millisecond)
	if runs.Load() != n || n != 6 {
		t.Errorf("DPC ran %d times (want 6), and %d after Deregister", n, runs.Load()-n)
	}
	if overlap.Load() {
		t.Error("the DPC ran concurrently with itself")
	}
	if err := in.Deregister(); err == nil || !strings.Contains(err.Error(), `interrupt "test-intr" deregistered twice`) {
		t.Errorf("second Deregister: %v", err)
	}
	if src.stops.Load() != 1 {
		t.Errorf("source stopped %d times, want 1", src.stops.Load())
	}
	if in.Err() != nil {
		t.Errorf("Err after a clean stop: %v", in.Err())
	}
	if _, err := r.a.RegisterInterrupt("bad", nil, func() {}, nil); err == nil {
		t.Error("RegisterInterrupt without a source succeeded")
	}
	if _, err := r.a.RegisterInterrupt("bad", src, nil, nil); err == nil {
		t.Error("RegisterInterrupt without a DPC succeeded")
	}
	r.finish()
}

// TestInterruptSourceError: when the source fails (the TAP deleted under
// the reader), the loop ends and calls onError with the error; the DPC
// does not run; Err reports it; the miniport's HaltEx still deregisters it
// cleanly.
func TestInterruptSourceError(t *testing.T) {
	errGone := errors.New("tap: device deleted")
	got := make(chan error, 1)
	cfg := &fakeConfig{onIntrError: func(err error) { got <- err }}
	r := newRig(t, cfg, ndisshim.AdapterOptions{})
	r.m.src.errCh <- errGone
	if err := <-got; !errors.Is(err, errGone) {
		t.Fatalf("onError got %v", err)
	}
	r.m.allowRx(8) // raises the line: nobody is listening any more
	time.Sleep(5 * time.Millisecond)
	if n := r.m.dpcRuns.Load(); n != 0 {
		t.Errorf("DPC ran %d times after the source failed", n)
	}
	r.finish() // HaltEx deregisters: Stop + join of a loop that already ended
	if !errors.Is(r.m.intr.Err(), errGone) {
		t.Errorf("Err: %v", r.m.intr.Err())
	}
}

// TestTryRunDPC: TryRunDPC runs a DPC body on the caller's goroutine when
// the interrupt's DPC is idle, refuses (without waiting) while it runs,
// never overlaps it, and never runs after Deregister.
func TestTryRunDPC(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	src := newFakeSource()
	d := newGatedDPC(1)
	entered, gate := d.entered, d.gate
	in, err := r.a.RegisterInterrupt("test-intr", src, d.run, nil)
	if err != nil {
		t.Fatal(err)
	}
	var polls atomic.Int32
	poll := func() {
		d.enter()
		polls.Add(1)
		d.inside.Add(-1)
	}
	if !in.TryRunDPC(poll) || polls.Load() != 1 {
		t.Fatalf("TryRunDPC with the DPC idle: ran %d times, want 1", polls.Load())
	}
	src.kick()
	<-entered // the interrupt's DPC is running, blocked on the gate
	if in.TryRunDPC(poll) {
		t.Fatal("TryRunDPC ran while the interrupt's DPC was running")
	}
	gate <- struct{}{}
	shimtest.WaitFor(t, "the DPC to finish", func() bool { return in.TryRunDPC(poll) })
	if err := in.Deregister(); err != nil {
		t.Fatal(err)
	}
	before := polls.Load()
	if in.TryRunDPC(poll) || polls.Load() != before {
		t.Fatal("TryRunDPC ran after Deregister")
	}
	if d.overlap.Load() {
		t.Fatal("TryRunDPC overlapped the interrupt's DPC")
	}
}

// TestPoller: a Poller runs its body only while armed and while the last
// run that read anything read at most BulkRun bytes.
func TestPoller(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	in, err := r.a.RegisterInterrupt("test-intr", newFakeSource(), func() {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var p ndisshim.Poller
	runs := 0
	if p.Poll() {
		t.Fatal("Poll ran before Arm")
	}
	p.Arm(in, func() { runs++ })
	steps := []struct {
		frames, bytes int
		want          bool
	}{
		{0, 0, true},                     // nothing recorded yet
		{6, ndisshim.BulkRun + 1, false}, // a bulk run
		{0, 0, false},                    // an empty run changes nothing
		{1, 98, true},                    // a small run
	}
	for i, s := range steps {
		p.Ran(s.frames, s.bytes)
		before := runs
		if got := p.Poll(); got != s.want || (runs > before) != s.want {
			t.Fatalf("step %d (Ran(%d, %d)): Poll = %v with %d runs, want %v", i, s.frames, s.bytes, got, runs-before, s.want)
		}
	}
	p.Disarm()
	if p.Poll() {
		t.Fatal("Poll ran after Disarm")
	}
	if err := in.Deregister(); err != nil {
		t.Fatal(err)
	}
}
