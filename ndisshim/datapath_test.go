package ndisshim_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

// sendPool allocates n send NBLs from a pool owned by the binding; send
// passes a chain to SendNetBufferLists.
func sendPool(t *testing.T, b *ndisshim.Binding, n int) ([]*ndisshim.NetBufferList, func(*ndisshim.NetBufferList)) {
	t.Helper()
	pool, err := b.AllocateNBLPool(ndisshim.NBLPoolParams{Tag: ndisshim.MakeTag("FkTx"), Count: n, WithNB: true})
	if err != nil {
		t.Fatal(err)
	}
	nbls := make([]*ndisshim.NetBufferList, n)
	if got := pool.AllocateBatch(nbls); got != n {
		t.Fatalf("allocated %d of %d send NBLs", got, n)
	}
	for _, x := range nbls {
		x.FirstNB.Data = make([]byte, 64)
		x.FirstNB.SetBytes(0, 60)
	}
	return nbls, func(c *ndisshim.NetBufferList) { b.SendNetBufferLists(c, ndisshim.DefaultPort, 0) }
}

// freeSendPool frees the NBLs sendPool allocated, then their pool.
func freeSendPool(t *testing.T, b *ndisshim.Binding, nbls []*ndisshim.NetBufferList) {
	t.Helper()
	pool := nbls[0].Pool()
	pool.FreeChain(ndisshim.Chain(nbls...))
	if err := pool.Free(); err != nil {
		t.Fatalf("free send pool of %s: %v", b.Name(), err)
	}
}

func newRand(t *testing.T) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", seed)
	return rand.New(rand.NewPCG(seed, seed>>7))
}

// TestPauseWaitsForLateReturns: 96 NBLs in 12 indications are held by the
// protocol; Pause starts waiting; eight goroutines return all but one in
// random order and in random chains that mix indications; Pause must still
// be waiting; the last one comes back from yet another goroutine and only
// then does Pause return. The miniport's return handler has seen every NBL
// exactly once by the time Pause returns.
func TestPauseWaitsForLateReturns(t *testing.T) {
	reports := make(chan ndisshim.HeldReport, 16)
	r := newRig(t, &fakeConfig{poolSize: 96}, ndisshim.AdapterOptions{WatchdogInterval: time.Minute, OnHeld: func(h ndisshim.HeldReport) {
		select {
		case reports <- h:
		default:
		}
	}})
	b, p := r.open("p1")
	r.restart()
	for range 12 {
		if _, err := r.m.indicateN(8, false); err != nil {
			t.Fatal(err)
		}
	}
	held := p.take(96)
	if len(held) != 96 || r.a.Stats().HeldNow != 96 {
		t.Fatalf("protocol holds %d, shim counts %d, want 96", len(held), r.a.Stats().HeldNow)
	}
	rng := newRand(t)
	rng.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })

	type result struct {
		err          error
		returnedSeen int // the return handler's count when Pause returned
	}
	pauseDone := make(chan result, 1)
	go func() {
		err := r.a.Pause(context.Background())
		pauseDone <- result{err, r.m.counts().returned}
	}()
	first := <-reports // Pause is waiting
	if first.Phase != "pause" || first.Total() != 96 {
		t.Fatalf("first watchdog report %+v, want pause with 96 held", first)
	}

	last, rest := held[len(held)-1], held[:len(held)-1]
	var wg sync.WaitGroup
	for g := range 8 {
		lo, hi := g*len(rest)/8, (g+1)*len(rest)/8
		mine := rest[lo:hi]
		seed := rng.Uint64()
		wg.Add(1)
		go func() {
			defer wg.Done()
			rg := rand.New(rand.NewPCG(seed, 1))
			for len(mine) > 0 {
				k := 1 + rg.IntN(min(5, len(mine)))
				time.Sleep(time.Duration(rg.IntN(500)) * time.Microsecond)
				b.ReturnNetBufferLists(ndisshim.Chain(mine[:k]...), 0)
				mine = mine[k:]
			}
		}()
	}
	wg.Wait()
	if got := r.m.counts().returned; got != 95 {
		t.Fatalf("return handler saw %d NBLs, want 95", got)
	}
	select {
	case res := <-pauseDone:
		t.Fatalf("Pause returned (%v) with one NBL still held", res.err)
	default:
	}
	if st, h := r.a.State(), r.a.Stats().HeldNow; st != ndisshim.StatePausing || h != 1 {
		t.Fatalf("with one NBL out: state %s, held %d", st, h)
	}
	go b.ReturnNetBufferLists(ndisshim.Chain(last), 0)
	res := <-pauseDone
	if res.err != nil {
		t.Fatalf("Pause: %v", res.err)
	}
	if res.returnedSeen != 96 {
		t.Errorf("Pause returned when the return handler had seen %d of 96 NBLs", res.returnedSeen)
	}
	r.m.checkExactlyOnce(t)
	s := r.a.Stats()
	if s.HeldNow != 0 || s.PeakHeld != 96 || s.DrainedNBLs != 96 {
		t.Errorf("stats %+v, want HeldNow 0, PeakHeld 96, DrainedNBLs 96", s)
	}
	if c := r.m.counts(); c.free != 96 || c.out != 0 {
		t.Errorf("miniport has %d of 96 NBLs free, %d out", c.free, c.out)
	}
	r.finish(b)
}

// TestResourcesIndicationsNeverReturned: an indication with RESOURCES is
// the miniport's again when IndicateReceive returns: the protocol saw the
// data (and copied it), holds nothing, the shim counts nothing held, and
// the miniport's return handler never sees those NBLs, even when the DPC
// interleaves RESOURCES and normal indications and the protocol returns
// everything it owns.
func TestResourcesIndicationsNeverReturned(t *testing.T) {
	r := newRig(t, &fakeConfig{poolSize: 32, dpcBatch: 4, resourcesEvery: 2}, ndisshim.AdapterOptions{})
	b, p := r.open("p1")
	r.restart()

	nbls, err := r.m.indicateN(4, true)
	if err != nil {
		t.Fatal(err)
	}
	calls := p.calls()
	if len(calls) != 1 || !calls[0].flags.Has(ndisshim.ReceiveFlagResources) || calls[0].count != 4 {
		t.Fatalf("protocol calls %+v, want one RESOURCES indication of 4", calls)
	}
	for i, n := range nbls {
		// The miniport reused the buffer after the call; the copy is intact.
		if got := n.Bytes(); string(got) != string([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) {
			t.Errorf("NBL %d: miniport did not get it back to reuse (%x)", i, got)
		}
		if calls[0].seqs[i] != uint64(i+1) {
			t.Errorf("protocol's copy of NBL %d says %d, want %d", i, calls[0].seqs[i], i+1)
		}
	}
	if p.heldCount() != 0 || r.a.Stats().HeldNow != 0 {
		t.Fatalf("after a RESOURCES indication: protocol holds %d, shim counts %d", p.heldCount(), r.a.Stats().HeldNow)
	}

	// The DPC now alternates normal and RESOURCES batches; the protocol
	// returns what it owns from its own goroutine.
	p.mu.Lock()
	p.onReceive = func(b *ndisshim.Binding, nbls *ndisshim.NetBufferList, count int, flags ndisshim.ReceiveFlags) {
		if !flags.Has(ndisshim.ReceiveFlagResources) {
			go b.ReturnNetBufferLists(nbls, 0)
		}
	}
	p.mu.Unlock()
	r.m.allowRx(400)
	shimtest.WaitFor(t, "the DPC to indicate 400 NBLs", func() bool { return r.m.counts().indicated >= 400 })
	r.pause()
	c := r.m.counts()
	if c.resIndicated < 100 || c.returned != c.indicated || c.free != 32 {
		t.Errorf("counts %+v: want many RESOURCES indications, every normal one returned once, all 32 free", c)
	}
	r.m.checkExactlyOnce(t)
	r.finish(b)
}

// TestSeveralBindings: an indication goes to the bindings in open order;
// all but the last get RESOURCES and hold nothing; the last gets the
// miniport's flags and owns the NBLs (the watchdog names it). A RESOURCES
// indication reaches all of them with RESOURCES. When the last binding
// closes, the one before it becomes the owner.
func TestSeveralBindings(t *testing.T) {
	order := &orderLog{}
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	b1, p1 := r.open("first")
	b2, p2 := r.open("second")
	b3, p3 := r.open("last")
	for _, p := range []*fakeProto{p1, p2, p3} {
		p.order = order
	}
	r.restart()
	if _, err := r.m.indicateN(4, false); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(order.get(), ","); got != "first,second,last" {
		t.Errorf("indication order %s", got)
	}
	for _, p := range []*fakeProto{p1, p2} {
		c := p.calls()
		if len(c) != 1 || !c[0].flags.Has(ndisshim.ReceiveFlagResources) || c[0].count != 4 || p.heldCount() != 0 {
			t.Errorf("%s: calls %+v, holds %d; want one RESOURCES indication of 4 and nothing held", p.name, c, p.heldCount())
		}
	}
	c3 := p3.calls()
	if len(c3) != 1 || c3[0].flags.Has(ndisshim.ReceiveFlagResources) || p3.heldCount() != 4 {
		t.Fatalf("last: calls %+v, holds %d; want the NBLs without RESOURCES", c3, p3.heldCount())
	}
	if c1 := p1.calls(); !slices.Equal(c1[0].seqs, c3[0].seqs) {
		t.Errorf("bindings saw different data: %v and %v", c1[0].seqs, c3[0].seqs)
	}
	h := r.a.HeldReport("check", time.Now())
	if len(h.Held) != 1 || h.Held[0].Holder != "last" || h.Held[0].Count != 4 || h.Held[0].What != "receive indications" {
		t.Errorf("held report %+v, want 4 receive indications held by last", h)
	}
	if n := p3.returnAll(b3); n != 4 || r.m.counts().returned != 4 {
		t.Errorf("last returned %d, handler saw %d", n, r.m.counts().returned)
	}

	if _, err := r.m.indicateN(2, true); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*fakeProto{p1, p2, p3} {
		c := p.calls()
		if len(c) != 2 || !c[1].flags.Has(ndisshim.ReceiveFlagResources) || p.heldCount() != 0 {
			t.Errorf("%s after a RESOURCES indication: calls %+v, holds %d", p.name, c, p.heldCount())
		}
	}

	r.pause()
	if err := b3.Close(); err != nil {
		t.Fatal(err)
	}
	r.restart()
	if _, err := r.m.indicateN(3, false); err != nil {
		t.Fatal(err)
	}
	if p2.heldCount() != 3 || p1.heldCount() != 0 {
		t.Errorf("with last closed: second holds %d, first %d; want 3 and 0", p2.heldCount(), p1.heldCount())
	}
	p2.returnAll(b2)
	r.m.checkExactlyOnce(t)
	for _, p := range []*fakeProto{p1, p2, p3} {
		if bad := p.problems(); len(bad) > 0 {
			t.Errorf("%s: %q", p.name, bad)
		}
	}
	r.finish(b1, b2)
}

// TestIndicateReadiness: indications are refused (and the count undone)
// while Paused, and with no binding; they are accepted while Pausing until
// PauseEx returns, and Pause waits for those too.
func TestIndicateReadiness(t *testing.T) {
	var inPause error
	cfg := &fakeConfig{}
	r := newRig(t, cfg, ndisshim.AdapterOptions{})

	if _, err := r.m.indicateN(2, false); !errors.Is(err, ndisshim.ErrNotReady) {
		t.Errorf("indicate while Paused: %v, want ErrNotReady", err)
	}
	r.restart()
	if _, err := r.m.indicateN(2, false); !errors.Is(err, ndisshim.ErrNoBinding) {
		t.Errorf("indicate with no binding: %v, want ErrNoBinding", err)
	}
	if h := r.a.Stats().HeldNow; h != 0 {
		t.Fatalf("refused indications left %d counted", h)
	}
	r.pause()
	b, p := r.open("p1")
	cfg.onPause = func() {
		// Pausing, before PauseEx returns: a last indication is legal.
		_, inPause = r.m.indicateN(2, false)
	}
	p.mu.Lock()
	p.onReceive = func(b *ndisshim.Binding, nbls *ndisshim.NetBufferList, count int, flags ndisshim.ReceiveFlags) {
		go func() {
			time.Sleep(5 * time.Millisecond)
			b.ReturnNetBufferLists(nbls, 0)
		}()
	}
	p.mu.Unlock()
	r.restart()
	r.pause()
	if inPause != nil {
		t.Errorf("indicate inside PauseEx: %v", inPause)
	}
	if c := r.m.counts(); c.indicated != 2 || c.returned != 2 {
		t.Errorf("Pause returned with %+v; want the 2 indicated in PauseEx back", c)
	}
	if _, err := r.m.indicateN(1, false); !errors.Is(err, ndisshim.ErrNotReady) {
		t.Errorf("indicate after PauseEx: %v, want ErrNotReady", err)
	}
	r.finish(b)
}

// TestSendsCompletedToTheRightBinding: two bindings send; the miniport
// completes all five NBLs in one mixed chain; each binding gets back its
// own NBLs, in runs, with the statuses the miniport set.
func TestSendsCompletedToTheRightBinding(t *testing.T) {
	r := newRig(t, &fakeConfig{faults: faults{holdSends: true}}, ndisshim.AdapterOptions{})
	bA, pA := r.open("A")
	bB, pB := r.open("B")
	as, sendA := sendPool(t, bA, 3)
	bs, sendB := sendPool(t, bB, 2)
	r.restart()
	sendA(ndisshim.Chain(as[0], as[1]))
	sendB(ndisshim.Chain(bs[0]))
	sendA(ndisshim.Chain(as[2]))
	sendB(ndisshim.Chain(bs[1]))
	if s := r.a.Stats().SendsNow; s != 5 {
		t.Fatalf("SendsNow %d, want 5", s)
	}
	h := r.a.HeldReport("check", time.Now())
	if len(h.Held) != 1 || h.Held[0].Holder != "miniport tm0" || h.Held[0].What != "sends" || h.Held[0].Count != 5 {
		t.Errorf("held report %+v, want 5 sends held by miniport tm0", h)
	}
	q := r.m.takeQueued()
	if len(q) != 5 {
		t.Fatalf("miniport queued %d sends", len(q))
	}
	want := map[*ndisshim.NetBufferList]ndisshim.Status{
		as[0]: ndisshim.StatusSuccess, as[1]: ndisshim.StatusFailure, as[2]: ndisshim.StatusSuccess,
		bs[0]: ndisshim.StatusSuccess, bs[1]: ndisshim.StatusResources,
	}
	for _, n := range q {
		n.Status = want[n]
	}
	r.a.SendNetBufferListsComplete(ndisshim.Chain(q...), 0) // a0 a1 b0 a2 b1
	runs := func(p *fakeProto) [][]*ndisshim.NetBufferList {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.runs
	}
	if got := runs(pA); len(got) != 2 || len(got[0]) != 2 || got[0][0] != as[0] || got[0][1] != as[1] || len(got[1]) != 1 || got[1][0] != as[2] {
		t.Errorf("A's completion runs %v, want [a0 a1] [a2]", got)
	}
	if got := runs(pB); len(got) != 2 || got[0][0] != bs[0] || got[1][0] != bs[1] {
		t.Errorf("B's completion runs %v, want [b0] [b1]", got)
	}
	for n, st := range want {
		p := pA
		if n.SourceHandle == bB {
			p = pB
		}
		if got := p.statuses[n]; len(got) != 1 || got[0] != st {
			t.Errorf("NBL %d completed with %v, want [%s]", n.Index(), got, st)
		}
	}
	if s := r.a.Stats().SendsNow; s != 0 {
		t.Errorf("SendsNow %d after completion", s)
	}
	r.pause()
	freeSendPool(t, bA, as)
	freeSendPool(t, bB, bs)
	if bad := append(pA.problems(), pB.problems()...); len(bad) > 0 {
		t.Errorf("protocols saw %q", bad)
	}
	r.finish(bA, bB)
}

// TestSendsRefusedWhilePaused: while Paused, and while Pausing once the
// bindings were told, a send comes straight back with StatusPaused before
// SendNetBufferLists returns, and the miniport never sees it; once Running
// again sends go through.
func TestSendsRefusedWhilePaused(t *testing.T) {
	cfg := &fakeConfig{}
	r := newRig(t, cfg, ndisshim.AdapterOptions{})
	b, p := r.open("p1")
	nbls, send := sendPool(t, b, 3)
	send(ndisshim.Chain(nbls[0], nbls[1]))
	for _, n := range nbls[:2] {
		if st := p.statuses[n]; len(st) != 1 || st[0] != ndisshim.StatusPaused {
			t.Errorf("send while Paused completed %v, want [PAUSED]", st)
		}
	}
	cfg.onPause = func() { send(nbls[2]) }
	r.restart()
	r.pause()
	if st := p.statuses[nbls[2]]; len(st) != 1 || st[0] != ndisshim.StatusPaused {
		t.Errorf("send while Pausing completed %v, want [PAUSED]", st)
	}
	if r.m.sendsSeen != 0 {
		t.Errorf("miniport saw %d sends while paused", r.m.sendsSeen)
	}
	cfg.onPause = nil
	r.restart()
	send(ndisshim.Chain(nbls...))
	for _, n := range nbls {
		if st := p.statuses[n]; len(st) != 2 || st[1] != ndisshim.StatusSuccess {
			t.Errorf("send while Running completed %v, want [PAUSED SUCCESS]", st)
		}
	}
	if r.m.sendsSeen != 3 || r.a.Stats().SendsNow != 0 {
		t.Errorf("miniport saw %d sends, %d outstanding", r.m.sendsSeen, r.a.Stats().SendsNow)
	}
	r.pause()
	freeSendPool(t, b, nbls)
	r.finish(b)
}

// TestPauseWaitsForLateSendCompletions: PauseEx does not complete the
// queued sends; Pause waits (the watchdog says the miniport holds them)
// until the miniport completes the last one from another goroutine.
func TestPauseWaitsForLateSendCompletions(t *testing.T) {
	reports := make(chan ndisshim.HeldReport, 16)
	r := newRig(t, &fakeConfig{faults: faults{holdSends: true, pauseKeepsSends: true}}, ndisshim.AdapterOptions{
		WatchdogInterval: time.Minute, OnHeld: func(h ndisshim.HeldReport) {
			select {
			case reports <- h:
			default:
			}
		}})
	b, p := r.open("p1")
	nbls, send := sendPool(t, b, 3)
	r.restart()
	send(ndisshim.Chain(nbls...))
	pauseDone := make(chan error, 1)
	go func() { pauseDone <- r.a.Pause(context.Background()) }()
	h := <-reports
	if len(h.Held) != 1 || h.Held[0].Holder != "miniport tm0" || h.Held[0].What != "sends" || h.Held[0].Count != 3 {
		t.Fatalf("watchdog report %+v, want 3 sends held by miniport tm0", h)
	}
	q := r.m.takeQueued()
	for _, n := range q {
		n.Status = ndisshim.StatusPaused
	}
	r.a.SendNetBufferListsComplete(ndisshim.Chain(q[:2]...), 0)
	select {
	case err := <-pauseDone:
		t.Fatalf("Pause returned (%v) with a send outstanding", err)
	default:
	}
	if s := r.a.Stats().SendsNow; s != 1 {
		t.Fatalf("SendsNow %d, want 1", s)
	}
	go r.a.SendNetBufferListsComplete(q[2], 0)
	if err := <-pauseDone; err != nil {
		t.Fatalf("Pause: %v", err)
	}
	p.mu.Lock()
	for _, n := range nbls {
		if st := p.statuses[n]; len(st) != 1 || st[0] != ndisshim.StatusPaused {
			t.Errorf("NBL %d completed %v, want [PAUSED]", n.Index(), st)
		}
	}
	p.mu.Unlock()
	freeSendPool(t, b, nbls)
	r.finish(b)
}

// TestCloseRefusedWithSendsOutstanding: after a forced Shutdown a binding
// may close, but not while the miniport still holds its sends.
func TestCloseRefusedWithSendsOutstanding(t *testing.T) {
	r := newRig(t, &fakeConfig{faults: faults{holdSends: true}}, ndisshim.AdapterOptions{})
	b, _ := r.open("p1")
	nbls, send := sendPool(t, b, 1)
	r.restart()
	send(nbls[0])
	if err := r.a.Shutdown(ndisshim.ShutdownBugCheck); err != nil {
		t.Fatal(err)
	}
	err := b.Close()
	if !errors.Is(err, ndisshim.ErrIllegalState) || !strings.Contains(err.Error(), "1 sends still outstanding") {
		t.Fatalf("Close with a send outstanding: %v", err)
	}
	q := r.m.takeQueued()
	r.a.SendNetBufferListsComplete(ndisshim.Chain(q...), 0)
	freeSendPool(t, b, nbls)
	if err := b.Close(); err != nil {
		t.Fatalf("Close after completion: %v", err)
	}
	f := verifierError(t, r.d.Deregister(), "unload of driver fakemp", ndisshim.FindAdapterNotHalted)
	if f.Detail != "state Shutdown" {
		t.Errorf("finding %q, want it to say state Shutdown", f)
	}
}

// TestSmallExchange: at most 2 NBLs whose first buffers are at most 256
// bytes; an empty chain, a third NBL, a 257-byte frame or an NBL without a
// buffer is not.
func TestSmallExchange(t *testing.T) {
	chain := func(lens ...int) *ndisshim.NetBufferList {
		nbls := make([]*ndisshim.NetBufferList, len(lens))
		for i, n := range lens {
			nbls[i] = &ndisshim.NetBufferList{}
			if n >= 0 {
				nbls[i].FirstNB = &ndisshim.NetBuffer{Data: make([]byte, n), Length: n}
			}
		}
		return ndisshim.Chain(nbls...)
	}
	for _, c := range []struct {
		lens []int
		want bool
	}{
		{[]int{98}, true}, {[]int{60, 256}, true}, {[]int{}, false}, {[]int{60, 60, 60}, false},
		{[]int{257}, false}, {[]int{60, 1514}, false}, {[]int{-1}, false},
	} {
		if got := ndisshim.SmallExchange(chain(c.lens...)); got != c.want {
			t.Errorf("SmallExchange(%v) = %v, want %v", c.lens, got, c.want)
		}
	}
}

// TestReturnAfterCloseInShutdown: after a forced Shutdown a binding may
// close while it still holds indicated NBLs. A return after Close is a
// call after close (a verifier finding) and does not reach the miniport,
// so the shim's ledger must go on saying the binding holds the NBLs, as
// the miniport's pool does: the held report still counts them, and a
// second return is again a call after close, not a double return.
func TestReturnAfterCloseInShutdown(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	b, p := r.open("p1")
	r.restart()
	if _, err := r.m.indicateN(2, false); err != nil {
		t.Fatal(err)
	}
	if err := r.a.Shutdown(ndisshim.ShutdownBugCheck); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close after Shutdown: %v", err)
	}
	nbls := p.take(2)
	for i := range 2 {
		b.ReturnNetBufferLists(ndisshim.Chain(nbls...), 0)
		if c := r.m.counts(); c.returned != 0 || c.out != 2 {
			t.Fatalf("return %d after Close reached the miniport: %+v", i+1, c)
		}
		h := r.a.HeldReport("check", time.Now())
		if len(h.Held) != 1 || h.Held[0].Holder != "p1" || h.Held[0].Count != 2 || h.Held[0].What != "receive indications" {
			t.Fatalf("after return %d: held report %+v, want the 2 receive indications still held by p1 (the miniport has not got them back)", i+1, h)
		}
	}
	var kinds []ndisshim.FindingKind
	for _, f := range r.found.get() {
		kinds = append(kinds, f.Kind)
		if f.Kind == ndisshim.FindCallAfterHalt && (f.Detail != "ReturnNetBufferLists" || f.Object != "binding p1") {
			t.Errorf("finding %q, want a ReturnNetBufferLists by binding p1", f)
		}
	}
	if want := []ndisshim.FindingKind{ndisshim.FindCallAfterHalt, ndisshim.FindCallAfterHalt}; !slices.Equal(kinds, want) {
		t.Errorf("findings %v, want %v (one per return, no double return)", kinds, want)
	}
	verifierError(t, r.d.Deregister(), "unload of driver fakemp", ndisshim.FindAdapterNotHalted)
}

// A protocol may return an indication from inside its receive handler and
// go on running there (hoststack returns the chain, then polls). Pause
// waits for the handler to return, not only for the NBLs: until then the
// adapter is not paused, so the binding is not unbound nor the adapter
// halted under a running handler. (The count of held NBLs reached zero at
// the return, and Pause went on at once.) The wait says what it waits for;
// the held count stays the NBLs held.
func TestPauseWaitsForReceiveHandlerThatReturnedItsNBLs(t *testing.T) {
	reports := make(chan ndisshim.HeldReport, 16)
	r := newRig(t, &fakeConfig{}, ndisshim.AdapterOptions{WatchdogInterval: time.Minute, OnHeld: func(h ndisshim.HeldReport) {
		select {
		case reports <- h:
		default:
		}
	}})
	_, p := r.open("p1")
	r.restart()
	inside, release := make(chan struct{}), make(chan struct{})
	p.onReceive = func(b *ndisshim.Binding, nbls *ndisshim.NetBufferList, count int, flags ndisshim.ReceiveFlags) {
		b.ReturnNetBufferLists(nbls, 0)
		close(inside)
		<-release
	}
	indicated := make(chan error, 1)
	go func() {
		_, err := r.m.indicateN(1, false)
		indicated <- err
	}()
	shimtest.Recv(t, "the receive handler", inside)
	paused := make(chan error, 1)
	go func() { paused <- r.a.Pause(context.Background()) }()
	select {
	case err := <-paused:
		close(release)
		t.Fatalf("Pause returned (%v) while the receive handler still ran", err)
	case <-time.After(100 * time.Millisecond):
	}
	rep := shimtest.Recv(t, "the pause's held report", reports)
	if want := "1 receive handler call running in p1"; rep.String() != want || rep.Total() != 1 {
		t.Errorf("held report %q (total %d), want %q", rep.String(), rep.Total(), want)
	}
	if s := r.a.Stats(); s.HeldNow != 0 {
		t.Errorf("HeldNow %d while the handler runs with its NBLs returned, want 0", s.HeldNow)
	}
	close(release)
	if err := shimtest.Recv(t, "the indication", indicated); err != nil {
		t.Fatalf("indication: %v", err)
	}
	if err := shimtest.Recv(t, "Pause", paused); err != nil {
		t.Fatalf("Pause once the handler returned: %v", err)
	}
	if st := r.a.State(); st != ndisshim.StatePaused {
		t.Errorf("state %s, want Paused", st)
	}
}
