package rxpool

// Drain and the reports of what is held: the pool's side of the NDIS rule
// that halt waits for every indicated NBL to come back, with periodic
// diagnostics naming what is held and for how long.

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// HeldInfo says what of the pool is held, for Drain's reports and errors.
type HeldInfo struct {
	Pool      string
	Count     int           // blocks held: Indicated + Filling
	Indicated int           // blocks the stack holds (Drain waits for these)
	Filling   int           // blocks the filler holds (got, not indicated)
	Oldest    time.Duration // how long the oldest indicated block has been held
	Holders   []HolderInfo  // indicated blocks by holder, most first
	Blocks    []string      // the oldest indicated blocks, oldest first (at most 16)
	Waited    time.Duration // in Drain's reports and errors: how long Drain has waited
}

// HolderInfo is what one holder has.
type HolderInfo struct {
	Holder string
	Count  int
	Oldest time.Duration
}

// String reads like `3 blocks held: 3 indicated (the stack: 3, oldest
// 1.2s; blocks 4, 7, 9), 0 filling`.
func (h HeldInfo) String() string {
	if h.Count == 0 {
		return "nothing held"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d blocks held: %d indicated", h.Count, h.Indicated)
	if h.Indicated > 0 {
		b.WriteString(" (")
		for i, x := range h.Holders {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s: %d, oldest %s", x.Holder, x.Count, x.Oldest.Round(time.Millisecond))
		}
		b.WriteString("; ")
		b.WriteString(strings.Join(h.Blocks, ", "))
		if more := h.Indicated - len(h.Blocks); more > 0 {
			fmt.Fprintf(&b, " and %d more", more)
		}
		b.WriteString(")")
	}
	fmt.Fprintf(&b, ", %d filling", h.Filling)
	return b.String()
}

// Held walks the ledger and says what is held, by whom and for how long.
// It is for diagnostics (it walks every block and allocates), not the hot
// path.
func (p *Pool) Held() HeldInfo {
	p.fillMu.Lock()
	defer p.fillMu.Unlock()
	return p.held()
}

// held is Held with fillMu held.
func (p *Pool) held() HeldInfo {
	now := p.stamp()
	h := HeldInfo{Pool: p.cfg.Name}
	type ind struct {
		i   int
		age time.Duration
	}
	var inds []ind
	byHolder := map[string]*HolderInfo{}
	for i := range p.blocks {
		b := &p.blocks[i]
		if b.filling {
			h.Filling++
			continue
		}
		if w := b.w.Load(); w&stateMask == stIndicated {
			age := heldFor(now, w>>timeShift)
			inds = append(inds, ind{i, age})
			name := p.holderName(w)
			x := byHolder[name]
			if x == nil {
				x = &HolderInfo{Holder: name}
				byHolder[name] = x
			}
			x.Count++
			x.Oldest = max(x.Oldest, age)
			h.Oldest = max(h.Oldest, age)
		}
	}
	h.Indicated = len(inds)
	h.Count = h.Indicated + h.Filling
	for _, x := range byHolder {
		h.Holders = append(h.Holders, *x)
	}
	slices.SortFunc(h.Holders, func(a, b HolderInfo) int {
		if a.Count != b.Count {
			return b.Count - a.Count
		}
		return strings.Compare(a.Holder, b.Holder)
	})
	slices.SortStableFunc(inds, func(a, b ind) int {
		if c := cmp.Compare(b.age, a.age); c != 0 {
			return c
		}
		return cmp.Compare(a.i, b.i)
	})
	for _, x := range inds[:min(len(inds), maxNamed)] {
		h.Blocks = append(h.Blocks, p.blockName(x.i))
	}
	return h
}

// OnHeld sets the function Drain gives its reports to while it waits (nil:
// they are logged at Warn level through Config.Log).
func (p *Pool) OnHeld(fn func(HeldInfo)) {
	if fn == nil {
		p.onHeld.Store(nil)
		return
	}
	p.onHeld.Store(&fn)
}

func (p *Pool) report(h HeldInfo) {
	if h.Indicated == 0 {
		return
	}
	if fn := p.onHeld.Load(); fn != nil {
		(*fn)(h)
		return
	}
	p.cfg.Log.Warn("rxpool: waiting for receive blocks to come back", "pool", p.cfg.Name, "waited", h.Waited.Round(time.Millisecond), "held", h.String())
}

// Drain waits until no block is indicated and no Return is in flight:
// every indication has come back and every returned block is on its free
// list. While it waits it reports what is held (count, oldest age, by
// whom) through the OnHeld function or the log: at once, then every
// Config.ReportEvery. When ctx ends first it returns an error wrapping
// ErrHeld and ctx's error that names what is held; nothing is freed.
// Blocks the filler holds (filling) are not waited for, and new
// indications are not stopped: stop the filler first (the miniport's
// interrupt), as NDIS halt does.
func (p *Pool) Drain(ctx context.Context) error {
	if p.quiet() {
		return nil
	}
	start := time.Now()
	p.waiters.Add(1)
	defer p.waiters.Add(-1)
	tick := time.NewTicker(p.cfg.ReportEvery)
	defer tick.Stop()
	held := func() HeldInfo {
		h := p.Held()
		h.Waited = time.Since(start)
		return h
	}
	first := true
	for {
		// Take the channel before looking at the counts: a put that brings
		// them to zero after the look sees a waiter and closes this channel.
		ch := p.waitChan()
		if p.quiet() {
			return nil
		}
		if first {
			first = false
			p.report(held())
		}
		select {
		case <-ch:
		case <-tick.C:
			p.report(held())
		case <-ctx.Done():
			h := held()
			return fmt.Errorf("rxpool %q: drain gave up after %s: %w: %s (%w)", p.cfg.Name, h.Waited.Round(time.Millisecond), ErrHeld, h, ctx.Err())
		}
	}
}

func (p *Pool) waitChan() chan struct{} {
	p.waitMu.Lock()
	defer p.waitMu.Unlock()
	if p.waitCh == nil {
		p.waitCh = make(chan struct{})
	}
	return p.waitCh
}

// wake tells the Drain callers that the pool may be quiet.
func (p *Pool) wake() {
	p.waitMu.Lock()
	defer p.waitMu.Unlock()
	if p.waitCh != nil {
		close(p.waitCh)
		p.waitCh = nil
	}
}
