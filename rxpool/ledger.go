package rxpool

// The hot path: Get, MarkIndicated, Return, Recycle.
//
// What the returners can see of a block is one atomic word:
//
//	bits 0-1   state: free, indicated or returned
//	bits 2-9   holder id (index into Pool.holders) of the indication
//	bits 10-63 nanoseconds since Pool.base when it was indicated, modulo
//	           2^54 (about 208 days)
//
// The clock wraps around rather than stopping at 2^54: a stopped clock
// would give two indications of a block by the same holder the same word,
// and a returner that loaded the first and was delayed would then win its
// compare-and-swap against the second (ABA). Ages are differences modulo
// 2^54, right for anything held less than 208 days.
//
// so marking a block indicated, with its holder and time, is one atomic
// store, and taking it back is one compare-and-swap that exactly one of two
// racing returners wins. "Filling" is the filler's business: a flag in the
// block under the filler lock (fillMu), which the filler holds for each of
// its batch operations. So Get costs no atomic operation per block, and a
// block that is got again keeps its word (free or returned) until it is
// marked indicated.

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// BlockState is a block's state in the ledger.
type BlockState uint8

// The block states.
const (
	StateFree      BlockState = iota // on the free list (never got, or recycled)
	StateFilling                     // got by the filler, not indicated
	StateIndicated                   // indicated up without RESOURCES: the stack holds it
	StateReturned                    // returned by the stack, on the free list
)

func (s BlockState) String() string {
	switch s {
	case StateFree:
		return "free"
	case StateFilling:
		return "filling"
	case StateIndicated:
		return "indicated"
	case StateReturned:
		return "returned"
	}
	return fmt.Sprintf("state %d", s)
}

const (
	stateMask   = 3
	holderShift = 2
	holderBits  = 8
	timeShift   = holderShift + holderBits
	maxStamp    = 1<<(64-timeShift) - 1

	// The word's states; "filling" is block.filling, never in the word.
	stFree      = uint64(StateFree)
	stIndicated = uint64(StateIndicated)
	stReturned  = uint64(StateReturned)
)

// Ledger errors: a LedgerError wraps one of these for each kind of block
// it names, so errors.Is works on it.
var (
	ErrDoubleReturn   = errors.New("returned while not indicated (double return)")
	ErrNeverIndicated = errors.New("returned but never indicated")
	ErrForeign        = errors.New("not a block of this pool")
	ErrNotHeld        = errors.New("recycled while not held (double recycle)")
	ErrNotFilling     = errors.New("marked indicated while not filling")
)

// stamp is the ledger's clock: nanoseconds since the pool was made, modulo
// 2^54 (see the top of the file).
func (p *Pool) stamp() uint64 {
	d := time.Since(p.base)
	if d < 0 {
		return 0
	}
	return uint64(d) & maxStamp
}

// heldFor is how long before now (a stamp) a block was stamped then.
func heldFor(now, then uint64) time.Duration {
	return time.Duration((now - then) & maxStamp)
}

// index maps an NBL to its block: the NBL's index in the pool's NBL pool.
func (p *Pool) index(n *ndisshim.NetBufferList) (int, bool) {
	if n.Pool() != p.nbls {
		return 0, false
	}
	return n.Index(), true
}

// State returns the ledger state of nbl's block, and false when nbl is not
// one of the pool's. It is for tests and diagnostics (it takes the filler
// lock).
func (p *Pool) State(nbl *ndisshim.NetBufferList) (BlockState, bool) {
	i, ok := p.index(nbl)
	if !ok {
		return 0, false
	}
	p.fillMu.Lock()
	defer p.fillMu.Unlock()
	b := &p.blocks[i]
	if b.filling {
		return StateFilling, true
	}
	return BlockState(b.w.Load() & stateMask), true
}

// Get takes up to len(dst) free regular blocks in one operation, puts their
// NBLs in dst and returns how many. The caller (the filler) owns them from
// now on (state filling) until MarkIndicated or Recycle. Each NBL comes
// with Next nil, Status success and Info zero (Return and Recycle clear
// the last two), and FirstNB.Data is its block's whole buffer: the filler puts the
// frame at Data[Headroom:] and sets FirstNB.Offset and Length (SetBytes).
// The most recently put back blocks come first (LIFO).
// Get never waits for a returner; when no block is free it counts an
// exhaustion and returns 0. Fillers are serialized, so several may share a
// pool, at the cost of waiting for each other.
func (p *Pool) Get(dst []*ndisshim.NetBufferList) int { return p.take(&p.reg, dst) }

// GetLarge is Get for the large class (LargeSize buffers, for offload
// frames); it returns 0 when the pool has no large class.
func (p *Pool) GetLarge(dst []*ndisshim.NetBufferList) int {
	if p.large.size == 0 {
		return 0
	}
	return p.take(&p.large, dst)
}

func (p *Pool) take(c *class, dst []*ndisshim.NetBufferList) int {
	if len(dst) == 0 {
		return 0
	}
	p.fillMu.Lock()
	if p.freed {
		p.fillMu.Unlock()
		return 0
	}
	// Only the taker (under fillMu) removes blocks; returners only push on
	// top. So everything from h down is the taker's, however many pushes
	// land meanwhile (and h cannot leave and come back: no ABA), and the
	// blocks can be flagged as they are walked.
	h := c.head.Load()
	b := h
	k := 0
	for ; b != nil && k < len(dst); k++ {
		b.filling = true
		n := b.nbl
		n.Next = nil
		dst[k] = n
		b = b.next
	}
	if p.afterWalk != nil {
		p.afterWalk() // tests: a push between the walk and the swap
	}
	if k > 0 && !c.head.CompareAndSwap(h, b) {
		// Runs were pushed on top of h: cut h..b out from under them. The
		// block right above h is in the stack, so no putter touches its
		// link any more.
		t := c.head.Load()
		for t.next != h {
			t = t.next
		}
		t.next = b
	}
	// Count the blocks in use before letting go of fillMu: Free (under
	// fillMu) refuses only while inUse > 0, so counting after the unlock
	// would let a Free in between free the pool under the filler.
	if k > 0 {
		v := c.inUse.Add(int64(k))
		for hw := c.highWater.Load(); v > hw && !c.highWater.CompareAndSwap(hw, v); hw = c.highWater.Load() {
		}
		p.got.Add(int64(k))
	}
	p.fillMu.Unlock()
	if p.afterTake != nil {
		p.afterTake() // tests: a Free right after the unlock must be refused
	}
	if k == 0 {
		c.exhaustions.Add(1)
	}
	return k
}

// MarkIndicated records that the chain (blocks the filler got and filled)
// is being indicated up without RESOURCES: each block goes from filling to
// indicated, stamped with the time (one clock read for the chain) and the
// default holder (Config.Holder). Call it just before IndicateReceive: from
// then on the stack owns the blocks until Return. If the indication fails,
// Recycle the chain. A block that is not filling is counted (BadMarks),
// logged, and left as it is.
func (p *Pool) MarkIndicated(head *ndisshim.NetBufferList) { p.mark(head, 0) }

// MarkIndicatedBy is MarkIndicated naming the holder for Drain's reports
// (e.g. the protocol the chain goes to). A pool remembers up to 255
// distinct holder names; more are reported as "other holders".
func (p *Pool) MarkIndicatedBy(head *ndisshim.NetBufferList, holder string) {
	p.mark(head, p.holderID(holder))
}

func (p *Pool) mark(head *ndisshim.NetBufferList, holder uint64) {
	if head == nil {
		return
	}
	w := p.stamp()<<timeShift | holder<<holderShift | stIndicated
	var k int64
	var bad *LedgerError
	p.fillMu.Lock()
	for n := head; n != nil; n = n.Next {
		i, ok := p.index(n)
		if !ok {
			bad = p.refuse(bad, opMark, n, -1)
			continue
		}
		b := &p.blocks[i]
		if !b.filling {
			bad = p.refuse(bad, opMark, n, i)
			continue
		}
		b.filling = false
		b.w.Store(w)
		k++
	}
	p.indicated.Add(k)
	p.fillMu.Unlock()
	if bad != nil {
		bad.Chain = int(k) + bad.Total
		p.cfg.Log.Error("rxpool: bad MarkIndicated", "pool", p.cfg.Name, "err", bad)
	}
}

// Return takes back a chain the stack returned (the miniport's
// ReturnNetBufferLists calls it, MiniportReturnNetBufferLists): any order,
// mixing several indications, regular and large blocks, in one operation
// that takes no lock. Ownership of every good block passes to the pool
// (indicated → returned, on the free list); the caller must not touch them
// again. A block that is not indicated (returned twice, or free), one that
// was got but never indicated, and an NBL of another pool are not taken:
// they are counted, left as they are, and named in the one *LedgerError
// returned for the chain.
func (p *Pool) Return(head *ndisshim.NetBufferList) error {
	p.putters.Add(1)
	var reg, lrg list
	var bad *LedgerError
	var next *ndisshim.NetBufferList
	for n := head; n != nil; n = next {
		next = n.Next
		i, ok := p.index(n)
		if !ok {
			bad = p.refuse(bad, opReturn, n, -1)
			continue
		}
		b := &p.blocks[i]
		old := b.w.Load()
		// Keep the holder and time: a later double return's error says them.
		if old&stateMask != stIndicated || !b.w.CompareAndSwap(old, old&^stateMask|stReturned) {
			bad = p.refuse(bad, opReturn, n, i)
			continue
		}
		reset(n)
		if i < p.large.first {
			reg.add(b)
		} else {
			lrg.add(b)
		}
	}
	p.putBack(&reg, &lrg, reg.n+lrg.n)
	p.returned.Add(reg.n + lrg.n)
	p.putters.Add(-1)
	p.maybeWake()
	if bad != nil {
		bad.Chain = int(reg.n+lrg.n) + bad.Total
		return bad
	}
	return nil
}

// Recycle takes back a chain the filler owns: blocks got but not indicated
// (a dropped frame, a short read, an indication with RESOURCES that
// returned), or blocks marked indicated whose indication failed (filling
// or indicated → free). A block that is already free, and an NBL of another
// pool, is counted (BadRecycles), logged, and left as it is.
func (p *Pool) Recycle(head *ndisshim.NetBufferList) {
	var reg, lrg list
	var ind int64
	var bad *LedgerError
	var next *ndisshim.NetBufferList
	p.fillMu.Lock()
	for n := head; n != nil; n = next {
		next = n.Next
		i, ok := p.index(n)
		if !ok {
			bad = p.refuse(bad, opRecycle, n, -1)
			continue
		}
		b := &p.blocks[i]
		switch old := b.w.Load(); {
		case b.filling:
			b.filling = false
			if old != stFree {
				b.w.Store(stFree)
			}
		case old&stateMask == stIndicated && b.w.CompareAndSwap(old, stFree):
			ind++
		default:
			bad = p.refuse(bad, opRecycle, n, i)
			continue
		}
		reset(n)
		if i < p.large.first {
			reg.add(b)
		} else {
			lrg.add(b)
		}
	}
	p.putBack(&reg, &lrg, ind) // under fillMu, so that Free cannot run in between
	p.recycled.Add(reg.n + lrg.n)
	p.fillMu.Unlock()
	if ind > 0 {
		p.maybeWake()
	}
	if bad != nil {
		bad.Chain = int(reg.n+lrg.n) + bad.Total
		p.cfg.Log.Error("rxpool: bad Recycle", "pool", p.cfg.Name, "err", bad)
	}
}

// reset clears what the last owner may have left in an NBL that goes back
// on the free list: the status and the out-of-band info (on the NBL's first
// cache line, which the putter has just read). Not Next: a second,
// mistaken returner of the same NBL may be reading it right now to walk
// its chain; Get clears it.
func reset(n *ndisshim.NetBufferList) {
	n.Status = ndisshim.StatusSuccess
	n.Info = ndisshim.NBLInfo{}
}

// list is a run of blocks being put back, linked through block.next.
type list struct {
	head, tail *block
	n          int64
}

func (l *list) add(b *block) {
	b.next = l.head
	if l.tail == nil {
		l.tail = b
	}
	l.head = b
	l.n++
}

// push puts l on top of c's free list with one compare-and-swap.
func (c *class) push(l *list) {
	for {
		old := c.head.Load()
		l.tail.next = old
		if c.head.CompareAndSwap(old, l.head) {
			return
		}
	}
}

// putBack counts the runs' blocks out of "in use" and ind of them out of
// "indicated", then pushes the runs. Counting first means no counter ever
// counts a block twice (Get may take a block again as soon as it is
// pushed); Drain and Free also wait for the putters in flight, so they never
// see the counters at zero while a block is still on its way to its list.
func (p *Pool) putBack(reg, lrg *list, ind int64) {
	if reg.n > 0 {
		p.reg.inUse.Add(-reg.n)
	}
	if lrg.n > 0 {
		p.large.inUse.Add(-lrg.n)
	}
	if ind > 0 {
		p.indicated.Add(-ind)
	}
	if reg.n > 0 {
		p.reg.push(reg)
	}
	if lrg.n > 0 {
		p.large.push(lrg)
	}
}

// quiet reports whether no block is indicated and no Return is in flight.
func (p *Pool) quiet() bool { return p.indicated.Load() == 0 && p.putters.Load() == 0 }

// maybeWake wakes Drain if the pool has just become quiet.
func (p *Pool) maybeWake() {
	if p.waiters.Load() > 0 && p.quiet() {
		p.wake()
	}
}

type op uint8

const (
	opReturn op = iota
	opRecycle
	opMark
)

func (o op) String() string {
	return [...]string{"Return", "Recycle", "MarkIndicated"}[o]
}

// BadBlock is one block (or NBL) a ledger operation refused.
type BadBlock struct {
	Err   error  // ErrDoubleReturn, ErrNeverIndicated, ErrForeign, ErrNotHeld or ErrNotFilling
	Block string // "block 5", "large block 2", or the foreign NBL's name
	State string // the state it was found in, with its holder and age when indicated
}

// LedgerError is the one error for a chain that Return (or Recycle, or
// MarkIndicated) could not take whole: it names the refused blocks.
type LedgerError struct {
	Pool  string
	Op    string     // "Return", "Recycle", "MarkIndicated"
	Chain int        // NBLs in the chain
	Total int        // NBLs refused
	Bad   []BadBlock // the first maxNamed of them
}

const maxNamed = 16

func (e *LedgerError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rxpool %q: %s refused %d of %d NBLs", e.Pool, e.Op, e.Total, e.Chain)
	for i, x := range e.Bad {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s %v (%s)", x.Block, x.Err, x.State)
	}
	if more := e.Total - len(e.Bad); more > 0 {
		fmt.Fprintf(&b, "; and %d more", more)
	}
	return b.String()
}

// Unwrap gives the distinct kinds of refusal, for errors.Is.
func (e *LedgerError) Unwrap() []error {
	var kinds []error
	for _, x := range e.Bad {
		if !slices.Contains(kinds, x.Err) {
			kinds = append(kinds, x.Err)
		}
	}
	return kinds
}

// refuse counts a refused NBL and adds it to bad (made on first use). i is
// -1 for an NBL of another pool. Only Return calls it without fillMu held.
func (p *Pool) refuse(bad *LedgerError, o op, n *ndisshim.NetBufferList, i int) *LedgerError {
	if bad == nil {
		bad = &LedgerError{Pool: p.cfg.Name, Op: o.String()}
	}
	x := BadBlock{}
	if i < 0 {
		x.Err, x.Block, x.State = ErrForeign, foreignName(n), "not in "+p.String()
	} else {
		b := &p.blocks[i]
		var filling bool
		if o == opReturn {
			p.fillMu.Lock()
			filling = b.filling
			p.fillMu.Unlock()
		} else {
			filling = b.filling
		}
		x.Block, x.State = p.blockName(i), p.describe(b.w.Load(), filling)
		switch {
		case o == opReturn && filling:
			x.Err = ErrNeverIndicated
		case o == opReturn:
			x.Err = ErrDoubleReturn
		case o == opRecycle:
			x.Err = ErrNotHeld
		default:
			x.Err = ErrNotFilling
		}
	}
	switch {
	case o == opMark:
		p.badMarks.Add(1)
	case o == opRecycle:
		p.badRecycles.Add(1)
	case x.Err == ErrForeign:
		p.foreignReturns.Add(1)
	case x.Err == ErrNeverIndicated:
		p.neverIndicated.Add(1)
	default:
		p.doubleReturns.Add(1)
	}
	bad.Total++
	if len(bad.Bad) < maxNamed {
		bad.Bad = append(bad.Bad, x)
	}
	return bad
}

func (p *Pool) String() string { return fmt.Sprintf("receive pool %q", p.cfg.Name) }

func foreignName(n *ndisshim.NetBufferList) string {
	if n.Pool() == nil {
		return "an NBL of no pool"
	}
	return fmt.Sprintf("NBL %d of %s", n.Index(), n.Pool())
}

// blockName names block i for reports: "block 5" or "large block 2".
func (p *Pool) blockName(i int) string {
	if i >= p.large.first {
		return fmt.Sprintf("large block %d", i-p.large.first)
	}
	return fmt.Sprintf("block %d", i)
}

// describe spells out a block's state: "indicated to the stack 12ms ago".
func (p *Pool) describe(w uint64, filling bool) string {
	if filling {
		return "filling: got, not indicated"
	}
	st := BlockState(w & stateMask)
	switch st {
	case StateIndicated, StateReturned:
		a := heldFor(p.stamp(), w>>timeShift)
		verb := "indicated"
		if st == StateReturned {
			verb = "returned, last indicated"
		}
		return fmt.Sprintf("%s to %s %s ago", verb, p.holderName(w), a.Round(time.Microsecond))
	}
	return st.String()
}

// holderID interns a holder name; the first call for a name allocates.
func (p *Pool) holderID(name string) uint64 {
	hs := *p.holders.Load()
	for i, h := range hs {
		if h == name {
			return uint64(i)
		}
	}
	p.holderMu.Lock()
	defer p.holderMu.Unlock()
	hs = *p.holders.Load()
	for i, h := range hs {
		if h == name {
			return uint64(i)
		}
	}
	if len(hs) >= maxHolders-1 {
		return maxHolders - 1 // "other holders"
	}
	nh := append(slices.Clip(hs), name)
	p.holders.Store(&nh)
	return uint64(len(nh) - 1)
}

func (p *Pool) holderName(w uint64) string {
	id := int(w>>holderShift) & (maxHolders - 1)
	if hs := *p.holders.Load(); id < len(hs) {
		return hs[id]
	}
	return "other holders"
}
