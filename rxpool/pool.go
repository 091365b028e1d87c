package rxpool

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// Errors of the pool's life cycle; they are wrapped with the pool's name.
var (
	ErrHeld  = errors.New("receive blocks still held")
	ErrFreed = errors.New("receive pool already freed")
)

// Pool is a live set of receive blocks (see the package doc for who owns a
// block when). Get, GetLarge, MarkIndicated and Recycle are the filler's:
// they take the filler lock once per call (uncontended with one filler).
// Return may be called from any goroutine at once and takes no lock.
// Stats, LowResources and Drain may be called from anywhere; Held and
// State take the filler lock briefly.
type Pool struct {
	cfg    Config // with defaults, sizes rounded
	nbls   *ndisshim.NBLPool
	base   time.Time                 // the ledger's clock starts here
	all    []*ndisshim.NetBufferList // by index
	blocks []block                   // by index: the ledger

	// fillMu serializes the filler's batch operations (Get, GetLarge,
	// MarkIndicated, Recycle) and guards block.filling and freed. Return
	// never takes it, except to name a refused block.
	fillMu    sync.Mutex
	freed     bool
	afterWalk func() // tests only: called by Get between its walk and its swap
	afterTake func() // tests only: called by Get right after it unlocks fillMu
	_         [CacheLine]byte

	reg   class // blocks 0 .. Count-1
	large class // blocks Count .. Count+LargeCount-1

	indicated atomic.Int64 // blocks of both classes in state indicated
	got       atomic.Int64 // blocks handed out by Get and GetLarge
	returned  atomic.Int64 // blocks taken back by Return
	recycled  atomic.Int64 // blocks taken back by Recycle

	doubleReturns  atomic.Int64
	foreignReturns atomic.Int64
	neverIndicated atomic.Int64
	badRecycles    atomic.Int64
	badMarks       atomic.Int64

	holderMu sync.Mutex
	holders  atomic.Pointer[[]string] // copy on write; index = holder id in the ledger word
	onHeld   atomic.Pointer[func(HeldInfo)]

	putters atomic.Int32 // Return calls in flight
	waiters atomic.Int32 // Drain calls waiting
	waitMu  sync.Mutex
	waitCh  chan struct{} // closed when indicated reaches 0 while someone waits
}

// class is one size class: its slab and its free list.
type class struct {
	first, size int // blocks first .. first+size-1
	bufSize     int
	slab        *ndisshim.SharedMemory
	_           [CacheLine]byte

	// head is the free list: a LIFO stack of blocks linked through
	// block.next (not through NBL.Next, which a buggy returner may rewrite
	// while the block is free).
	head atomic.Pointer[block]
	_    [CacheLine - 8]byte

	inUse       atomic.Int64 // filling + indicated
	highWater   atomic.Int64
	exhaustions atomic.Int64
	_           [CacheLine - 24]byte
}

// block is one receive block's bookkeeping.
type block struct {
	// w is the ledger word the returners see (see ledger.go): free,
	// indicated or returned, with the holder and time of the indication.
	w atomic.Uint64
	// next links the free list; written only by whoever owns the block
	// (a putter before its push, the taker under fillMu).
	next *block
	nbl  *ndisshim.NetBufferList
	// filling is set while the filler owns the block (got, not indicated,
	// not recycled); under fillMu.
	filling bool
}

// New makes a pool on res (the miniport's adapter resources): the slab(s),
// one NBL pool, and every NBL allocated from it, each pointed at its
// buffer. On failure it undoes what it did, in reverse, and returns the
// error; the verifier then sees nothing of it.
func New(res *ndisshim.Resources, cfg Config) (*Pool, error) {
	return newPool(res, cfg, nil)
}

// newPool is New with a failure injector for the tests: fail is called
// before each step and its error aborts New there.
func newPool(res *ndisshim.Resources, cfg Config, fail func(step string) error) (_ *Pool, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if res == nil {
		return nil, fmt.Errorf("rxpool %q: New: no resources to allocate from", cfg.name())
	}
	cfg = cfg.withDefaults()
	total := cfg.Count + cfg.LargeCount
	p := &Pool{cfg: cfg, base: time.Now()}
	p.reg = class{first: 0, size: cfg.Count, bufSize: cfg.BufferSize}
	p.large = class{first: cfg.Count, size: cfg.LargeCount, bufSize: cfg.LargeSize}
	p.holders.Store(&[]string{cfg.Holder})

	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	step := func(name string) error {
		if fail == nil {
			return nil
		}
		if err := fail(name); err != nil {
			return fmt.Errorf("rxpool %q: %s: %w", cfg.Name, name, err)
		}
		return nil
	}

	// 1. The slabs (NdisMAllocateSharedMemory).
	for _, c := range []*class{&p.reg, &p.large} {
		if c.size == 0 {
			continue
		}
		what := "slab"
		if c == &p.large {
			what = "large slab"
		}
		if err := step(what); err != nil {
			return nil, err
		}
		if c.slab, err = res.AllocateSharedMemory(c.size * c.bufSize); err != nil {
			return nil, fmt.Errorf("rxpool %q: %s of %d buffers of %d bytes: %w", cfg.Name, what, c.size, c.bufSize, err)
		}
		sm := c.slab
		undo = append(undo, func() { _ = sm.Free() })
	}

	// 2. The NBL pool (NdisAllocateNetBufferListPool), one NB per NBL.
	if err := step("NBL pool"); err != nil {
		return nil, err
	}
	if p.nbls, err = res.AllocateNBLPool(ndisshim.NBLPoolParams{Tag: cfg.Tag, Count: total, WithNB: true}); err != nil {
		return nil, fmt.Errorf("rxpool %q: NBL pool of %d: %w", cfg.Name, total, err)
	}
	undo = append(undo, func() { _ = p.nbls.Free() })

	// 3. Every NBL, for the pool's whole life (NdisAllocateNetBufferList).
	if err := step("NBLs"); err != nil {
		return nil, err
	}
	got := make([]*ndisshim.NetBufferList, total)
	k := p.nbls.AllocateBatch(got)
	undo = append(undo, func() { p.nbls.FreeChain(ndisshim.Chain(got[:k]...)) })
	if k != total {
		return nil, fmt.Errorf("rxpool %q: allocated %d of %d NBLs from %s", cfg.Name, k, total, p.nbls)
	}

	// 4. Point each NBL's buffer into its slab and build the free lists.
	if err := step("buffers"); err != nil {
		return nil, err
	}
	p.all = make([]*ndisshim.NetBufferList, total)
	for _, n := range got {
		i := n.Index()
		if n.Pool() != p.nbls || i < 0 || i >= total || p.all[i] != nil || n.FirstNB == nil {
			return nil, fmt.Errorf("rxpool %q: NBL pool gave NBL %d that does not fit (pool %v, FirstNB %v)", cfg.Name, i, n.Pool(), n.FirstNB != nil)
		}
		p.all[i] = n
	}
	p.blocks = make([]block, total)
	for _, c := range []*class{&p.reg, &p.large} {
		var head *block
		for j := c.size - 1; j >= 0; j-- { // so that Get hands out first, first+1, ...
			i := c.first + j
			n := p.all[i]
			off := j * c.bufSize
			nb := n.FirstNB
			nb.Data = c.slab.Bytes[off : off+c.bufSize : off+c.bufSize]
			nb.Offset, nb.Length, nb.Next = cfg.Headroom, 0, nil
			n.Next = nil
			b := &p.blocks[i]
			b.nbl, b.next = n, head
			head = b
		}
		c.head.Store(head)
	}
	return p, nil
}

// Config returns the pool's configuration, with defaults filled and the
// buffer sizes rounded up.
func (p *Pool) Config() Config { return p.cfg }

// Name is the pool's name (Config.Name).
func (p *Pool) Name() string { return p.cfg.Name }

// LowResources reports whether the free regular blocks are at or below the
// low-water mark: the miniport then indicates with RESOURCES and recycles
// the chain as soon as IndicateReceive returns.
func (p *Pool) LowResources() bool {
	return int64(p.reg.size)-p.reg.inUse.Load() <= int64(p.cfg.LowWater)
}

// ClassStats are the counters of one size class.
type ClassStats struct {
	Size        int   // blocks in the class
	Free        int   // on the free list now
	InUse       int   // held now (filling + indicated)
	HighWater   int   // the most held at once
	Exhaustions int64 // Get calls that found no free block
}

// Stats is a snapshot of the pool's counters. The top-level Size, Free,
// InUse, HighWater and Exhaustions are those of the regular class.
type Stats struct {
	Name        string
	Size        int
	Free        int
	InUse       int
	HighWater   int
	Exhaustions int64
	Large       ClassStats // zero when there is no large class

	Indicated int // blocks of both classes the stack holds now
	Filling   int // blocks of both classes got and not yet indicated (or indicated with RESOURCES)

	Got      int64 // blocks handed out by Get and GetLarge
	Returned int64 // blocks taken back by Return
	Recycled int64 // blocks taken back by Recycle

	DoubleReturns  int64 // blocks Return refused because they were not indicated (free or returned)
	ForeignReturns int64 // NBLs Return refused because they are not this pool's
	NeverIndicated int64 // blocks Return refused because they were got and never indicated
	BadRecycles    int64 // NBLs Recycle refused (free, returned, or not this pool's)
	BadMarks       int64 // NBLs MarkIndicated refused (not filling, or not this pool's)
}

func (c *class) stats() ClassStats {
	in := int(c.inUse.Load())
	return ClassStats{Size: c.size, Free: c.size - in, InUse: in, HighWater: int(c.highWater.Load()), Exhaustions: c.exhaustions.Load()}
}

// Stats returns the pool's counters. Each is read atomically; together
// they are a snapshot only when the pool is quiet.
func (p *Pool) Stats() Stats {
	r := p.reg.stats()
	s := Stats{Name: p.cfg.Name, Size: r.Size, Free: r.Free, InUse: r.InUse, HighWater: r.HighWater, Exhaustions: r.Exhaustions,
		Indicated: int(p.indicated.Load()),
		Got:       p.got.Load(), Returned: p.returned.Load(), Recycled: p.recycled.Load(),
		DoubleReturns: p.doubleReturns.Load(), ForeignReturns: p.foreignReturns.Load(), NeverIndicated: p.neverIndicated.Load(),
		BadRecycles: p.badRecycles.Load(), BadMarks: p.badMarks.Load(),
	}
	if p.large.size > 0 {
		s.Large = p.large.stats()
	}
	s.Filling = s.InUse + s.Large.InUse - s.Indicated
	if s.Filling < 0 { // counters read at slightly different moments
		s.Filling = 0
	}
	return s
}

// Free releases the pool in the reverse order of New: every NBL back to the
// NBL pool (NdisFreeNetBufferList), the NBL pool
// (NdisFreeNetBufferListPool), then the slabs (NdisMFreeSharedMemory). It
// refuses, with an error wrapping ErrHeld that names the blocks, while any
// block is held (filling or indicated): call Drain first. A second Free
// returns an error wrapping ErrFreed. If the shim refuses to free the NBL
// pool, the slabs are left mapped (something may still point into them)
// and the error says so; the verifier reports them at halt.
func (p *Pool) Free() error {
	p.fillMu.Lock()
	defer p.fillMu.Unlock()
	if p.freed {
		return fmt.Errorf("rxpool %q: free: %w", p.cfg.Name, ErrFreed)
	}
	if p.reg.inUse.Load()+p.large.inUse.Load() > 0 || !p.quiet() {
		return fmt.Errorf("rxpool %q: free refused: %w: %s (%d returns in progress)", p.cfg.Name, ErrHeld, p.held(), p.putters.Load())
	}
	p.freed = true
	p.reg.head.Store(nil)
	p.large.head.Store(nil)

	// 1. The NBLs, with their buffers unhooked from the slab first, so a
	// stale user panics on a nil slice instead of faulting on unmapped memory.
	var chain *ndisshim.NetBufferList
	for i := len(p.all) - 1; i >= 0; i-- {
		n := p.all[i]
		n.FirstNB.Data, n.FirstNB.Offset, n.FirstNB.Length = nil, 0, 0
		n.Next = chain
		chain = n
	}
	p.nbls.FreeChain(chain)
	// 2. The NBL pool.
	if err := p.nbls.Free(); err != nil {
		return fmt.Errorf("rxpool %q: free NBL pool (slabs left mapped): %w", p.cfg.Name, err)
	}
	// 3. The slabs, large first (the reverse of New).
	var errs []error
	for _, c := range []*class{&p.large, &p.reg} {
		if c.slab != nil {
			if err := c.slab.Free(); err != nil {
				errs = append(errs, fmt.Errorf("rxpool %q: free slab: %w", p.cfg.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}
