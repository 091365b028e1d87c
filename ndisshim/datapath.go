package ndisshim

// The data path: receive indications up, returns down, sends down,
// completions up. No lock is taken here: the counters are atomics, the
// binding list is a copy-on-write snapshot, and each NBL's owner is one
// atomic word (the ledger).
//
// Ownership of a receive NBL:
//
//	miniport (nblOwned) --IndicateReceive--> protocol (nblIndicated)
//	protocol --ReturnNetBufferLists--> miniport's return handler (nblOwned)
//	with ReceiveFlagResources the NBL stays nblOwned: the miniport has it
//	back when IndicateReceive returns.
//
// Ownership of a send NBL:
//
//	protocol (nblOwned) --SendNetBufferLists--> miniport (nblSent)
//	miniport --SendNetBufferListsComplete--> protocol (nblOwned)

import (
	"fmt"
)

// IndicateReceive hands a chain of count received NBLs up to the bound
// protocols (NdisMIndicateReceiveNetBufferLists).
//
// If it returns an error the miniport keeps the whole chain (the adapter is
// not Running or Pausing, or no protocol is bound): recycle it and count a
// drop. On success, with ReceiveFlagResources the miniport owns the chain
// again when the call returns; without it the protocol owns every NBL until
// it comes back through the miniport's ReturnNetBufferLists.
//
// The receive is counted before the state is checked, and the count undone
// when the adapter is not ready, so a pause can never miss an indication
// that is in flight (NetVMini's pattern).
func (a *Adapter) IndicateReceive(nbls *NetBufferList, port PortNumber, count int, flags ReceiveFlags) error {
	a.rxOutstanding.Add(int64(count))
	if !a.dp.rxOpen() {
		a.rxDone(int64(count))
		if a.halted.Load() {
			a.v.Record(Finding{Kind: FindCallAfterHalt, Object: "adapter " + a.name, Where: callerSite(1), Detail: "IndicateReceive"})
			return fmt.Errorf("ndisshim: indicate on adapter %s: %w", a.name, ErrHalted)
		}
		return ErrNotReady
	}
	bs := *a.bindings.Load()
	if len(bs) == 0 {
		a.rxDone(int64(count))
		return ErrNoBinding
	}
	for _, b := range bs[:len(bs)-1] {
		b.proto.ReceiveNetBufferLists(b, nbls, port, count, flags|ReceiveFlagResources)
	}
	last := bs[len(bs)-1]
	if flags.Has(ReceiveFlagResources) {
		last.proto.ReceiveNetBufferLists(last, nbls, port, count, flags)
		a.rxDone(int64(count))
		return nil
	}
	now := nanotime()
	n := 0
	var tail *NetBufferList
	for nbl := nbls; nbl != nil; nbl = nbl.Next {
		if !nbl.state.CompareAndSwap(nblOwned, nblIndicated) {
			// Already indicated (and held) or in flight elsewhere: the
			// miniport's bug. Passing it up again would have it returned
			// twice; it leaves the chain, and its first holder returns it.
			a.v.Record(Finding{Kind: FindIllegalIndication, Object: fmt.Sprintf("NBL %d of %s", nbl.index, nbl.pool), Where: callerSite(1),
				Detail: "indicated while " + stateName(nbl.state.Load()) + "; not passed up"})
			unlink(&nbls, tail, nbl)
			continue
		}
		nbl.SourceHandle = a
		nbl.heldSince.Store(now)
		nbl.bindingIdx.Store(last.idx)
		tail = nbl
		n++
	}
	// The chain (less what was refused) is the truth; keep the counter
	// honest, and wake a pause if that brings it to zero.
	if n < count {
		a.rxDone(int64(count - n))
	} else if n > count {
		a.rxOutstanding.Add(int64(n - count))
	}
	for {
		p, v := a.peakHeld.Load(), a.rxOutstanding.Load()
		if v <= p || a.peakHeld.CompareAndSwap(p, v) {
			break
		}
	}
	if n > 0 {
		// The call is outstanding until it returns, not only its NBLs:
		// a protocol may return the chain from inside it (hoststack
		// does, then polls its queues), and a pause that found no NBL
		// held then would go on to unbind and halt while the handler
		// still runs (NDIS holds a reference on the binding for every
		// indicate call). Counted before the call, so before any of its
		// returns: a drain that reads rxOutstanding and then rxCalls
		// cannot see both at zero while it runs.
		a.rxCalls.Add(1)
		last.proto.ReceiveNetBufferLists(last, nbls, port, n, flags)
		if a.rxCalls.Add(-1) == 0 {
			a.wake()
		}
	}
	return nil
}

// unlink takes nbl out of the chain *head, prev being the NBL before it
// (nil when nbl is the head); nbl's own Next is left as it is, so a walk
// in progress goes on from it.
func unlink(head **NetBufferList, prev, nbl *NetBufferList) {
	if prev == nil {
		*head = nbl.Next
	} else {
		prev.Next = nbl.Next
	}
}

// ErrNoBinding is returned by IndicateReceive when no protocol is bound.
var ErrNoBinding = fmt.Errorf("no protocol bound")

func (a *Adapter) rxDone(n int64) {
	if a.rxOutstanding.Add(-n) == 0 {
		a.wake()
	}
}

// ReturnNetBufferLists gives indicated NBLs back (NdisReturnNetBufferLists).
// The chain may mix NBLs of several indications, in any order. An NBL this
// binding does not hold (returned twice, never indicated, indicated to
// another binding, or from another adapter) is a verifier finding and is
// not passed to the miniport. The protocol must not touch the NBLs after
// the call. A return after the binding is closed (possible after a forced
// Shutdown) or the adapter halted is a verifier finding, and the ledger is
// left as it is: the NBLs stay indicated to the binding, as the miniport,
// which does not get them back, also counts them.
func (b *Binding) ReturnNetBufferLists(nbls *NetBufferList, flags ReturnFlags) {
	a := b.a
	if nbls == nil {
		return
	}
	// Before the ledger moves anything to owned: the miniport will not see
	// this chain, so the shim must not count it as back.
	if a.halted.Load() || b.closed.Load() {
		a.v.Record(Finding{Kind: FindCallAfterHalt, Object: "binding " + b.name, Where: callerSite(1), Detail: "ReturnNetBufferLists"})
		return
	}
	var head, tail *NetBufferList
	n := int64(0)
	for nbl := nbls; nbl != nil; {
		next := nbl.Next
		if bad := b.checkReturn(nbl); bad != "" {
			kind := FindForeignReturn
			if bad == "double" {
				kind, bad = FindDoubleReturn, "not held (returned twice or never indicated)"
			}
			a.v.Record(Finding{Kind: kind, Object: nblName(nbl), Where: callerSite(1), Detail: bad + " by binding " + b.name})
		} else {
			nbl.Next = nil
			if head == nil {
				head = nbl
			} else {
				tail.Next = nbl
			}
			tail = nbl
			n++
		}
		nbl = next
	}
	if head == nil {
		return
	}
	a.mp.ReturnNetBufferLists(head, flags)
	if a.waiters.Load() > 0 {
		a.drained.Add(n)
	}
	a.rxDone(n)
}

func nblName(nbl *NetBufferList) string {
	if nbl.pool == nil {
		return "NBL not from any pool"
	}
	return fmt.Sprintf("NBL %d of %s", nbl.index, nbl.pool)
}

// checkReturn moves nbl from indicated to owned, or says why it can't.
func (b *Binding) checkReturn(nbl *NetBufferList) string {
	if nbl.pool == nil || nbl.pool.owner != &b.a.Resources {
		return "not indicated by adapter " + b.a.name
	}
	if nbl.state.Load() == nblIndicated && nbl.bindingIdx.Load() != b.idx {
		return "indicated to another binding"
	}
	if !nbl.state.CompareAndSwap(nblIndicated, nblOwned) {
		return "double"
	}
	nbl.bindingIdx.Store(-1)
	return ""
}

// SendNetBufferLists sends a chain the protocol owns (NdisSendNetBufferLists).
// The miniport owns the NBLs until they come back through the protocol's
// SendNetBufferListsComplete, each with its Status. When the adapter is not
// Running they come straight back with StatusPaused (or StatusNotAccepted
// after surprise removal) before this call returns.
func (b *Binding) SendNetBufferLists(nbls *NetBufferList, port PortNumber, flags SendFlags) {
	a := b.a
	now := nanotime()
	n := int64(0)
	var tail *NetBufferList
	for nbl := nbls; nbl != nil; nbl = nbl.Next {
		if !nbl.state.CompareAndSwap(nblOwned, nblSent) {
			// Sent and not completed yet, or a receive NBL the protocol
			// holds: the protocol's bug. Passing it down again would have
			// it completed twice; it leaves the chain, and is not counted.
			a.v.Record(Finding{Kind: FindIllegalIndication, Object: nblName(nbl), Where: callerSite(1),
				Detail: "sent while " + stateName(nbl.state.Load()) + "; not passed down"})
			unlink(&nbls, tail, nbl)
			continue
		}
		nbl.SourceHandle = b
		nbl.heldSince.Store(now)
		tail = nbl
		n++
	}
	if n == 0 {
		return
	}
	a.txOutstanding.Add(n)
	b.txOutstanding.Add(n)
	if !a.dp.txOpen() || b.closed.Load() {
		st := StatusPaused
		if a.removed.Load() {
			st = StatusNotAccepted
		}
		for nbl := nbls; nbl != nil; nbl = nbl.Next {
			nbl.Status = st
			nbl.state.Store(nblOwned)
		}
		b.proto.SendNetBufferListsComplete(b, nbls, 0)
		b.txOutstanding.Add(-n)
		a.txDone(n)
		return
	}
	a.mp.SendNetBufferLists(nbls, port, flags)
}

func (a *Adapter) txDone(n int64) {
	if a.txOutstanding.Add(-n) == 0 {
		a.wake()
	}
}

// SendNetBufferListsComplete completes sends (NdisMSendNetBufferListsComplete):
// each NBL goes back to the binding that sent it, in runs, with the Status
// the miniport set. Completing an NBL that is not outstanding is a verifier
// finding and it is dropped from the chain.
func (a *Adapter) SendNetBufferListsComplete(nbls *NetBufferList, flags SendCompleteFlags) {
	var run, tail *NetBufferList
	var owner *Binding
	var n int64
	flush := func() {
		if run == nil {
			return
		}
		owner.proto.SendNetBufferListsComplete(owner, run, flags)
		owner.txOutstanding.Add(-n)
		a.txDone(n)
		run, tail, n = nil, nil, 0
	}
	for nbl := nbls; nbl != nil; {
		next := nbl.Next
		b, ok := nbl.SourceHandle.(*Binding)
		switch {
		case !ok || b.a != a:
			a.v.Record(Finding{Kind: FindForeignComplete, Object: nblName(nbl), Where: callerSite(1), Detail: "not sent through adapter " + a.name})
		case !nbl.state.CompareAndSwap(nblSent, nblOwned):
			a.v.Record(Finding{Kind: FindDoubleComplete, Object: nblName(nbl), Where: callerSite(1), Detail: "completed while " + stateName(nbl.state.Load())})
		default:
			if b != owner {
				flush()
				owner = b
			}
			nbl.Next = nil
			if run == nil {
				run = nbl
			} else {
				tail.Next = nbl
			}
			tail = nbl
			n++
		}
		nbl = next
	}
	flush()
}
