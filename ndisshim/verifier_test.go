package ndisshim_test

import (
	"context"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// checkWhere asserts that a finding points at a line of the given test file.
func checkWhere(t *testing.T, f ndisshim.Finding, file string) {
	t.Helper()
	if !strings.Contains(f.Where, "ndisshim/"+file+":") {
		t.Errorf("finding %q: Where is %q, want a line of %s", f, f.Where, file)
	}
}

// TestVerifierHaltLeaks: a miniport whose HaltEx forgets one resource gets
// a *VerifierError from Halt naming it (kind, object, where it was
// allocated, how old), the adapter is Halted anyway, and the driver's
// unload reports it again.
func TestVerifierHaltLeaks(t *testing.T) {
	cases := []struct {
		name   string
		f      faults
		kind   ndisshim.FindingKind
		object string
		detail string
	}{
		{"leaked NBL pool", faults{leakPool: true}, ndisshim.FindLivePool, `NBL pool "FkRx" of adapter tm0`, "64 of 64 NBLs allocated"},
		{"timer not freed", faults{keepTimer: true}, ndisshim.FindLiveTimer, `timer "fake-watchdog"`, ""},
		{"interrupt not deregistered", faults{keepInterrupt: true}, ndisshim.FindLiveInterrupt, `interrupt "fake-rx"`, ""},
		{"tagged memory", faults{keepTagged: true}, ndisshim.FindTaggedMemory, "256 bytes tagged FkTg", ""},
		{"shared memory", faults{keepShared: true}, ndisshim.FindSharedMemory, "8192 bytes of shared memory", ""},
		{"port", faults{keepPort: true}, ndisshim.FindPortNotFreed, "port 1", ""},
		{"device registration", faults{keepDevice: true}, ndisshim.FindDeviceRegistered, `device "fakehw-tm0"`, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, &fakeConfig{faults: c.f}, ndisshim.AdapterOptions{})
			b, _ := r.open("p1")
			r.restart()
			r.pause()
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			err := r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled)
			f := verifierError(t, err, "halt of adapter tm0", c.kind)
			var ve *ndisshim.VerifierError
			errors.As(err, &ve)
			if len(ve.Findings) != 1 {
				t.Errorf("want exactly one finding, got %v", ve.Findings)
			}
			if f.Object != c.object || f.Detail != c.detail {
				t.Errorf("finding %q: object %q detail %q, want %q %q", f, f.Object, f.Detail, c.object, c.detail)
			}
			checkWhere(t, f, "fake_test.go")
			if f.Age <= 0 {
				t.Errorf("finding %q has no age", f)
			}
			if !strings.HasPrefix(err.Error(), "verifier: 1 finding(s) at halt of adapter tm0\n  "+string(c.kind)+": "+c.object+" (held ") {
				t.Errorf("error text %q", err)
			}
			if st := r.a.State(); st != ndisshim.StateHalted {
				t.Errorf("state after a halt with findings: %s", st)
			}
			if got := findingOf(t, r.found.get(), c.kind); got.Object != f.Object {
				t.Errorf("OnFinding saw %q, Halt said %q", got, f)
			}
			uf := verifierError(t, r.d.Deregister(), "unload of driver fakemp", c.kind)
			if uf.Object != f.Object {
				t.Errorf("unload reports %q, halt reported %q", uf, f)
			}
		})
	}
}

// TestVerifierPoolFreedInUse: a HaltEx that frees its NBL pool before the
// NBLs gets ErrPoolInUse, the pool stays (no NBL memory is handed back),
// and the unload reports the attempt with where it was made.
func TestVerifierPoolFreedInUse(t *testing.T) {
	r := newRig(t, &fakeConfig{faults: faults{freePoolFirst: true}}, ndisshim.AdapterOptions{})
	if err := r.m.pool.Free(); !errors.Is(err, ndisshim.ErrPoolInUse) || !strings.Contains(err.Error(), "64 NBLs still allocated") {
		t.Errorf("pool.Free with 64 NBLs out: %v", err)
	}
	if err := r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
		t.Fatalf("Halt (the miniport did free everything in the end): %v", err)
	}
	f := verifierError(t, r.d.Deregister(), "unload of driver fakemp", ndisshim.FindPoolFreedInUse)
	if f.Object != `NBL pool "FkRx" of adapter tm0` || f.Detail != "64 NBLs still allocated" {
		t.Errorf("finding %q", f)
	}
	n := 0
	for _, f := range r.found.get() {
		if f.Kind == ndisshim.FindPoolFreedInUse {
			n++
			if !strings.Contains(f.Where, "_test.go:") {
				t.Errorf("finding %q does not point at the faulty free", f)
			}
		}
	}
	if n != 2 { // the test's own attempt and HaltEx's
		t.Errorf("%d pool-freed-in-use findings, want 2", n)
	}
}

// TestVerifierDoubleReturn: a protocol returns an NBL, then returns it
// again in a chain with one it does hold. The double is a finding naming
// the NBL and the binding and is dropped from the chain; the miniport sees
// each NBL exactly once. A return of NBLs indicated with RESOURCES is a
// double return too.
func TestVerifierDoubleReturn(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	b, p := r.open("p1")
	r.restart()
	if _, err := r.m.indicateN(2, false); err != nil {
		t.Fatal(err)
	}
	held := p.take(2)
	b.ReturnNetBufferLists(ndisshim.Chain(held[0]), 0)
	b.ReturnNetBufferLists(ndisshim.Chain(held[0], held[1]), 0)
	res, err := r.m.indicateN(1, true)
	if err != nil {
		t.Fatal(err)
	}
	b.ReturnNetBufferLists(ndisshim.Chain(res...), 0)

	fs := r.found.get()
	if len(fs) != 2 {
		t.Fatalf("findings %v, want two double returns", fs)
	}
	for i, want := range []*ndisshim.NetBufferList{held[0], res[0]} {
		f := fs[i]
		if f.Kind != ndisshim.FindDoubleReturn || !strings.Contains(f.Object, "NBL "+strconv.Itoa(want.Index())+` of NBL pool "FkRx"`) || !strings.Contains(f.Detail, "by binding p1") {
			t.Errorf("finding %d: %q", i, f)
		}
		checkWhere(t, f, "verifier_test.go")
	}
	r.m.checkExactlyOnce(t)
	if c := r.m.counts(); c.returned != 2 || r.a.Stats().HeldNow != 0 {
		t.Errorf("return handler saw %d NBLs, shim holds %d", c.returned, r.a.Stats().HeldNow)
	}
	r.pause()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
		t.Fatal(err)
	}
	verifierError(t, r.d.Deregister(), "unload of driver fakemp", ndisshim.FindDoubleReturn)
	if bad := r.m.problems(); len(bad) > 0 {
		t.Errorf("miniport saw %q", bad)
	}
}

// TestVerifierForeignReturnOtherAdapter: a binding returns an NBL that
// another adapter indicated (and an NBL from no pool at all): foreign
// returns; neither miniport's return handler sees it, and the rightful
// holder can still return it.
func TestVerifierForeignReturnOtherAdapter(t *testing.T) {
	d, found := newDriver(t)
	r0 := &rig{t: t, d: d, found: found}
	r0.addAdapter("tm0", &fakeConfig{}, ndisshim.AdapterOptions{})
	r1 := &rig{t: t, d: d, found: found}
	r1.addAdapter("tm1", &fakeConfig{}, ndisshim.AdapterOptions{})
	b0, _ := r0.open("A")
	b1, p1 := r1.open("B")
	r0.restart()
	r1.restart()
	if _, err := r1.m.indicateN(1, false); err != nil {
		t.Fatal(err)
	}
	x := p1.take(1)[0]
	b0.ReturnNetBufferLists(x, 0)
	b0.ReturnNetBufferLists(&ndisshim.NetBufferList{}, 0)
	fs := found.get()
	if len(fs) != 2 {
		t.Fatalf("findings %v, want two foreign returns", fs)
	}
	if f := fs[0]; f.Kind != ndisshim.FindForeignReturn || !strings.Contains(f.Object, "of adapter tm1") || f.Detail != "not indicated by adapter tm0 by binding A" {
		t.Errorf("finding %q", f)
	}
	if f := fs[1]; f.Kind != ndisshim.FindForeignReturn || f.Object != "NBL not from any pool" {
		t.Errorf("finding %q", f)
	}
	checkWhere(t, fs[0], "verifier_test.go")
	if r0.m.counts().returned != 0 || r1.m.counts().returned != 0 || r1.a.Stats().HeldNow != 1 {
		t.Fatalf("foreign return reached a return handler: tm0 %d, tm1 %d, tm1 held %d", r0.m.counts().returned, r1.m.counts().returned, r1.a.Stats().HeldNow)
	}
	b1.ReturnNetBufferLists(x, 0)
	r1.m.checkExactlyOnce(t)
	for _, x := range []struct {
		r *rig
		b *ndisshim.Binding
	}{{r0, b0}, {r1, b1}} {
		x.r.pause()
		if err := x.b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := x.r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
			t.Fatal(err)
		}
	}
	verifierError(t, d.Deregister(), "unload of driver fakemp", ndisshim.FindForeignReturn)
}

// TestVerifierForeignReturnOtherBinding: with two bindings the last owns
// the NBLs; the first returning one is a foreign return ("indicated to
// another binding"), the miniport does not see it, and the pause waits for
// the rightful return.
func TestVerifierForeignReturnOtherBinding(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	bFirst, _ := r.open("first")
	bLast, pLast := r.open("last")
	r.restart()
	if _, err := r.m.indicateN(2, false); err != nil {
		t.Fatal(err)
	}
	held := pLast.take(2)
	bFirst.ReturnNetBufferLists(ndisshim.Chain(held...), 0)
	fs := r.found.get()
	if len(fs) != 2 {
		t.Fatalf("findings %v, want two foreign returns", fs)
	}
	for _, f := range fs {
		if f.Kind != ndisshim.FindForeignReturn || f.Detail != "indicated to another binding by binding first" {
			t.Errorf("finding %q", f)
		}
		checkWhere(t, f, "verifier_test.go")
	}
	if r.m.counts().returned != 0 || r.a.Stats().HeldNow != 2 {
		t.Fatalf("foreign return reached the miniport (%d) or the count (%d held)", r.m.counts().returned, r.a.Stats().HeldNow)
	}
	h := r.a.HeldReport("check", time.Now())
	if len(h.Held) != 1 || h.Held[0].Holder != "last" || h.Held[0].Count != 2 {
		t.Errorf("held report %v, want 2 held by last", h)
	}
	bLast.ReturnNetBufferLists(ndisshim.Chain(held...), 0)
	r.m.checkExactlyOnce(t)
	r.pause()
	for _, b := range []*ndisshim.Binding{bFirst, bLast} {
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
		t.Fatal(err)
	}
	verifierError(t, r.d.Deregister(), "unload of driver fakemp", ndisshim.FindForeignReturn)
}

// TestVerifierSendCompletions: a miniport that completes a send twice (the
// second time in a chain with a legitimate one), or completes an NBL it was
// never sent: findings, dropped from the chain; the protocol sees each of
// its NBLs completed exactly once.
func TestVerifierSendCompletions(t *testing.T) {
	r := newRig(t, &fakeConfig{faults: faults{holdSends: true}}, ndisshim.AdapterOptions{})
	b, p := r.open("p1")
	nbls, send := sendPool(t, b, 3)
	r.restart()
	send(ndisshim.Chain(nbls[0], nbls[1]))
	q := r.m.takeQueued()
	r.a.SendNetBufferListsComplete(ndisshim.Chain(q[0]), 0)
	r.a.SendNetBufferListsComplete(ndisshim.Chain(q[0], q[1]), 0)
	r.a.SendNetBufferListsComplete(ndisshim.Chain(nbls[2]), 0) // never sent
	fs := r.found.get()
	if len(fs) != 2 {
		t.Fatalf("findings %v, want a double and a foreign completion", fs)
	}
	if f := fs[0]; f.Kind != ndisshim.FindDoubleComplete || !strings.Contains(f.Object, `NBL 0 of NBL pool "FkTx" of binding p1`) {
		t.Errorf("finding %q", f)
	}
	if f := fs[1]; f.Kind != ndisshim.FindForeignComplete || f.Detail != "not sent through adapter tm0" {
		t.Errorf("finding %q", f)
	}
	checkWhere(t, fs[0], "verifier_test.go")
	p.mu.Lock()
	for i, n := range nbls {
		want := 1
		if i == 2 {
			want = 0
		}
		if got := len(p.statuses[n]); got != want {
			t.Errorf("NBL %d completed %d times, want %d", i, got, want)
		}
	}
	p.mu.Unlock()
	if s := r.a.Stats().SendsNow; s != 0 {
		t.Errorf("SendsNow %d", s)
	}
	r.pause()
	freeSendPool(t, b, nbls)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
		t.Fatal(err)
	}
	err := r.d.Deregister()
	verifierError(t, err, "unload of driver fakemp", ndisshim.FindDoubleComplete)
	verifierError(t, err, "unload of driver fakemp", ndisshim.FindForeignComplete)
}

// TestVerifierCallAfterHalt: a miniport that leaves its interrupt
// registered gets that finding from Halt; when the interrupt then fires,
// its DPC's IndicateReceive, IndicateStatus and AllocateTagged are calls
// after halt: refused (ErrHalted), each a finding naming the call and
// where it was made. The bound protocol sees nothing.
func TestVerifierCallAfterHalt(t *testing.T) {
	type late struct {
		indicate, alloc error
	}
	lateCh := make(chan late, 1)
	cfg := &fakeConfig{faults: faults{keepInterrupt: true}}
	var stale *ndisshim.NetBufferList
	cfg.onDPC = func() {
		m := cfg.mp
		var l late
		l.indicate = m.a.IndicateReceive(stale, ndisshim.DefaultPort, 1, 0)
		m.a.IndicateStatus(ndisshim.StatusIndication{Code: ndisshim.StatusLinkState, Data: ndisshim.LinkState{Connected: true}})
		_, l.alloc = m.a.AllocateTagged(16, ndisshim.MakeTag("Late"))
		lateCh <- l
	}
	r := newRig(t, cfg, ndisshim.AdapterOptions{})
	stale = r.m.pool.NBL(0)
	b, p := r.open("p1")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	err := r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled)
	verifierError(t, err, "halt of adapter tm0", ndisshim.FindLiveInterrupt)
	r.m.src.kick()
	l := <-lateCh
	if !errors.Is(l.indicate, ndisshim.ErrHalted) || !errors.Is(l.alloc, ndisshim.ErrHalted) {
		t.Errorf("late IndicateReceive: %v; late AllocateTagged: %v; want ErrHalted", l.indicate, l.alloc)
	}
	var calls []string
	for _, f := range r.found.get() {
		if f.Kind == ndisshim.FindCallAfterHalt {
			calls = append(calls, f.Detail)
			checkWhere(t, f, "verifier_test.go")
		}
	}
	if got := strings.Join(calls, ","); got != "IndicateReceive,IndicateStatus,AllocateTagged" {
		t.Errorf("calls after halt found: %s", got)
	}
	if len(p.calls()) != 0 || len(p.status) != 0 {
		t.Errorf("protocol saw late calls")
	}
	if h := r.a.Stats().HeldNow; h != 0 {
		t.Errorf("refused late indication left %d counted", h)
	}
	uerr := r.d.Deregister()
	verifierError(t, uerr, "unload of driver fakemp", ndisshim.FindCallAfterHalt)
	verifierError(t, uerr, "unload of driver fakemp", ndisshim.FindLiveInterrupt)
}

// TestVerifierFailedInitialize: an InitializeEx that fails and leaves its
// interrupt and tagged memory behind: AddAdapter's error wraps the
// miniport's error and a *VerifierError naming exactly those two; the
// unload reports them again.
func TestVerifierFailedInitialize(t *testing.T) {
	d, _ := newDriver(t)
	cfg := &fakeConfig{faults: faults{failInit: true}}
	t.Cleanup(func() { cfg.mp.forceRelease() })
	a, err := d.AddAdapter(ndisshim.InitParameters{Name: "tm0", Config: cfg}, ndisshim.AdapterOptions{})
	if a != nil || !errors.Is(err, errInitFailed) {
		t.Fatalf("AddAdapter: %v, %v; want the init error", a, err)
	}
	var ve *ndisshim.VerifierError
	if !errors.As(err, &ve) || len(ve.Findings) != 2 {
		t.Fatalf("AddAdapter error %v: want a VerifierError with two findings", err)
	}
	verifierError(t, err, "failed initialize of adapter tm0", ndisshim.FindLiveInterrupt)
	f := verifierError(t, err, "failed initialize of adapter tm0", ndisshim.FindTaggedMemory)
	checkWhere(t, f, "fake_test.go")
	cfg.mp.forceRelease()
	uerr := d.Deregister()
	verifierError(t, uerr, "unload of driver fakemp", ndisshim.FindLiveInterrupt)
	verifierError(t, uerr, "unload of driver fakemp", ndisshim.FindTaggedMemory)
}

// TestVerifierProtocolLeaks: a protocol that closes its binding with a
// send pool, tagged memory and a timer still allocated gets a
// *VerifierError from Close naming each.
func TestVerifierProtocolLeaks(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	b, _ := r.open("p1")
	pool, err := b.AllocateNBLPool(ndisshim.NBLPoolParams{Tag: ndisshim.MakeTag("PrTx"), Count: 4})
	if err != nil {
		t.Fatal(err)
	}
	nbl := pool.Allocate()
	mem, err := b.AllocateTagged(100, ndisshim.MakeTag("PrMm"))
	if err != nil {
		t.Fatal(err)
	}
	tm, err := b.AllocateTimer("proto-retry", func() {})
	if err != nil {
		t.Fatal(err)
	}
	cerr := b.Close()
	f := verifierError(t, cerr, "close of binding p1", ndisshim.FindLivePool)
	if f.Object != `NBL pool "PrTx" of binding p1` || f.Detail != "1 of 4 NBLs allocated" {
		t.Errorf("finding %q", f)
	}
	checkWhere(t, f, "verifier_test.go")
	verifierError(t, cerr, "close of binding p1", ndisshim.FindTaggedMemory)
	verifierError(t, cerr, "close of binding p1", ndisshim.FindLiveTimer)
	pool.FreeNBL(nbl)
	if err := pool.Free(); err != nil {
		t.Error(err)
	}
	b.FreeTagged(mem)
	tm.Free()
	if err := r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
		t.Fatal(err)
	}
	verifierError(t, r.d.Deregister(), "unload of driver fakemp", ndisshim.FindLivePool)
}

// TestVerifierAdapterNotHaltedAtUnload: unloading a driver with a live
// adapter is a finding naming the adapter and its state.
func TestVerifierAdapterNotHaltedAtUnload(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	f := verifierError(t, r.d.Deregister(), "unload of driver fakemp", ndisshim.FindAdapterNotHalted)
	if f.Object != "adapter tm0" || f.Detail != "state Paused" {
		t.Errorf("finding %q", f)
	}
	if err := r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
		t.Errorf("Halt after unload: %v", err)
	}
}

// TestVerifierBadFrees: freeing tagged memory twice, an empty slice,
// shared memory twice, a timer twice, a device twice and an NBL to the
// wrong pool or twice are findings; none corrupts anything.
func TestVerifierBadFrees(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	a := r.a
	tagged, _ := a.AllocateTagged(8, ndisshim.MakeTag("Twic"))
	a.FreeTagged(tagged)
	a.FreeTagged(tagged)
	a.FreeTagged(nil)
	sm, err := a.AllocateSharedMemory(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(sm.Bytes) != 10 || cap(sm.Bytes) != 10 {
		t.Errorf("shared memory of 10 bytes has len %d cap %d", len(sm.Bytes), cap(sm.Bytes))
	}
	sm.Bytes[9] = 1
	if err := sm.Free(); err != nil {
		t.Fatal(err)
	}
	if err := sm.Free(); err == nil || !strings.Contains(err.Error(), "freed twice") {
		t.Errorf("second shared memory Free: %v", err)
	}
	tm, _ := a.AllocateTimer("twice", func() {})
	tm.Free()
	tm.Free()
	dev, _ := a.RegisterDevice("twice")
	dev.Release()
	dev.Release()
	other, _ := a.AllocateNBLPool(ndisshim.NBLPoolParams{Tag: ndisshim.MakeTag("Othr"), Count: 1})
	n := other.Allocate()
	r.m.pool.FreeNBL(n)                   // wrong pool
	r.m.pool.FreeChain(ndisshim.Chain(n)) // wrong pool, as a chain
	other.FreeNBL(n)
	other.FreeNBL(n) // twice
	if err := other.Free(); err != nil {
		t.Fatal(err)
	}
	if err := other.Free(); err == nil {
		t.Error("pool freed twice without an error")
	}
	var details []string
	for _, f := range r.found.get() {
		if f.Kind != ndisshim.FindBadFree {
			t.Errorf("unexpected finding %q", f)
		}
		checkWhere(t, f, "verifier_test.go")
		details = append(details, f.Object+": "+f.Detail)
	}
	if len(details) != 8 {
		t.Errorf("bad frees found: %q, want 8", details)
	}
	for _, want := range []string{"not allocated here or freed twice", "empty slice", "shared memory", `timer "twice": freed twice`,
		`device "twice": released twice`, `not its own pool`, "freed while free"} {
		if !strings.Contains(strings.Join(details, "\n"), want) {
			t.Errorf("no finding says %q among %q", want, details)
		}
	}
	if err := a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
		t.Fatal(err)
	}
	verifierError(t, r.d.Deregister(), "unload of driver fakemp", ndisshim.FindBadFree)
}

// takeFree takes n receive NBLs off the fake miniport's free list and
// marks them out, as if its DPC were about to indicate them.
func (r *rig) takeFree(n int) []*ndisshim.NetBufferList {
	r.t.Helper()
	m := r.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.free) < n {
		r.t.Fatalf("fake miniport has %d free NBLs, want %d", len(m.free), n)
	}
	out := append([]*ndisshim.NetBufferList(nil), m.free[len(m.free)-n:]...)
	m.free = m.free[:len(m.free)-n]
	for _, x := range out {
		m.seq++
		binary.LittleEndian.PutUint64(x.FirstNB.Data, m.seq)
		x.FirstNB.SetBytes(0, 8)
		m.out[x] = true
		m.indicatedIdx[x.Index()]++
		m.indicated++
	}
	return out
}

// TestVerifierRefusesDoubleIndication: an NBL indicated again while the
// protocol still holds it is a finding and is not passed up again: the
// protocol sees it once, returns it once, the miniport gets it back once,
// and the adapter pauses and halts with nothing held.
func TestVerifierRefusesDoubleIndication(t *testing.T) {
	r := newRig(t, &fakeConfig{}, ndisshim.AdapterOptions{})
	b, p := r.open("p1")
	r.restart()
	x := r.takeFree(2)
	if err := r.a.IndicateReceive(ndisshim.Chain(x[0], x[1]), ndisshim.DefaultPort, 2, 0); err != nil {
		t.Fatal(err)
	}
	// x[1] again, in a chain with nothing else, then behind a fresh NBL.
	y := r.takeFree(1)
	if err := r.a.IndicateReceive(ndisshim.Chain(x[1]), ndisshim.DefaultPort, 1, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.a.IndicateReceive(ndisshim.Chain(y[0], x[1]), ndisshim.DefaultPort, 2, 0); err != nil {
		t.Fatal(err)
	}
	calls := p.calls()
	if len(calls) != 2 || calls[1].count != 1 {
		t.Fatalf("protocol saw %d indications (%+v), want 2: [x0 x1], then [y0] without the refused x1", len(calls), calls)
	}
	if got := p.heldCount(); got != 3 {
		t.Errorf("protocol holds %d NBLs, want 3 (x0, x1, y0)", got)
	}
	if s := r.a.Stats().HeldNow; s != 3 {
		t.Errorf("HeldNow %d, want 3 (the refused indications not counted)", s)
	}
	p.returnAll(b)
	if s := r.a.Stats().HeldNow; s != 0 {
		t.Errorf("HeldNow %d after the protocol returned everything, want 0", s)
	}
	r.m.mu.Lock()
	back := r.m.returnedIdx[x[1].Index()]
	r.m.mu.Unlock()
	if back != 1 {
		t.Errorf("the miniport got NBL %d back %d times, want once", x[1].Index(), back)
	}
	r.endWithIllegal(b, nil, "not passed up")
}

// endWithIllegal pauses (within 2s: nothing may be left outstanding),
// runs beforeClose if set, closes b, halts and unloads, and checks that
// the verifier reported an illegal indication whose detail says want.
func (r *rig) endWithIllegal(b *ndisshim.Binding, beforeClose func(), want string) {
	t := r.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := r.a.Pause(ctx); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if beforeClose != nil {
		beforeClose()
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
		verifierError(t, err, "halt of adapter tm0", ndisshim.FindIllegalIndication)
	}
	f := verifierError(t, r.d.Deregister(), "driver fakemp", ndisshim.FindIllegalIndication)
	if !strings.Contains(f.Detail, want) {
		t.Errorf("finding %q does not say %q", f.Detail, want)
	}
}

// TestVerifierRefusesDoubleSend: an NBL sent again while the miniport
// still has it is a finding and is not passed down again: the miniport
// sees it once, SendsNow counts it once, and once the miniport completes
// it the adapter pauses with nothing outstanding.
func TestVerifierRefusesDoubleSend(t *testing.T) {
	r := newRig(t, &fakeConfig{faults: faults{holdSends: true}}, ndisshim.AdapterOptions{})
	b, p := r.open("p1")
	nbls, send := sendPool(t, b, 2)
	r.restart()
	send(ndisshim.Chain(nbls[0]))
	send(ndisshim.Chain(nbls[0]))          // alone
	send(ndisshim.Chain(nbls[1], nbls[0])) // behind a fresh one
	if s := r.a.Stats().SendsNow; s != 2 {
		t.Errorf("SendsNow %d, want 2 (the refused sends not counted)", s)
	}
	q := r.m.takeQueued()
	if len(q) != 2 || q[0] != nbls[0] || q[1] != nbls[1] {
		t.Fatalf("the miniport got %d sends, want nbl 0 then nbl 1 once each", len(q))
	}
	for _, n := range q {
		n.Status = ndisshim.StatusSuccess
	}
	r.a.SendNetBufferListsComplete(ndisshim.Chain(q...), 0)
	if s := r.a.Stats().SendsNow; s != 0 {
		t.Errorf("SendsNow %d after the miniport completed both, want 0", s)
	}
	if pr := p.problems(); len(pr) > 0 {
		t.Errorf("protocol problems: %v", pr)
	}
	r.endWithIllegal(b, func() { freeSendPool(t, b, nbls) }, "not passed down")
}
