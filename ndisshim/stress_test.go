package ndisshim_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

// TestStressIndicateReturnPauseSend: the interrupt goroutine indicates
// tens of thousands of NBLs in batches (every fifth batch with RESOURCES)
// from a pool of 256; four returner goroutines give them back in random
// chains of random sizes; a sender goroutine sends and gets completions
// throughout; the test goroutine pauses the adapter while all of this is
// in flight, checks that everything is accounted for, restarts, lets the
// rest through, pauses, and halts. At each pause: no NBL held, no send
// outstanding, every NBL seen by the return handler exactly as many times
// as it was indicated without RESOURCES, all 256 back in the miniport's
// hands; after the halt the pool has nothing in use. Run it with -race.
func TestStressIndicateReturnPauseSend(t *testing.T) {
	const poolSize, returners, sendNBLs = 256, 4, 32
	total := 40000
	if testing.Short() {
		total = 5000
	}
	var reports atomic.Int64
	cfg := &fakeConfig{poolSize: poolSize, dpcBatch: 16, resourcesEvery: 5}
	r := newRig(t, cfg, ndisshim.AdapterOptions{WatchdogInterval: 20 * time.Millisecond, OnHeld: func(ndisshim.HeldReport) { reports.Add(1) }})
	b, p := r.open("hoststack")

	// The protocol hands what it owns to the returners.
	toReturn := make(chan *ndisshim.NetBufferList, poolSize)
	p.onReceive = func(b *ndisshim.Binding, nbls *ndisshim.NetBufferList, count int, flags ndisshim.ReceiveFlags) {
		if flags.Has(ndisshim.ReceiveFlagResources) {
			return
		}
		for n := nbls; n != nil; {
			next := n.Next
			n.Next = nil
			toReturn <- n
			n = next
		}
	}
	// Sends: a pool of 32, recycled through completions.
	sendFree := make(chan *ndisshim.NetBufferList, sendNBLs)
	var sent, completedOK, completedPaused atomic.Int64
	p.onComplete = func(b *ndisshim.Binding, run []*ndisshim.NetBufferList) {
		for _, n := range run {
			switch n.Status {
			case ndisshim.StatusSuccess:
				completedOK.Add(1)
			case ndisshim.StatusPaused:
				completedPaused.Add(1)
			default:
				t.Errorf("send completed with %s", n.Status)
			}
			sendFree <- n
		}
	}
	sendNBLsAll, _ := sendPool(t, b, sendNBLs)
	for _, n := range sendNBLsAll {
		sendFree <- n
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	rng := newRand(t)
	for range returners {
		seed := rng.Uint64()
		wg.Add(1)
		go func() {
			defer wg.Done()
			rg := rand.New(rand.NewPCG(seed, 2))
			var batch []*ndisshim.NetBufferList
			for {
				batch = batch[:0]
				select {
				case n := <-toReturn:
					batch = append(batch, n)
				case <-stop:
					return
				}
				want := 1 + rg.IntN(12)
			fill:
				for len(batch) < want {
					select {
					case n := <-toReturn:
						batch = append(batch, n)
					default:
						break fill
					}
				}
				if rg.IntN(4) == 0 { // hold them a while, as a stack writing to a slow TAP would
					time.Sleep(time.Duration(rg.IntN(300)) * time.Microsecond)
				}
				rg.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
				k := 1 + rg.IntN(len(batch))
				b.ReturnNetBufferLists(ndisshim.Chain(batch[:k]...), 0)
				if k < len(batch) {
					b.ReturnNetBufferLists(ndisshim.Chain(batch[k:]...), 0)
				}
			}
		}()
	}
	wg.Add(1)
	go func() { // the sender
		defer wg.Done()
		rg := rand.New(rand.NewPCG(rng.Uint64(), 3))
		var chain []*ndisshim.NetBufferList
		for {
			chain = chain[:0]
			select {
			case n := <-sendFree:
				chain = append(chain, n)
			case <-stop:
				return
			}
			want := 1 + rg.IntN(4)
		more:
			for len(chain) < want {
				select {
				case n := <-sendFree:
					chain = append(chain, n)
				default:
					break more
				}
			}
			before := completedPaused.Load()
			sent.Add(int64(len(chain)))
			b.SendNetBufferLists(ndisshim.Chain(chain...), ndisshim.DefaultPort, 0)
			if completedPaused.Load() != before {
				time.Sleep(100 * time.Microsecond) // paused: don't spin
			}
		}
	}()

	checkDrained := func(when string) {
		t.Helper()
		// The sender goes on while the adapter is paused: a send refused
		// with PAUSED counts in SendsNow from its SendNetBufferLists call
		// until its completion, inside the call (the count taken before
		// the state check is what makes Pause wait for a send racing it).
		// So SendsNow may be caught above 0 for an instant, but it must
		// come back to 0 at once; nothing may stay at the miniport.
		shimtest.WaitFor(t, when+": no send left in the shim (SendsNow 0)", func() bool { return r.a.Stats().SendsNow == 0 })
		s := r.a.Stats()
		c := r.m.counts()
		// The miniport keeps all 256 allocated and recycles them itself.
		if s.HeldNow != 0 || c.out != 0 || c.free != poolSize || c.returned != c.indicated || r.m.pool.InUse() != poolSize {
			t.Fatalf("%s: stats %+v, miniport %+v: something is unaccounted for", when, s, c)
		}
		r.m.checkExactlyOnce(t)
	}

	r.restart()
	r.m.allowRx(total / 2)
	shimtest.WaitFor(t, "the first indications", func() bool { return r.m.counts().indicated >= total/8 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.a.Pause(ctx); err != nil { // while the DPC, returners and sender run
		t.Fatalf("concurrent Pause: %v", err)
	}
	midway := r.m.counts()
	checkDrained("after the concurrent pause")

	r.restart()
	r.m.allowRx(total - total/2)
	shimtest.WaitFor(t, "all indications", func() bool { return r.m.counts().indicated >= total })
	r.pause()
	checkDrained("after the final pause")
	close(stop)
	wg.Wait()

	if len(sendFree) != sendNBLs || sent.Load() != completedOK.Load()+completedPaused.Load() {
		t.Errorf("sends: %d sent, %d ok + %d paused completed, %d of %d back", sent.Load(), completedOK.Load(), completedPaused.Load(), len(sendFree), sendNBLs)
	}
	freeSendPool(t, b, sendNBLsAll)
	final := r.m.counts()
	if final.indicated != total || final.resIndicated == 0 {
		t.Errorf("indicated %d (want %d), %d with RESOURCES", final.indicated, total, final.resIndicated)
	}
	if pb := p.problems(); len(pb) > 0 {
		t.Errorf("protocol saw %q", pb[:min(len(pb), 5)])
	}
	r.finish(b)
	if n := r.m.pool.InUse(); n != 0 {
		t.Errorf("pool has %d NBLs in use after halt", n)
	}
	s := r.a.Stats()
	t.Logf("indicated %d (+%d with RESOURCES, %d refused), paused midway at %d, peak held %d, drained while pausing %d, watchdog reports %d, sends %d (%d ok, %d paused)",
		final.indicated, final.resIndicated, final.refused, midway.indicated, s.PeakHeld, s.DrainedNBLs, reports.Load(), sent.Load(), completedOK.Load(), completedPaused.Load())
}
