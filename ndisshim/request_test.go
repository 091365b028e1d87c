package ndisshim_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

// TestHaltWaitsForRequestInMiniport: an OID request (or a send cancel) made
// before the binding closed is still running in the miniport when the
// adapter is paused, the binding closed and the adapter halted. NDIS never
// calls MiniportHaltEx with a request outstanding, so: Halt with a deadline
// gives up with ErrRequestsOutstanding (and the deadline), naming the
// request and its binding, without calling HaltEx, and the adapter stays
// Paused; Halt without one does not call HaltEx while the handler runs,
// and does once it has returned. Requests after Close or Halt are refused
// without reaching the miniport.
func TestHaltWaitsForRequestInMiniport(t *testing.T) {
	cases := []struct {
		name string
		call func(b *ndisshim.Binding) ndisshim.Status
		want string // what the timeout error names
	}{
		{"OIDRequest", func(b *ndisshim.Binding) ndisshim.Status {
			return b.OIDRequest(ndisshim.NewQuery(ndisshim.OIDGenMaximumFrameSize, 4))
		}, "1 request still in the miniport: OID request OID_GEN_MAXIMUM_FRAME_SIZE query from binding proto, running "},
		{"CancelSendNetBufferLists", func(b *ndisshim.Binding) ndisshim.Status {
			b.CancelSendNetBufferLists(7)
			return ndisshim.StatusSuccess
		}, "1 request still in the miniport: CancelSendNetBufferLists(0x7) from binding proto, running "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			gate := &shimtest.Gate{}
			t.Cleanup(gate.Open) // so that a failing test leaves no handler parked
			r := newRig(t, &fakeConfig{requestGate: gate}, ndisshim.AdapterOptions{})
			b, _ := r.open("proto")
			r.restart()
			parked := gate.Close()
			done := make(chan ndisshim.Status, 1)
			go func() { done <- c.call(b) }()
			shimtest.Recv(t, "the request in the miniport", parked)
			r.pause()
			if err := b.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			err := r.a.Halt(ctx, ndisshim.HaltDeviceDisabled)
			cancel()
			if n := r.m.haltCalls.Load(); n != 0 || r.a.State() != ndisshim.StatePaused {
				t.Fatalf("Halt with a request in the miniport (%v): HaltEx called %d times, state %s; want 0, Paused", err, n, r.a.State())
			}
			if !errors.Is(err, ndisshim.ErrRequestsOutstanding) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Halt past its deadline: %v, want ErrRequestsOutstanding and the deadline", err)
			}
			for _, want := range []string{"halt of adapter tm0 after ", c.want} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}

			halted := make(chan error, 1)
			go func() { halted <- r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled) }()
			select {
			case err := <-halted:
				t.Fatalf("Halt returned (%v) while the request is in the miniport", err)
			case <-time.After(50 * time.Millisecond):
			}
			if n := r.m.haltCalls.Load(); n != 0 {
				t.Fatalf("HaltEx called %d times while the request is in the miniport", n)
			}
			gate.Open()
			if st := shimtest.Recv(t, "the request's status", done); st != ndisshim.StatusSuccess {
				t.Errorf("request: %s, want success", st)
			}
			if err := shimtest.Recv(t, "Halt", halted); err != nil {
				t.Fatalf("Halt after the request returned: %v", err)
			}
			if n := r.m.haltCalls.Load(); n != 1 || r.a.State() != ndisshim.StateHalted {
				t.Fatalf("HaltEx called %d times, state %s; want 1, Halted", n, r.a.State())
			}

			if st := b.OIDRequest(ndisshim.NewQuery(ndisshim.OIDGenLinkSpeed, 4)); st != ndisshim.StatusAdapterNotReady {
				t.Errorf("OID request after halt: %s, want %s", st, ndisshim.StatusAdapterNotReady)
			}
			b.CancelSendNetBufferLists(8)
			if err := r.d.Deregister(); err != nil {
				t.Errorf("Deregister: %v", err)
			}
			if p := r.m.problems(); len(p) > 0 {
				t.Errorf("fake miniport saw contract violations: %q", p)
			}
			r.m.mu.Lock()
			cancels := r.m.cancels
			r.m.mu.Unlock()
			if c.name == "CancelSendNetBufferLists" && (len(cancels) != 1 || cancels[0] != 7) {
				t.Errorf("the miniport saw cancels %v, want [7]", cancels)
			}
		})
	}
}
