package rxpool

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// TestStress runs one filler and several returners at once, as the
// miniport's reader and the protocols' goroutines do, with observers
// reading the counters and the ledger meanwhile. The filler writes a
// sequence number into each frame; the returners check it (a block handed
// out twice would be overwritten), keep some NBLs a while, regroup them
// into chains that mix indications and classes, and return them. The
// filler also recycles whole batches (dropped frames, RESOURCES) and
// double-returns now and then from its own goroutine, racing nobody.
// Run it under -race.
func TestStress(t *testing.T) {
	const (
		returners = 4
		batches   = 20000
		batchSize = 16
	)
	e := newEnv(t)
	p := e.pool(Config{Name: "stress", Count: 128, BufferSize: 192, Headroom: 12, LargeCount: 8, LargeSize: 1024, LowWater: 16})

	chains := make([]chan *ndisshim.NetBufferList, returners)
	for i := range chains {
		chains[i] = make(chan *ndisshim.NetBufferList, 4)
	}
	var bad atomic.Int64
	var returned atomic.Int64
	var wg sync.WaitGroup
	for g := range returners {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 99))
			var kept []*ndisshim.NetBufferList
			flush := func() {
				r.Shuffle(len(kept), func(i, j int) { kept[i], kept[j] = kept[j], kept[i] })
				for len(kept) > 0 {
					k := 1 + r.IntN(len(kept))
					if err := p.Return(chain(kept[:k]...)); err != nil {
						t.Error(err)
					}
					returned.Add(int64(k))
					kept = kept[k:]
				}
			}
			for {
				var head *ndisshim.NetBufferList
				var ok bool
				select {
				case head, ok = <-chains[g]:
				default: // idle: hold nothing while waiting, or the filler may starve
					flush()
					head, ok = <-chains[g]
				}
				if !ok {
					break
				}
				for n := head; n != nil; n = n.Next {
					b := n.FirstNB.Bytes()
					if len(b) != 16 || binary.LittleEndian.Uint64(b) != binary.LittleEndian.Uint64(b[8:]) ||
						int(binary.LittleEndian.Uint64(b[8:])>>32) != n.Index() {
						bad.Add(1)
					}
					kept = append(kept, n)
				}
				if len(kept) > 3*batchSize || r.IntN(3) == 0 {
					flush()
				}
			}
			flush()
		})
	}
	stop := make(chan struct{})
	var observers sync.WaitGroup
	observers.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			s := p.Stats()
			if s.InUse > s.Size || s.Large.InUse > s.Large.Size || s.HighWater > s.Size || s.Large.HighWater > s.Large.Size || s.Indicated > s.Size+s.Large.Size {
				t.Errorf("stats out of range: %+v", s)
			}
			_ = p.Held()
			_ = p.LowResources()
			runtime.Gosched()
		}
	})

	// The filler.
	r := rand.New(rand.NewPCG(7, 8))
	dst := make([]*ndisshim.NetBufferList, batchSize)
	seq := uint64(0)
	sent := int64(0)
	for i := 0; i < batches; {
		var n int
		if r.IntN(8) == 0 {
			n = p.GetLarge(dst[:1+r.IntN(4)])
		} else {
			n = p.Get(dst)
		}
		if n == 0 {
			runtime.Gosched() // exhausted: let the returners catch up
			continue
		}
		for _, nbl := range dst[:n] {
			seq++
			b := nbl.FirstNB.Data[12:28]
			binary.LittleEndian.PutUint64(b, uint64(nbl.Index())<<32|seq&0xffffffff)
			binary.LittleEndian.PutUint64(b[8:], uint64(nbl.Index())<<32|seq&0xffffffff)
			nbl.FirstNB.SetBytes(12, 16)
		}
		head := chain(dst[:n]...)
		switch r.IntN(10) {
		case 0: // a dropped batch
			p.Recycle(head)
		case 1: // indicated with RESOURCES: never marked, recycled after the call
			p.Recycle(head)
		case 2: // marked, but the indication failed
			p.MarkIndicated(head)
			p.Recycle(head)
		default:
			p.MarkIndicated(head)
			sent += int64(n)
			chains[i%returners] <- head
			i++
		}
	}
	for _, c := range chains {
		close(c)
	}
	wg.Wait()
	if err := p.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	close(stop)
	observers.Wait()

	s := p.Stats()
	if bad.Load() != 0 {
		t.Fatalf("%d frames were overwritten while indicated", bad.Load())
	}
	if s.InUse != 0 || s.Large.InUse != 0 || s.Indicated != 0 || s.Returned != sent || returned.Load() != sent ||
		s.Got != s.Returned+s.Recycled || s.DoubleReturns+s.ForeignReturns+s.NeverIndicated+s.BadRecycles+s.BadMarks != 0 {
		t.Fatalf("stats after stress %+v (sent %d)", s, sent)
	}
	t.Logf("stress: got %d, returned %d, recycled %d, high water %d/%d, exhaustions %d",
		s.Got, s.Returned, s.Recycled, s.HighWater, s.Size, s.Exhaustions)
}

// TestStressDoubleReturnRace: two goroutines return the same indicated
// blocks at once; each block is taken back exactly once and the other
// return is refused and counted.
func TestStressDoubleReturnRace(t *testing.T) {
	e := newEnv(t)
	p := e.pool(Config{Name: "race", Count: 64, BufferSize: 128})
	dst := make([]*ndisshim.NetBufferList, 1)
	for range 2000 {
		if p.Get(dst) != 1 {
			t.Fatal("Get failed")
		}
		n := dst[0]
		p.MarkIndicated(n)
		var wg sync.WaitGroup
		var errs atomic.Int64
		for range 2 {
			wg.Go(func() {
				// The same single-NBL chain, so Next is not written by either.
				if p.Return(n) != nil {
					errs.Add(1)
				}
			})
		}
		wg.Wait()
		if errs.Load() != 1 {
			t.Fatalf("%d of 2 racing returns failed, want 1", errs.Load())
		}
	}
	if s := p.Stats(); s.Returned != 2000 || s.DoubleReturns != 2000 || s.InUse != 0 || s.Free != 64 {
		t.Fatalf("stats %+v", s)
	}
}
