package ndisshim_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

// TestWatchdogReportsWhilePauseWaits: while Pause waits, OnHeld gets a
// report every WatchdogInterval naming the binding that holds NBLs, how
// many and how old the oldest is; the ages grow; Pause ends when they come
// back.
func TestWatchdogReportsWhilePauseWaits(t *testing.T) {
	reports := make(chan ndisshim.HeldReport, 100)
	r := newRig(t, nil, ndisshim.AdapterOptions{WatchdogInterval: 5 * time.Millisecond, OnHeld: func(h ndisshim.HeldReport) {
		select {
		case reports <- h:
		default:
		}
	}})
	b, p := r.open("hoststack")
	r.restart()
	if _, err := r.m.indicateN(3, false); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.a.Pause(context.Background()) }()
	var prev ndisshim.HeldReport
	for i := range 3 {
		h := <-reports
		if h.Phase != "pause" || h.Adapter != "tm0" || h.Total() != 3 || len(h.Held) != 1 {
			t.Fatalf("report %d: %+v", i, h)
		}
		held := h.Held[0]
		if held.Holder != "hoststack" || held.What != "receive indications" || held.Count != 3 || held.Oldest <= 0 {
			t.Errorf("report %d: %+v, want 3 receive indications held by hoststack with an age", i, held)
		}
		if !strings.HasPrefix(h.String(), "3 receive indications held by hoststack, oldest ") {
			t.Errorf("report text %q", h.String())
		}
		if i > 0 && (held.Oldest < prev.Held[0].Oldest || h.Waited < prev.Waited) {
			t.Errorf("report %d is younger than the one before: %+v then %+v", i, prev, h)
		}
		prev = h
	}
	p.returnAll(b)
	if err := <-done; err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if s := r.a.Stats(); s.DrainedNBLs != 3 || s.HeldNow != 0 {
		t.Errorf("stats %+v", s)
	}
	r.finish(b)
}

// TestPauseDeadlineGivesUp: Pause with a context deadline returns an error
// wrapping ErrDrainTimeout that names the phase, the adapter and the
// holder; the adapter stays Pausing and nothing held is freed: the
// protocol can still read its NBLs and return them later.
func TestPauseDeadlineGivesUp(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{WatchdogInterval: time.Hour, OnHeld: func(ndisshim.HeldReport) {}})
	b, p := r.open("hoststack")
	r.restart()
	if _, err := r.m.indicateN(2, false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := r.a.Pause(ctx)
	if !errors.Is(err, ndisshim.ErrDrainTimeout) {
		t.Fatalf("Pause past its deadline: %v", err)
	}
	for _, want := range []string{"pause of adapter tm0", "2 receive indications held by hoststack, oldest "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if st := r.a.State(); st != ndisshim.StatePausing {
		t.Errorf("state after giving up: %s, want Pausing", st)
	}
	if h := r.a.Stats().HeldNow; h != 2 || r.m.pool.InUse() != 64 {
		t.Errorf("after giving up: held %d, pool in use %d", h, r.m.pool.InUse())
	}
	held := p.take(2)
	for i, n := range held {
		if got := n.Bytes(); len(got) != 8 || got[0] != byte(i+1) {
			t.Errorf("held NBL %d no longer has its data: %x", i, got)
		}
	}
	b.ReturnNetBufferLists(ndisshim.Chain(held...), 0)
	if c := r.m.counts(); c.returned != 2 || r.a.Stats().HeldNow != 0 {
		t.Errorf("late return after giving up: handler saw %d, held %d", c.returned, r.a.Stats().HeldNow)
	}
	r.m.checkExactlyOnce(t)
	if st := r.a.State(); st != ndisshim.StatePausing {
		t.Errorf("state after the late return: %s", st)
	}
	// Pausing cannot reach Halted; the forced exit is Shutdown.
	if err := r.a.Shutdown(ndisshim.ShutdownBugCheck); err != nil {
		t.Fatal(err)
	}
	verifierError(t, r.d.Deregister(), "unload of driver fakemp", ndisshim.FindAdapterNotHalted)
}

// TestWatchdogLogsWithoutOnHeld: with no OnHeld the reports go to the
// driver's logger at Warn level, naming the adapter and the holder.
func TestWatchdogLogsWithoutOnHeld(t *testing.T) {
	var buf shimtest.SyncBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	d, err := ndisshim.RegisterMiniportDriver(ndisshim.Characteristics{Name: "fakemp", InitializeEx: fakeInitialize}, log)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, d: d, found: &findingLog{}}
	r.addAdapter("tm0", &fakeConfig{}, ndisshim.AdapterOptions{WatchdogInterval: 5 * time.Millisecond})
	b, p := r.open("hoststack")
	r.restart()
	if _, err := r.m.indicateN(1, false); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.a.Pause(context.Background()) }()
	shimtest.WaitFor(t, "a watchdog log line", func() bool { return strings.Contains(buf.String(), "pause: waiting") })
	p.returnAll(b)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	line := buf.String()
	for _, want := range []string{"level=WARN", "driver=fakemp", "adapter=tm0", "1 receive indications held by hoststack"} {
		if !strings.Contains(line, want) {
			t.Errorf("log %q does not say %q", line, want)
		}
	}
	r.finish(b)
}

// TestHeldReportEmpty: nothing held reads as such.
func TestHeldReportEmpty(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	h := r.a.HeldReport("halt", time.Now())
	if h.Total() != 0 || h.String() != "nothing held" || h.Phase != "halt" || h.Adapter != "tm0" {
		t.Errorf("empty report %+v %q", h, h.String())
	}
	r.finish()
}
