package ndisshim

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Held is what one holder has of an adapter's NBLs while pause or halt waits.
type Held struct {
	Holder string // "hoststack" (a binding) or the miniport's name
	What   string // "receive indications" or "sends"
	Count  int
	Oldest time.Duration // how long the oldest of them has been held
}

// HeldReport is the watchdog's report: what pause or halt is waiting for.
type HeldReport struct {
	Phase   string // "pause" or "halt"
	Adapter string
	Waited  time.Duration
	Held    []Held
	// Calls is how many receive indications are still running in a
	// protocol's handler (their NBLs may be back already), CallsIn the
	// binding that gets them.
	Calls   int
	CallsIn string
}

// Total is the number of NBLs held, plus the indicate calls still
// running: what the wait is for.
func (r HeldReport) Total() int {
	t := r.Calls
	for _, h := range r.Held {
		t += h.Count
	}
	return t
}

// String reads like "37 receive indications held by hoststack, oldest
// 42ms", with "; 1 receive handler call running in hoststack" while one is.
func (r HeldReport) String() string {
	if r.Total() == 0 {
		return "nothing held"
	}
	parts := make([]string, 0, len(r.Held)+1)
	for _, h := range r.Held {
		parts = append(parts, fmt.Sprintf("%d %s held by %s, oldest %s", h.Count, h.What, h.Holder, h.Oldest.Round(time.Millisecond)))
	}
	if r.Calls > 0 {
		noun := "calls"
		if r.Calls == 1 {
			noun = "call"
		}
		parts = append(parts, fmt.Sprintf("%d receive handler %s running in %s", r.Calls, noun, r.CallsIn))
	}
	return strings.Join(parts, "; ")
}

// HeldReport walks the ledger: which binding holds which receive NBLs, and
// which sends the miniport still holds, with their ages. It is for
// diagnostics (it takes locks and walks every pool), not the hot path.
func (a *Adapter) HeldReport(phase string, since time.Time) HeldReport {
	now := nanotime()
	type key struct {
		holder, what string
	}
	agg := map[key]*Held{}
	add := func(k key, age time.Duration) {
		h := agg[k]
		if h == nil {
			h = &Held{Holder: k.holder, What: k.what}
			agg[k] = h
		}
		h.Count++
		if age > h.Oldest {
			h.Oldest = age
		}
	}
	a.bindMu.Lock()
	binds := append([]*Binding(nil), a.allBinds...)
	a.bindMu.Unlock()
	bindName := func(i int32) string {
		if i >= 0 && int(i) < len(binds) {
			return binds[i].name
		}
		return "?"
	}
	walk := func(r *Resources, what string, want uint32, holder func(*NetBufferList) string) {
		r.mu.Lock()
		pools := make([]*NBLPool, 0, len(r.pools))
		for p := range r.pools {
			pools = append(pools, p)
		}
		r.mu.Unlock()
		for _, p := range pools {
			for i := range p.nbls {
				n := &p.nbls[i]
				if n.state.Load() == want {
					add(key{holder(n), what}, time.Duration(now-n.heldSince.Load()))
				}
			}
		}
	}
	walk(&a.Resources, "receive indications", nblIndicated, func(n *NetBufferList) string { return bindName(n.bindingIdx.Load()) })
	for _, b := range binds {
		walk(&b.Resources, "sends", nblSent, func(*NetBufferList) string { return "miniport " + a.name })
	}
	r := HeldReport{Phase: phase, Adapter: a.name, Waited: time.Since(since), Calls: int(a.rxCalls.Load())}
	if bs := *a.bindings.Load(); r.Calls > 0 && len(bs) > 0 {
		r.CallsIn = bs[len(bs)-1].name // the binding that gets indications without RESOURCES
	}
	for _, h := range agg {
		r.Held = append(r.Held, *h)
	}
	sort.Slice(r.Held, func(i, j int) bool { return r.Held[i].Count > r.Held[j].Count })
	return r
}
