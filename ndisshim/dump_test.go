package ndisshim_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// TestDumpNamesEverything: a running adapter with one binding holding 3
// NBLs, an armed periodic timer that has fired, the interrupt, the pool,
// the memory, the device, the port and a verifier finding: the dump names
// each, and its text says it in the words an operator greps for.
func TestDumpNamesEverything(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	b, p := r.open("hoststack")
	r.restart()
	if _, err := r.m.indicateN(3, false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.timer.Set(time.Millisecond, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.m.timer.Fired() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	// A double return: a finding made on the fly.
	one := p.take(1)
	b.ReturnNetBufferLists(ndisshim.Chain(one...), 0)
	b.ReturnNetBufferLists(ndisshim.Chain(one...), 0)

	d := r.a.Dump()
	if d.Adapter != "tm0" || d.State != ndisshim.StateRunning || d.Removed || d.Shutdown {
		t.Errorf("dump header: %+v", d)
	}
	if d.Stats.HeldNow != 2 || d.Held.Total() != 2 || len(d.Held.Held) != 1 || d.Held.Held[0].Holder != "hoststack" || d.Held.Held[0].Oldest <= 0 {
		t.Errorf("held: stats %+v, report %+v; want 2 held by hoststack with an age", d.Stats, d.Held)
	}
	if len(d.Bindings) != 1 || d.Bindings[0] != "hoststack" {
		t.Errorf("bindings %v", d.Bindings)
	}
	if len(d.Owners) != 2 || d.Owners[0].Owner != "adapter tm0" || d.Owners[1].Owner != "binding hoststack" {
		t.Fatalf("owners %+v", d.Owners)
	}
	o := d.Owners[0]
	if len(o.Timers) != 1 || o.Timers[0].Name != "fake-watchdog" || !o.Timers[0].Armed || o.Timers[0].Period != time.Millisecond || o.Timers[0].Fired < 2 {
		t.Errorf("timers %+v", o.Timers)
	}
	if len(o.Interrupts) != 1 || o.Interrupts[0].Name != "fake-rx" || o.Interrupts[0].Ended || !strings.Contains(o.Interrupts[0].Where, "fake_test.go") {
		t.Errorf("interrupts %+v", o.Interrupts)
	}
	// The fake keeps every NBL allocated from its pool (its own free list).
	if len(o.Pools) != 1 || o.Pools[0].Size != 64 || o.Pools[0].InUse != 64 || !strings.Contains(o.Pools[0].Name, `"FkRx"`) {
		t.Errorf("pools %+v", o.Pools)
	}
	if len(o.Tagged) != 1 || o.Tagged[0].Tag.String() != "FkTg" || o.Tagged[0].Bytes != 256 || o.SharedBlocks != 1 || o.SharedBytes != 64*128 {
		t.Errorf("memory: tagged %+v, shared %d blocks %d bytes", o.Tagged, o.SharedBlocks, o.SharedBytes)
	}
	if len(o.Devices) != 1 || o.Devices[0] != "fakehw-tm0" || len(o.Ports) != 1 {
		t.Errorf("devices %v, ports %v", o.Devices, o.Ports)
	}
	if len(d.Findings) != 1 || d.Findings[0].Kind != ndisshim.FindDoubleReturn {
		t.Errorf("findings %v, want the double return", d.Findings)
	}
	text := d.String()
	for _, want := range []string{
		"adapter tm0: state Running, removed no, shutdown no",
		"2 receive NBLs held by protocols now",
		"held: 2 receive indications held by hoststack, oldest ",
		"bindings: hoststack",
		`timer "fake-watchdog": armed, period 1ms, fired `,
		`interrupt "fake-rx": running, registered at `,
		`NBL pool "FkRx" of adapter tm0: 64 of 64 in use`,
		"shared memory: 1 block(s), 8192 bytes",
		"tagged memory: FkTg 1 allocation(s), 256 bytes",
		"devices: fakehw-tm0",
		"  binding hoststack:\n    nothing allocated\n",
		"verifier: 1 finding(s) so far\n    double return: ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("dump text lacks %q:\n%s", want, text)
		}
	}

	p.returnAll(b)
	r.pause()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
		t.Fatal(err)
	}
	d = r.a.Dump()
	if d.State != ndisshim.StateHalted || len(d.Bindings) != 0 || len(d.Owners) != 1 || len(d.Owners[0].Timers) != 0 || len(d.Owners[0].Pools) != 0 {
		t.Errorf("dump after halt: %+v", d)
	}
	if !strings.Contains(d.String(), "adapter tm0:\n    nothing allocated\n") {
		t.Errorf("dump after halt:\n%s", d)
	}
	verifierError(t, r.d.Deregister(), "unload of driver fakemp", ndisshim.FindDoubleReturn)
}

// TestDumpDoesNotWaitForPause: while Pause waits for held NBLs, a dump
// returns at once and says Pausing and what is held.
func TestDumpDoesNotWaitForPause(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{WatchdogInterval: time.Hour, OnHeld: func(ndisshim.HeldReport) {}})
	b, p := r.open("hoststack")
	r.restart()
	if _, err := r.m.indicateN(5, false); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.a.Pause(context.Background()) }()
	deadline := time.Now().Add(5 * time.Second)
	for r.a.State() != ndisshim.StatePausing && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	got := make(chan ndisshim.Dump, 1)
	go func() { got <- r.a.Dump() }()
	select {
	case d := <-got:
		if d.State != ndisshim.StatePausing || d.Held.Total() != 5 {
			t.Errorf("dump during pause: state %s, held %s", d.State, d.Held)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Dump blocked while Pause waited")
	}
	p.returnAll(b)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	r.finish(b)
}

// TestDumpWhileTrafficFlows: dumps taken on another goroutine while the DPC
// indicates and the protocol returns (run under -race) see consistent
// numbers and disturb nothing.
func TestDumpWhileTrafficFlows(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	b, p := r.open("hoststack")
	r.restart()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			d := r.a.Dump()
			if d.Held.Total() < 0 || int64(d.Held.Total()) > 64 || d.Stats.HeldNow > 64 {
				t.Errorf("dump: held %d, stats %+v", d.Held.Total(), d.Stats)
				return
			}
			_ = d.String()
		}
	}()
	for i := 0; i < 200; i++ {
		r.m.allowRx(16)
		deadline := time.Now().Add(5 * time.Second)
		for p.heldCount() < 16 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Microsecond)
		}
		p.returnAll(b)
	}
	close(stop)
	wg.Wait()
	r.m.checkExactlyOnce(t)
	r.finish(b)
}
