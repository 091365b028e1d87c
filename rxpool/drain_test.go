package rxpool

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
)

func TestDrainNothingHeld(t *testing.T) {
	e := newEnv(t)
	p := e.pool(smallConfig())
	b := getN(t, p, 2) // filling blocks are not waited for
	reports := 0
	p.OnHeld(func(HeldInfo) { reports++ })
	if err := p.Drain(context.Background()); err != nil || reports != 0 {
		t.Fatalf("Drain with nothing indicated: %v, %d reports", err, reports)
	}
	p.Recycle(chain(b...))
}

// TestDrainLateReturnsThroughShim indicates three batches through the
// shim to a protocol that keeps them, then drains: the protocol's
// goroutines return the NBLs (reshuffled into chains that mix the
// indications) only after Drain has reported what it waits for.
func TestDrainLateReturnsThroughShim(t *testing.T) {
	e := newEnv(t)
	p := e.pool(Config{Name: "tm-test rx", Count: 32, BufferSize: 256, Headroom: 12, LowWater: 2})
	e.mp.pool.Store(p)
	proto := &fakeProtocol{rx: make(chan *ndisshim.NetBufferList, 8)}
	bind, err := e.a.OpenAdapter("hoststack", proto)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := e.a.Restart(ctx); err != nil {
		t.Fatal(err)
	}

	// The filler: three indications of 8.
	batch := make([]*ndisshim.NetBufferList, 8)
	for range 3 {
		n := p.Get(batch)
		for i, nbl := range batch[:n] {
			copy(nbl.FirstNB.Data[12:], "frame")
			nbl.FirstNB.SetBytes(12, 60+i)
		}
		head := chain(batch[:n]...)
		p.MarkIndicatedBy(head, bind.Name())
		if err := e.a.IndicateReceive(head, ndisshim.DefaultPort, n, 0); err != nil {
			t.Fatal(err)
		}
	}
	var held []*ndisshim.NetBufferList
	for range 3 {
		for n := <-proto.rx; n != nil; n = n.Next {
			held = append(held, n)
		}
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })

	// The stack: four goroutines, each returning a mixed chain of 6, once
	// Drain has said what it waits for.
	start := make(chan struct{})
	var first HeldInfo
	var once sync.Once
	p.OnHeld(func(h HeldInfo) { once.Do(func() { first = h; close(start) }) })
	var wg sync.WaitGroup
	for g := range 4 {
		part := held[g*6 : g*6+6]
		wg.Go(func() {
			<-start
			bind.ReturnNetBufferLists(chain(part...), 0)
		})
	}
	dctx, cancel := context.WithTimeout(ctx, time.Minute) // a safety net, not an assertion
	err = p.Drain(dctx)
	cancel()
	wg.Wait()
	if err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if first.Indicated != 24 || first.Count != 24 || len(first.Holders) != 1 || first.Holders[0] != (HolderInfo{"hoststack", 24, first.Oldest}) {
		t.Fatalf("Drain's first report: %+v", first)
	}
	s := p.Stats()
	if s.Indicated != 0 || s.InUse != 0 || s.Returned != 24 || s.DoubleReturns+s.ForeignReturns+s.NeverIndicated != 0 {
		t.Fatalf("stats after drain %+v", s)
	}

	if err := e.a.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := bind.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Free(); err != nil {
		t.Fatal(err)
	}
}

// TestDrainDeadlineNamesHeld: nothing comes back; Drain gives up when its
// context's deadline passes, with an error naming what is held.
func TestDrainDeadlineNamesHeld(t *testing.T) {
	e := newEnv(t)
	p := e.pool(smallConfig())
	b := getN(t, p, 6)
	p.MarkIndicatedBy(chain(b[1], b[2], b[4]), "hoststack")
	p.MarkIndicated(chain(b[5]))
	reports := 0
	p.OnHeld(func(h HeldInfo) { reports++ })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := p.Drain(ctx)
	if !errors.Is(err, ErrHeld) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain: %v, want ErrHeld and the deadline", err)
	}
	for _, want := range []string{`"test rx"`, "6 blocks held: 4 indicated", "hoststack: 3", "the stack: 1", "block 1, block 2, block 4, block 5", "2 filling"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("Drain error %q does not say %q", err, want)
		}
	}
	if reports == 0 {
		t.Fatal("Drain did not report while it waited")
	}
	// Nothing was freed: the blocks are still held and come back normally.
	if err := p.Return(chain(b[5], b[4], b[2], b[1])); err != nil {
		t.Fatal(err)
	}
	p.Recycle(chain(b[0], b[3]))
	if err := p.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestDrainLogsWithoutOnHeld: without an OnHeld function the reports go
// to the log.
func TestDrainLogsWithoutOnHeld(t *testing.T) {
	e := newEnv(t)
	p := e.pool(smallConfig())
	b := getN(t, p, 1)
	p.MarkIndicated(b[0])
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Drain(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Drain: %v", err)
	}
	if log := e.log.String(); !strings.Contains(log, "waiting for receive blocks") || !strings.Contains(log, "block 0") {
		t.Fatalf("log: %s", log)
	}
}

// TestDrainReportsPeriodically: with a short ReportEvery, Drain reports
// again and again while it waits; the blocks come back, from another
// goroutine, only after the third report.
func TestDrainReportsPeriodically(t *testing.T) {
	e := newEnv(t)
	cfg := smallConfig()
	cfg.ReportEvery = time.Millisecond
	p := e.pool(cfg)
	b := getN(t, p, 3)
	p.MarkIndicated(chain(b...))
	third := make(chan struct{})
	reports := 0
	p.OnHeld(func(h HeldInfo) {
		reports++ // Drain calls OnHeld from its own goroutine, one at a time
		if reports == 3 {
			close(third)
		}
	})
	var wg sync.WaitGroup
	wg.Go(func() {
		<-third
		if err := p.Return(chain(b[2], b[0], b[1])); err != nil {
			t.Error(err)
		}
	})
	err := p.Drain(context.Background())
	wg.Wait()
	if err != nil || reports < 3 {
		t.Fatalf("Drain: %v after %d reports", err, reports)
	}
}
