package rxpool

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/tapminiport/tapminiport/ndisshim"
)

func TestConfigValidate(t *testing.T) {
	ok := smallConfig()
	tests := []struct {
		name  string
		edit  func(*Config)
		field string // "" = valid
	}{
		{"small", func(*Config) {}, ""},
		{"no name", func(c *Config) { c.Name = "" }, ""},
		{"large class default size", func(c *Config) { c.LargeCount = 2 }, ""},
		{"large class given size", func(c *Config) { c.LargeCount = 2; c.LargeSize = 9000 }, ""},
		{"exact minimum buffer", func(c *Config) { c.BufferSize = c.Headroom + MinFrame }, ""},
		{"zero count", func(c *Config) { c.Count = 0 }, "Count"},
		{"too many", func(c *Config) { c.Count = MaxBlocks + 1 }, "Count"},
		{"negative headroom", func(c *Config) { c.Headroom = -1 }, "Headroom"},
		{"buffer too small", func(c *Config) { c.BufferSize = c.Headroom + MinFrame - 1 }, "BufferSize"},
		{"buffer too big", func(c *Config) { c.BufferSize = MaxBufferSize + 1 }, "BufferSize"},
		{"slab too big", func(c *Config) { c.Count = MaxBlocks; c.BufferSize = 65536 }, "BufferSize"},
		{"negative large count", func(c *Config) { c.LargeCount = -1 }, "LargeCount"},
		{"too many large", func(c *Config) { c.LargeCount = MaxLargeBlocks + 1 }, "LargeCount"},
		{"negative large size", func(c *Config) { c.LargeSize = -1 }, "LargeSize"},
		{"large size too big", func(c *Config) { c.LargeCount = 1; c.LargeSize = MaxBufferSize + 1 }, "LargeSize"},
		{"large size too small", func(c *Config) { c.LargeCount = 1; c.LargeSize = c.Headroom + 1 }, "LargeSize"},
		{"headroom too big for default large", func(c *Config) {
			c.LargeCount = 1
			c.Headroom = MaxBufferSize - LargeFrame + 1
			c.BufferSize = MaxBufferSize
		}, "Headroom"},
		{"negative low water", func(c *Config) { c.LowWater = -1 }, "LowWater"},
		{"low water at count", func(c *Config) { c.LowWater = c.Count }, "LowWater"},
		{"negative report interval", func(c *Config) { c.ReportEvery = -1 }, "ReportEvery"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.edit(&c)
			err := c.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate accepted %+v", c)
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "Config."+tt.field+":") {
				t.Fatalf("Validate error %q does not name Config.%s (or wrap ErrConfig)", err, tt.field)
			}
		})
	}
}

func TestNewInvalidConfigAllocatesNothing(t *testing.T) {
	e := newEnv(t) // the verifier checks at cleanup that nothing was allocated
	_, err := New(e.res(), Config{Count: 4, BufferSize: 8})
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("New with a bad config: %v", err)
	}
	if _, err := New(nil, smallConfig()); err == nil {
		t.Fatal("New with nil resources succeeded")
	}
}

// TestNewLayout checks the buffers: one per NBL, disjoint, inside the
// slab, capacity capped, the view at Headroom; the sizes rounded; and the
// NBL index as the block number.
func TestNewLayout(t *testing.T) {
	e := newEnv(t)
	p := e.pool(Config{Name: "layout", Count: 5, BufferSize: 1514 + 12, Headroom: 12, LargeCount: 3, LowWater: 1})
	cfg := p.Config()
	if cfg.BufferSize != 1536 || cfg.LargeSize != roundUp(LargeFrame+12) || cfg.Holder != DefaultHolder || cfg.Tag != ndisshim.MakeTag("TMrx") {
		t.Fatalf("Config() = %+v", cfg)
	}
	if p.nbls.Size() != 8 || p.nbls.InUse() != 8 {
		t.Fatalf("NBL pool: size %d, in use %d; want 8 and 8 (all allocated at New)", p.nbls.Size(), p.nbls.InUse())
	}
	check := func(c *class, size int) {
		base := uintptr(unsafe.Pointer(unsafe.SliceData(c.slab.Bytes)))
		for j := 0; j < c.size; j++ {
			n := p.all[c.first+j]
			if n.Index() != c.first+j || n.Pool() != p.nbls {
				t.Fatalf("block %d: NBL index %d", c.first+j, n.Index())
			}
			nb := n.FirstNB
			if len(nb.Data) != size || cap(nb.Data) != size {
				t.Fatalf("block %d: len %d cap %d, want %d", n.Index(), len(nb.Data), cap(nb.Data), size)
			}
			if at := uintptr(unsafe.Pointer(unsafe.SliceData(nb.Data))); at != base+uintptr(j*size) {
				t.Fatalf("block %d: buffer at slab+%d, want slab+%d", n.Index(), at-base, j*size)
			}
			if nb.Offset != 12 || nb.Length != 0 {
				t.Fatalf("block %d: view %d+%d, want 12+0", n.Index(), nb.Offset, nb.Length)
			}
		}
	}
	check(&p.reg, 1536)
	check(&p.large, cfg.LargeSize)

	// Get hands out blocks in order at first, the large class its own.
	dst := getN(t, p, 3)
	for j, n := range dst {
		if n.Index() != j {
			t.Fatalf("Get: got block %d at %d", n.Index(), j)
		}
	}
	large := make([]*ndisshim.NetBufferList, 4)
	if k := p.GetLarge(large); k != 3 || large[0].Index() != 5 || len(large[0].FirstNB.Data) != cfg.LargeSize {
		t.Fatalf("GetLarge = %d (first index %d)", k, large[0].Index())
	}
	p.Recycle(chain(append(dst, large[:3]...)...))
}

// TestNewFailsHalfWay makes New fail at each of its steps inside a
// miniport's InitializeEx: the shim's verifier must find nothing left.
func TestNewFailsHalfWay(t *testing.T) {
	for _, step := range []string{"slab", "large slab", "NBL pool", "NBLs", "buffers"} {
		t.Run(step, func(t *testing.T) {
			boom := errors.New("injected failure")
			var seen []string
			d, err := ndisshim.RegisterMiniportDriver(ndisshim.Characteristics{
				Name: "rxpoolfail",
				InitializeEx: func(a *ndisshim.Adapter, _ ndisshim.InitParameters) (ndisshim.Miniport, error) {
					cfg := smallConfig()
					cfg.LargeCount = 2
					_, err := newPool(&a.Resources, cfg, func(s string) error {
						seen = append(seen, s)
						if s == step {
							return boom
						}
						return nil
					})
					return nil, err
				},
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, err = d.AddAdapter(ndisshim.InitParameters{Name: "tm-fail"}, ndisshim.AdapterOptions{})
			if !errors.Is(err, boom) {
				t.Fatalf("AddAdapter: %v, want the injected failure", err)
			}
			if seen[len(seen)-1] != step {
				t.Fatalf("steps run %v, want to stop at %q", seen, step)
			}
			var ve *ndisshim.VerifierError
			if errors.As(err, &ve) {
				t.Fatalf("New left allocations behind: %v", ve)
			}
			if err := d.Deregister(); err != nil {
				t.Fatalf("unload: %v", err)
			}
		})
	}
}

func TestGetExhaustionAndLowResources(t *testing.T) {
	e := newEnv(t)
	p := e.pool(smallConfig()) // 8 blocks, low water 2
	if p.LowResources() {
		t.Fatal("LowResources with 8 free")
	}
	a := getN(t, p, 5)
	if p.LowResources() {
		t.Fatal("LowResources with 3 free")
	}
	b := getN(t, p, 1)
	if !p.LowResources() {
		t.Fatal("not LowResources with 2 free")
	}
	dst := make([]*ndisshim.NetBufferList, 4)
	if k := p.Get(dst); k != 2 {
		t.Fatalf("Get(4) with 2 free = %d", k)
	}
	if k := p.Get(dst); k != 0 {
		t.Fatalf("Get with none free = %d", k)
	}
	if k := p.Get(dst[:0]); k != 0 {
		t.Fatalf("Get(0) = %d", k)
	}
	if k := p.GetLarge(dst); k != 0 {
		t.Fatalf("GetLarge without a large class = %d", k)
	}
	s := p.Stats()
	if s.Exhaustions != 1 || s.InUse != 8 || s.Free != 0 || s.HighWater != 8 || s.Filling != 8 || s.Got != 8 {
		t.Fatalf("stats %+v", s)
	}
	p.Recycle(chain(append(append(a, b...), dst[:2]...)...))
	s = p.Stats()
	if s.InUse != 0 || s.Free != 8 || s.HighWater != 8 || s.Recycled != 8 || p.LowResources() {
		t.Fatalf("stats after recycle %+v", s)
	}
}

// TestGetResets checks that a block comes back from Get clean (no chain
// link, status or out-of-band info from its last use; the view is the
// filler's to set), and that the pool is LIFO.
func TestGetResets(t *testing.T) {
	e := newEnv(t)
	p := e.pool(smallConfig())
	n := getN(t, p, 1)[0]
	n.FirstNB.SetBytes(2, 100)
	n.Info.Checksum.ChecksumValid = true
	n.Info.LSO.MSS = 1448
	n.Status = ndisshim.StatusFailure
	p.MarkIndicated(n)
	n.Next = getN(t, p, 1)[0] // a stale link, as a chain leaves it
	n.Next.Next = nil
	p.Recycle(n.Next)
	n.Next = nil
	if err := p.Return(n); err != nil {
		t.Fatal(err)
	}
	m := getN(t, p, 1)[0]
	if m != n {
		t.Fatalf("Get after Return gave block %d, want the last returned, %d (LIFO)", m.Index(), n.Index())
	}
	if m.Next != nil || m.Status != ndisshim.StatusSuccess || m.Info != (ndisshim.NBLInfo{}) || len(m.FirstNB.Data) != 256 {
		t.Fatalf("Get handed out a dirty NBL: Next %p, Status %v, Info %+v, %d bytes", m.Next, m.Status, m.Info, len(m.FirstNB.Data))
	}
	p.Recycle(m)
}

// TestLedgerErrors provokes every error of Return: double return, return
// of a block never indicated, a block of another pool, an NBL of no pool;
// a chain mixing them with good blocks gives back the good ones and one
// error naming the bad ones.
func TestLedgerErrors(t *testing.T) {
	e := newEnv(t)
	p := e.pool(smallConfig())
	q := e.pool(Config{Name: "other rx", Count: 2, BufferSize: 128})

	b := getN(t, p, 4)
	p.MarkIndicated(chain(b[0], b[1], b[2]))
	if err := p.Return(chain(b[0])); err != nil {
		t.Fatalf("good return: %v", err)
	}

	// Double return.
	err := p.Return(chain(b[0]))
	var le *LedgerError
	if !errors.Is(err, ErrDoubleReturn) || !errors.As(err, &le) || le.Total != 1 || le.Chain != 1 || le.Bad[0].Block != "block 0" ||
		!strings.Contains(le.Bad[0].State, "returned, last indicated to the stack") {
		t.Fatalf("double return: %v", err)
	}
	// A free block that was never got is not indicated either.
	if err := p.Return(chain(p.all[7])); !errors.Is(err, ErrDoubleReturn) {
		t.Fatalf("return of a free block: %v", err)
	}
	// Never indicated: got (filling), then returned.
	if err := p.Return(chain(b[3])); !errors.Is(err, ErrNeverIndicated) || !strings.Contains(err.Error(), "block 3") {
		t.Fatalf("return of a block never indicated: %v", err)
	}
	if st, _ := p.State(b[3]); st != StateFilling {
		t.Fatalf("refused block changed state to %s", st)
	}
	// Foreign: a block of another pool, indicated there.
	qb := getN(t, q, 1)[0]
	q.MarkIndicated(qb)
	if err := p.Return(chain(qb)); !errors.Is(err, ErrForeign) || !strings.Contains(err.Error(), "TMrx") {
		t.Fatalf("foreign return: %v", err)
	}
	if st, _ := q.State(qb); st != StateIndicated {
		t.Fatalf("foreign return changed the other pool's block to %s", st)
	}
	// An NBL of no pool at all.
	stray := &ndisshim.NetBufferList{}
	if err := p.Return(stray); !errors.Is(err, ErrForeign) || !strings.Contains(err.Error(), "no pool") {
		t.Fatalf("return of a stray NBL: %v", err)
	}

	// One chain mixing all of it: the good ones come back, one error names the rest.
	err = p.Return(chain(b[1], b[0], b[3], qb, b[2], stray))
	if !errors.As(err, &le) || le.Total != 4 || le.Chain != 6 {
		t.Fatalf("mixed chain: %v", err)
	}
	for _, want := range []error{ErrDoubleReturn, ErrNeverIndicated, ErrForeign} {
		if !errors.Is(err, want) {
			t.Fatalf("mixed chain error %v does not wrap %v", err, want)
		}
	}
	for _, name := range []string{"block 0", "block 3", "NBL 0 of NBL pool", "no pool", "refused 4 of 6"} {
		if !strings.Contains(err.Error(), name) {
			t.Fatalf("mixed chain error %q does not name %q", err, name)
		}
	}
	for _, n := range []*ndisshim.NetBufferList{b[1], b[2]} {
		if st, _ := p.State(n); st != StateReturned {
			t.Fatalf("good block %d of the mixed chain is %s", n.Index(), st)
		}
	}
	s := p.Stats()
	if s.DoubleReturns != 3 || s.NeverIndicated != 2 || s.ForeignReturns != 4 || s.Returned != 3 || s.InUse != 1 || s.Indicated != 0 {
		t.Fatalf("stats %+v", s)
	}
	p.Recycle(b[3])
	q.Recycle(qb)
}

// TestRecycleAndMarkErrors: Recycle of a free block and MarkIndicated of a
// block that is not filling are refused, counted and logged.
func TestRecycleAndMarkErrors(t *testing.T) {
	e := newEnv(t)
	p := e.pool(smallConfig())
	q := e.pool(Config{Name: "other rx", Count: 2, BufferSize: 128})
	b := getN(t, p, 2)
	p.Recycle(chain(b[0]))
	p.Recycle(chain(b[0])) // twice
	p.MarkIndicated(chain(b[0]))
	qb := getN(t, q, 1)[0]
	p.MarkIndicated(chain(qb))
	p.Recycle(chain(qb))
	p.MarkIndicated(chain(b[1]))
	p.MarkIndicated(chain(b[1])) // twice
	s := p.Stats()
	if s.BadRecycles != 2 || s.BadMarks != 3 || s.Indicated != 1 || s.InUse != 1 {
		t.Fatalf("stats %+v", s)
	}
	log := e.log.String()
	for _, want := range []string{"bad Recycle", "recycled while not held", "bad MarkIndicated", "marked indicated while not filling", "block 1", "indicated to the stack"} {
		if !strings.Contains(log, want) {
			t.Fatalf("log does not say %q:\n%s", want, log)
		}
	}
	if st, _ := q.State(qb); st != StateFilling {
		t.Fatalf("other pool's block is %s", st)
	}
	q.Recycle(qb)
}

func TestFreeRefusesWhileHeld(t *testing.T) {
	e := newEnv(t)
	p := e.pool(smallConfig())
	b := getN(t, p, 3)
	err := p.Free()
	if !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), "3 filling") {
		t.Fatalf("Free with 3 filling: %v", err)
	}
	p.MarkIndicatedBy(chain(b[1], b[2]), "hoststack")
	err = p.Free()
	if !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), "2 indicated (hoststack: 2") || !strings.Contains(err.Error(), "block 1, block 2") {
		t.Fatalf("Free with 2 indicated: %v", err)
	}
	p.Recycle(b[0])
	err = p.Free()
	if !errors.Is(err, ErrHeld) {
		t.Fatalf("Free with 2 indicated: %v", err)
	}
	if err := p.Return(chain(b[2], b[1])); err != nil {
		t.Fatal(err)
	}
	if err := p.Free(); err != nil {
		t.Fatalf("Free: %v", err)
	}
	if err := p.Free(); !errors.Is(err, ErrFreed) {
		t.Fatalf("second Free: %v", err)
	}
	if k := p.Get(make([]*ndisshim.NetBufferList, 1)); k != 0 {
		t.Fatalf("Get after Free = %d", k)
	}
	if b[0].FirstNB.Data != nil {
		t.Fatal("a freed NBL still points into the unmapped slab")
	}
}

func TestHolders(t *testing.T) {
	e := newEnv(t)
	p := e.pool(Config{Name: "holders", Count: 300, BufferSize: 128, Holder: "tcpip"})
	b := getN(t, p, 300)
	p.MarkIndicated(chain(b[0:2]...))
	p.MarkIndicatedBy(chain(b[2:5]...), "hoststack")
	for i := 5; i < 300; i++ { // more names than a pool remembers
		p.MarkIndicatedBy(b[i], "proto"+string(rune('A'+i%26))+string(rune('a'+i/26)))
	}
	h := p.Held()
	if h.Count != 300 || h.Indicated != 300 || h.Filling != 0 || len(h.Blocks) != maxNamed || h.Blocks[0] != "block 0" {
		t.Fatalf("Held = %+v", h)
	}
	counts := map[string]int{}
	for _, x := range h.Holders {
		counts[x.Holder] = x.Count
	}
	if counts["tcpip"] != 2 || counts["hoststack"] != 3 || counts["other holders"] != 300-5-(maxHolders-3) {
		t.Fatalf("holders %v", counts)
	}
}

// TestGetUnderConcurrentPush makes a Return land between Get's walk and its
// swap (deterministically, through a test hook): Get must take exactly the
// blocks it walked and leave the pushed ones, and the rest of the list,
// intact.
func TestGetUnderConcurrentPush(t *testing.T) {
	e := newEnv(t)
	p := e.pool(smallConfig())
	a := getN(t, p, 4) // blocks 0..3; 4..7 stay on the list
	p.MarkIndicated(chain(a...))
	pushes := 0
	p.afterWalk = func() { // called with fillMu held: only good returns here
		if pushes == 0 {
			pushes++
			if err := p.Return(chain(a[1], a[3])); err != nil { // pushed on top while Get walks
				t.Error(err)
			}
		}
	}
	b := getN(t, p, 2)
	if b[0].Index() != 4 || b[1].Index() != 5 {
		t.Fatalf("Get took blocks %d, %d; want 4, 5 (what it walked)", b[0].Index(), b[1].Index())
	}
	p.afterWalk = nil
	// The list is now 3, 1 (the pushed run, last returned on top), then 6, 7.
	rest := make([]*ndisshim.NetBufferList, 8)
	if k := p.Get(rest); k != 4 {
		t.Fatalf("Get = %d, want the 4 left", k)
	}
	var got []int
	for _, n := range rest[:4] {
		got = append(got, n.Index())
	}
	if want := []int{3, 1, 6, 7}; !slices.Equal(got, want) {
		t.Fatalf("free list after the push: %v, want %v", got, want)
	}
	p.Recycle(chain(append(append(rest[:4:4], b...), a[0], a[2])...))
	if s := p.Stats(); s.InUse != 0 || s.Indicated != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestFreeRefusedRightAfterGet makes a Free land right after Get lets go of
// the filler lock (deterministically, through a test hook): the filler
// holds the blocks it took, so Free must refuse with ErrHeld and leave the
// pool (buffers, NBLs, slab) as it was.
func TestFreeRefusedRightAfterGet(t *testing.T) {
	e := newEnv(t)
	p := e.pool(smallConfig())
	var freeErr error
	calls := 0
	p.afterTake = func() { // called without fillMu: Free may run here
		calls++
		freeErr = p.Free()
	}
	b := make([]*ndisshim.NetBufferList, 2)
	k := p.Get(b)
	p.afterTake = nil
	if calls != 1 || k != 2 {
		t.Fatalf("Get = %d (hook called %d times), want 2 (once)", k, calls)
	}
	if !errors.Is(freeErr, ErrHeld) {
		t.Fatalf("Free right after Get's unlock = %v, want ErrHeld (the filler holds 2 blocks)", freeErr)
	}
	for _, n := range b {
		if n.FirstNB.Data == nil {
			t.Fatalf("block %d's buffer was cleared by a Free that should have been refused", n.Index())
		}
	}
	if s := p.Stats(); s.InUse != 2 || s.Filling != 2 || s.Got != 2 {
		t.Fatalf("stats %+v, want 2 in use, 2 filling, 2 got", s)
	}
	p.Recycle(chain(b...))
}

// TestLedgerClockWraps: the ledger clock (54 bits of nanoseconds) wraps
// around instead of running out after 2^54 ns (208 days).
//
// A pool up for longer than that: a block indicated, returned and indicated
// again by the same holder must get two different ledger words, so that a
// returner that loaded the first word and was delayed (a stale double
// return) cannot take the block back from its second indication with its
// compare-and-swap (ABA).
//
// A pool whose clock wraps while a block is held: the block's age must be
// its real age.
func TestLedgerClockWraps(t *testing.T) {
	e := newEnv(t)
	p := e.pool(smallConfig())
	p.base = time.Now().Add(-time.Duration(maxStamp) - time.Hour)
	a := getN(t, p, 1)
	i := a[0].Index()
	p.MarkIndicated(a[0])
	stale := p.blocks[i].w.Load() // what the delayed returner loaded
	if err := p.Return(a[0]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond)
	b := getN(t, p, 1)
	if b[0] != a[0] {
		t.Fatalf("Get gave block %d, want %d (the last put back)", b[0].Index(), i)
	}
	p.MarkIndicated(b[0])
	w := p.blocks[i].w.Load()
	if w == stale {
		t.Errorf("block %d indicated twice, 1ms apart, by the same holder has the same ledger word %#x both times", i, w)
	}
	if p.blocks[i].w.CompareAndSwap(stale, stale&^stateMask|stReturned) { // Return's, with the stale word
		p.blocks[i].w.Store(w) // undo, so that the cleanup can free the pool
		t.Fatalf("a stale double return took block %d back from its second indication (ABA)", i)
	}
	if err := p.Return(b[0]); err != nil {
		t.Fatal(err)
	}

	const ahead = 50 * time.Millisecond
	p.base = time.Now().Add(-time.Duration(maxStamp) + ahead) // the clock wraps in 50ms
	c := getN(t, p, 1)
	p.MarkIndicated(c[0])
	marked := time.Now()
	if time.Since(p.base) > time.Duration(maxStamp) {
		t.Fatalf("the test took more than %s to indicate: the clock wrapped before it", ahead)
	}
	for time.Since(p.base) <= time.Duration(maxStamp)+ahead {
		time.Sleep(time.Millisecond)
	}
	wantMin := time.Since(marked)
	h := p.Held()
	if h.Indicated != 1 || h.Oldest < wantMin || h.Oldest > wantMin+time.Second {
		t.Errorf("Held = %+v: want 1 indicated, for %s or a little more (held across the wrap)", h, wantMin)
	}
	if err := p.Return(c[0]); err != nil {
		t.Fatal(err)
	}
}
