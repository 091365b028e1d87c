package ndisshim

import (
	"fmt"
	"sync"
	"time"
)

// NBL ledger states (NetBufferList.state).
const (
	nblFree      uint32 = iota // in its pool's free list
	nblOwned                   // allocated: owned by the driver that allocated it
	nblIndicated               // indicated up without RESOURCES: the protocol owns it
	nblSent                    // sent down: the miniport owns it until completion
)

func stateName(s uint32) string {
	switch s {
	case nblFree:
		return "free"
	case nblOwned:
		return "owned by its allocator"
	case nblIndicated:
		return "indicated"
	case nblSent:
		return "sent"
	}
	return fmt.Sprintf("state %d", s)
}

// NBLPoolParams describes an NBL pool (NET_BUFFER_LIST_POOL_PARAMETERS).
type NBLPoolParams struct {
	Tag   Tag // PoolTag
	Count int // how many NBLs to preallocate; the pool never grows
	// WithNB allocates one NetBuffer with each NBL
	// (fAllocateNetBuffer), so FirstNB is set on allocation. Its Data is nil:
	// the driver points it into its own buffers.
	WithNB bool
}

// NBLPool is a fixed set of preallocated NBLs (NdisAllocateNetBufferListPool).
// Allocate and FreeNBL take a mutex; the receive fast path (rxpool) keeps its
// NBLs allocated for the pool's whole life and recycles them itself.
type NBLPool struct {
	params NBLPoolParams
	owner  *Resources
	nbls   []NetBufferList
	where  string
	at     time.Time

	mu    sync.Mutex
	free  []int32 // stack of free indices
	freed bool
}

// AllocateNBLPool makes a pool of p.Count NBLs owned by r's adapter or binding.
func (r *Resources) AllocateNBLPool(p NBLPoolParams) (*NBLPool, error) {
	if p.Count <= 0 {
		return nil, fmt.Errorf("ndisshim: NBL pool %s with %d NBLs: count must be positive", p.Tag, p.Count)
	}
	if err := r.live("AllocateNBLPool"); err != nil {
		return nil, err
	}
	pool := &NBLPool{params: p, owner: r, nbls: make([]NetBufferList, p.Count), free: make([]int32, p.Count),
		where: callerSite(1), at: time.Now()}
	for i := range pool.nbls {
		n := &pool.nbls[i]
		n.pool = pool
		n.index = int32(i)
		n.bindingIdx.Store(-1)
		if p.WithNB {
			n.FirstNB = &n.nb
		}
		pool.free[i] = int32(p.Count - 1 - i) // pop order 0, 1, 2 ...
	}
	r.mu.Lock()
	r.pools[pool] = struct{}{}
	r.mu.Unlock()
	return pool, nil
}

func (p *NBLPool) String() string {
	return fmt.Sprintf("NBL pool %q of %s", p.params.Tag, p.owner.name)
}

// Size is the number of NBLs in the pool.
func (p *NBLPool) Size() int { return len(p.nbls) }

// InUse is the number of NBLs allocated from the pool now.
func (p *NBLPool) InUse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.nbls) - len(p.free)
}

// NBL returns the pool's i-th NBL, whatever its state (for ledgers that map
// an index back to their own block; not an allocation).
func (p *NBLPool) NBL(i int) *NetBufferList { return &p.nbls[i] }

func (p *NBLPool) reset(n *NetBufferList) {
	n.Next = nil
	n.SourceHandle = nil
	n.Status = StatusSuccess
	n.Info = NBLInfo{}
	n.MiniportReserved = [2]uintptr{}
	n.ProtocolReserved = [4]uintptr{}
	if p.params.WithNB {
		n.nb.Next = nil
		n.FirstNB = &n.nb
	} else {
		n.FirstNB = nil
	}
}

// Allocate takes one NBL from the pool (NdisAllocateNetBufferList); nil when
// the pool is empty. The caller owns it until FreeNBL.
func (p *NBLPool) Allocate() *NetBufferList {
	p.mu.Lock()
	if len(p.free) == 0 || p.freed {
		p.mu.Unlock()
		return nil
	}
	i := p.free[len(p.free)-1]
	p.free = p.free[:len(p.free)-1]
	p.mu.Unlock()
	n := &p.nbls[i]
	p.reset(n)
	n.state.Store(nblOwned)
	return n
}

// AllocateBatch fills dst with up to len(dst) NBLs and returns how many.
func (p *NBLPool) AllocateBatch(dst []*NetBufferList) int {
	p.mu.Lock()
	k := len(dst)
	if k > len(p.free) {
		k = len(p.free)
	}
	if p.freed {
		k = 0
	}
	for j := 0; j < k; j++ {
		dst[j] = &p.nbls[p.free[len(p.free)-1-j]]
	}
	p.free = p.free[:len(p.free)-k]
	p.mu.Unlock()
	for j := 0; j < k; j++ {
		p.reset(dst[j])
		dst[j].state.Store(nblOwned)
	}
	return k
}

// FreeNBL puts an NBL the caller owns back in its pool (NdisFreeNetBufferList).
// Freeing an NBL that is not owned (still indicated, sent, or already free)
// is a verifier finding and the NBL is left where it is.
func (p *NBLPool) FreeNBL(n *NetBufferList) {
	if n.pool != p {
		p.owner.v.Record(Finding{Kind: FindBadFree, Object: fmt.Sprintf("NBL %d", n.index), Where: callerSite(1), Detail: "freed to " + p.String() + ", not its own pool"})
		return
	}
	if !n.state.CompareAndSwap(nblOwned, nblFree) {
		p.owner.v.Record(Finding{Kind: FindBadFree, Object: fmt.Sprintf("NBL %d of %s", n.index, p), Where: callerSite(1), Detail: "freed while " + stateName(n.state.Load())})
		return
	}
	n.Next = nil
	p.mu.Lock()
	p.free = append(p.free, n.index)
	p.mu.Unlock()
}

// FreeChain frees every NBL of a chain (each must belong to p and be owned
// by the caller), taking the pool's lock once for the whole chain.
func (p *NBLPool) FreeChain(head *NetBufferList) {
	var ok *NetBufferList
	for head != nil {
		next := head.Next
		switch {
		case head.pool != p:
			p.owner.v.Record(Finding{Kind: FindBadFree, Object: fmt.Sprintf("NBL %d", head.index), Where: callerSite(1), Detail: "freed to " + p.String() + ", not its own pool"})
		case !head.state.CompareAndSwap(nblOwned, nblFree):
			p.owner.v.Record(Finding{Kind: FindBadFree, Object: fmt.Sprintf("NBL %d of %s", head.index, p), Where: callerSite(1), Detail: "freed while " + stateName(head.state.Load())})
		default:
			head.Next = ok
			ok = head
		}
		head = next
	}
	p.mu.Lock()
	for ; ok != nil; ok = ok.Next {
		p.free = append(p.free, ok.index)
	}
	p.mu.Unlock()
}

// Free releases the pool (NdisFreeNetBufferListPool). It refuses, with a
// verifier finding, while any NBL is still allocated: freeing a pool whose
// NBLs are held would hand their memory to whoever holds them.
func (p *NBLPool) Free() error {
	p.mu.Lock()
	if p.freed {
		p.mu.Unlock()
		return fmt.Errorf("ndisshim: %s freed twice", p)
	}
	out := len(p.nbls) - len(p.free)
	if out > 0 {
		p.mu.Unlock()
		f := Finding{Kind: FindPoolFreedInUse, Object: p.String(), Where: callerSite(1), Detail: fmt.Sprintf("%d NBLs still allocated", out)}
		p.owner.v.Record(f)
		return fmt.Errorf("ndisshim: free %s: %d NBLs still allocated: %w", p, out, ErrPoolInUse)
	}
	p.freed = true
	p.mu.Unlock()
	r := p.owner
	r.mu.Lock()
	delete(r.pools, p)
	r.mu.Unlock()
	return nil
}

// heldFindings lists the pool's NBLs that are still indicated or sent.
func (p *NBLPool) heldFindings(now time.Time) []Finding {
	var fs []Finding
	for i := range p.nbls {
		n := &p.nbls[i]
		s := n.state.Load()
		if s == nblIndicated || s == nblSent {
			fs = append(fs, Finding{Kind: FindHeldNBL, Object: fmt.Sprintf("NBL %d of %s", i, p), Age: time.Duration(nanotime() - n.heldSince.Load()),
				Detail: stateName(s)})
		}
	}
	_ = now
	return fs
}
