package ndisshim

import (
	"fmt"
	"sync/atomic"
)

// Binding is one protocol's open of an adapter (NdisOpenAdapterEx). The
// protocol sends, returns received NBLs and makes OID requests through it.
//
// Several protocols may bind one adapter. A receive indication goes to every
// binding in the order they were opened; all but the last get it with
// ReceiveFlagResources (they must copy what they keep, as the NDIS MUX
// sample does), and the last gets the miniport's flags and, without
// RESOURCES, the ownership of the NBLs. So each NBL has at most one holder.
type Binding struct {
	Resources
	a     *Adapter
	proto Protocol
	name  string
	idx   int32

	txOutstanding atomic.Int64
	closed        atomic.Bool
}

// OpenAdapter binds protocol p to the adapter (NdisOpenAdapterEx). NDIS
// pauses the stack to insert a binding; here the adapter must be Paused.
func (a *Adapter) OpenAdapter(name string, p Protocol) (*Binding, error) {
	a.transition.Lock()
	defer a.transition.Unlock()
	if a.State() != StatePaused {
		return nil, a.illegal("bind "+name+" to", StatePaused)
	}
	a.bindMu.Lock()
	defer a.bindMu.Unlock()
	b := &Binding{a: a, proto: p, name: name, idx: a.nextBind}
	b.Resources.init("binding "+name, a.v)
	a.nextBind++
	a.allBinds = append(a.allBinds, b)
	old := *a.bindings.Load()
	nb := make([]*Binding, 0, len(old)+1)
	nb = append(append(nb, old...), b)
	a.bindings.Store(&nb)
	return b, nil
}

// Name is the binding's (the protocol's) name.
func (b *Binding) Name() string { return b.name }

// AdapterName is the name of the adapter the binding is open on.
func (b *Binding) AdapterName() string { return b.a.name }

// Close unbinds (NdisCloseAdapterEx). The adapter must be Paused (so the
// binding holds no NBL and has no send outstanding). The verifier checks
// that the protocol freed what it allocated through the binding.
func (b *Binding) Close() error {
	a := b.a
	a.transition.Lock()
	defer a.transition.Unlock()
	if err := b.checkClose(); err != nil {
		return err
	}
	a.bindMu.Lock()
	old := *a.bindings.Load()
	nb := make([]*Binding, 0, len(old))
	for _, x := range old {
		if x != b {
			nb = append(nb, x)
		}
	}
	a.bindings.Store(&nb)
	a.bindMu.Unlock()
	b.closed.Store(true)
	fs := b.Resources.leaks()
	for _, f := range fs {
		a.v.Record(f)
	}
	if len(fs) > 0 {
		return &VerifierError{Scope: "close of binding " + b.name, Findings: fs}
	}
	return nil
}

// CheckClose reports whether Close would succeed now, so a protocol can
// check before it tears down what the binding still uses.
func (b *Binding) CheckClose() error {
	b.a.transition.Lock()
	defer b.a.transition.Unlock()
	return b.checkClose()
}

func (b *Binding) checkClose() error {
	a := b.a
	if b.closed.Load() {
		return fmt.Errorf("ndisshim: binding %s to %s closed twice", b.name, a.name)
	}
	if st := a.State(); st != StatePaused && st != StateShutdown {
		return a.illegal("close binding "+b.name+" on", StatePaused)
	}
	if n := b.txOutstanding.Load(); n > 0 {
		return fmt.Errorf("ndisshim: close binding %s: %d sends still outstanding: %w", b.name, n, ErrIllegalState)
	}
	return nil
}

// OIDRequest passes a query or set to the miniport (NdisOidRequest). It is
// refused with StatusAdapterNotReady before initialization completes, once
// the binding is closed or after halt, and with StatusNotAccepted after
// surprise removal. While the miniport handles it, it is counted as
// outstanding: Halt does not call HaltEx until it returns. Close does not
// wait for it (Close takes no deadline; Halt does).
func (b *Binding) OIDRequest(req *OIDRequest) Status {
	a := b.a
	r := &request{b: b, oid: req.OID, typ: req.Type}
	if !a.enterRequest(r) {
		return StatusAdapterNotReady
	}
	defer a.leaveRequest(r)
	if a.removed.Load() {
		return StatusNotAccepted
	}
	return a.mp.OIDRequest(req)
}

// CancelSendNetBufferLists asks the miniport to cancel queued sends whose
// cancel ID is id (NdisCancelSendNetBufferLists). Cancelled NBLs still come
// back through SendNetBufferListsComplete, with StatusRequestAborted. It
// does nothing once the binding is closed or the adapter halted; while the
// miniport handles it, Halt waits as for an OID request.
func (b *Binding) CancelSendNetBufferLists(id uintptr) {
	a := b.a
	r := &request{b: b, cancel: true, id: id}
	if !a.enterRequest(r) {
		return
	}
	defer a.leaveRequest(r)
	a.mp.CancelSend(id)
}
