package ndisshim

// Requests in flight: the control-path calls a binding makes into the
// miniport (MiniportOidRequest, MiniportCancelSend). NDIS never calls
// MiniportHaltEx while one is outstanding on the adapter, so each call is
// registered for as long as it runs in the miniport, and Halt waits until
// none is left.
//
// A call registers itself and checks that its binding is open and the
// adapter not halted in one step under reqMu. Close marks the binding
// closed; Halt runs only with every binding closed and looks under reqMu.
// So a call is either refused or seen by Halt: there is no window in which
// Halt misses one (NetVMini's count-then-check, with a lock because this is
// the control path; the data path never takes it).

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// ErrRequestsOutstanding is wrapped by Halt's error when ctx ends while OID
// requests or send cancels are still running in the miniport.
var ErrRequestsOutstanding = errors.New("gave up waiting for requests in the miniport")

// request is one call of a binding's into the miniport's control path.
type request struct {
	b      *Binding
	cancel bool           // a send cancel (else an OID request)
	id     uintptr        // the cancel ID
	oid    OID            // the OID request's OID and type, copied: the
	typ    OIDRequestType // miniport may be writing the request meanwhile
	start  time.Time
}

func (r *request) String() string {
	what := fmt.Sprintf("CancelSendNetBufferLists(%#x)", r.id)
	if !r.cancel {
		t := "query"
		if r.typ == OIDSet {
			t = "set"
		}
		what = fmt.Sprintf("OID request %s %s", r.oid, t)
	}
	return fmt.Sprintf("%s from binding %s, running %s", what, r.b.name, time.Since(r.start).Round(time.Millisecond))
}

// enterRequest registers r as running in the miniport, unless r's binding
// is closed or the adapter halted: then it returns false and the caller
// refuses the call without reaching the miniport.
func (a *Adapter) enterRequest(r *request) bool {
	a.reqMu.Lock()
	defer a.reqMu.Unlock()
	if r.b.closed.Load() || a.halted.Load() {
		return false
	}
	r.start = time.Now()
	if a.reqs == nil {
		a.reqs = map[*request]struct{}{}
	}
	a.reqs[r] = struct{}{}
	return true
}

// leaveRequest ends r, and wakes Halt when it was the last one.
func (a *Adapter) leaveRequest(r *request) {
	a.reqMu.Lock()
	defer a.reqMu.Unlock()
	delete(a.reqs, r)
	if len(a.reqs) == 0 && a.reqIdle != nil {
		close(a.reqIdle)
		a.reqIdle = nil
	}
}

// requestsReport names the requests running in the miniport, oldest first:
// "1 request still in the miniport: OID request OID_GEN_STATISTICS query
// from binding hoststack, running 2s".
func (a *Adapter) requestsReport() string {
	a.reqMu.Lock()
	rs := make([]*request, 0, len(a.reqs))
	for r := range a.reqs {
		rs = append(rs, r)
	}
	a.reqMu.Unlock()
	if len(rs) == 0 {
		return "no request in the miniport"
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].start.Before(rs[j].start) })
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = r.String()
	}
	noun := "requests"
	if len(rs) == 1 {
		noun = "request"
	}
	return fmt.Sprintf("%d %s still in the miniport: %s", len(rs), noun, strings.Join(parts, "; "))
}

// waitRequests waits until no request is running in the miniport, logging
// which are every WatchdogInterval. If ctx ends first it returns an error
// wrapping ErrRequestsOutstanding and ctx's error that names them.
func (a *Adapter) waitRequests(ctx context.Context, phase string) error {
	a.reqMu.Lock()
	if len(a.reqs) == 0 {
		a.reqMu.Unlock()
		return nil
	}
	if a.reqIdle == nil {
		a.reqIdle = make(chan struct{})
	}
	idle := a.reqIdle
	a.reqMu.Unlock()
	start := time.Now()
	report := time.NewTicker(a.opts.WatchdogInterval)
	defer report.Stop()
	a.log.Warn(phase+": waiting", "requests", a.requestsReport())
	for {
		select {
		case <-idle:
			a.log.Debug(phase+": requests done", "took", time.Since(start))
			return nil
		case <-report.C:
			a.log.Warn(phase+": waiting", "requests", a.requestsReport())
		case <-ctx.Done():
			return fmt.Errorf("ndisshim: %s of adapter %s after %s: %w: %s (%w)", phase, a.name,
				time.Since(start).Round(time.Millisecond), ErrRequestsOutstanding, a.requestsReport(), ctx.Err())
		}
	}
}
