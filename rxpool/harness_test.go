package rxpool

// Test harness: a tiny fake miniport under the shim, so pools are made on
// the Resources of a real ndisshim adapter and the verifier checks, at halt
// and unload, that everything they allocated was freed.

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeMiniport is the smallest miniport: it hands returned NBLs to a pool.
type fakeMiniport struct {
	pool atomic.Pointer[Pool]
}

var _ ndisshim.Miniport = (*fakeMiniport)(nil)

func (m *fakeMiniport) HaltEx(ndisshim.HaltAction)             {}
func (m *fakeMiniport) PauseEx(context.Context) error          { return nil }
func (m *fakeMiniport) RestartEx(context.Context) error        { return nil }
func (m *fakeMiniport) ShutdownEx(ndisshim.ShutdownAction)     {}
func (m *fakeMiniport) CancelSend(uintptr)                     {}
func (m *fakeMiniport) DevicePnPEventNotify(ndisshim.PnPEvent) {}
func (m *fakeMiniport) OIDRequest(*ndisshim.OIDRequest) ndisshim.Status {
	return ndisshim.StatusNotSupported
}
func (m *fakeMiniport) SendNetBufferLists(*ndisshim.NetBufferList, ndisshim.PortNumber, ndisshim.SendFlags) {
}

// ReturnNetBufferLists is the miniport's return handler: the pool takes
// the chain back in one call.
func (m *fakeMiniport) ReturnNetBufferLists(nbls *ndisshim.NetBufferList, _ ndisshim.ReturnFlags) {
	if err := m.pool.Load().Return(nbls); err != nil {
		panic(err) // the shim filters bad returns before they get here
	}
}

// env is a registered driver with one adapter (Paused) whose Resources the
// test's pools are made on.
type env struct {
	tb  testing.TB
	d   *ndisshim.Driver
	a   *ndisshim.Adapter
	mp  *fakeMiniport
	log *shimtest.SyncBuffer // what the pools log
}

// newEnv registers a driver and adds an adapter; at cleanup it halts the
// adapter, unloads the driver and fails the test on any verifier finding.
func newEnv(tb testing.TB) *env {
	tb.Helper()
	e := &env{tb: tb, mp: &fakeMiniport{}, log: &shimtest.SyncBuffer{}}
	var err error
	e.d, err = ndisshim.RegisterMiniportDriver(ndisshim.Characteristics{
		Name: "rxpooltest",
		InitializeEx: func(a *ndisshim.Adapter, p ndisshim.InitParameters) (ndisshim.Miniport, error) {
			return e.mp, nil
		},
	}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	e.a, err = e.d.AddAdapter(ndisshim.InitParameters{Name: "tm-test"}, ndisshim.AdapterOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if e.a.State() == ndisshim.StateRunning {
			if err := e.a.Pause(ctx); err != nil {
				tb.Errorf("pause: %v", err)
			}
		}
		if err := e.a.Halt(ctx, ndisshim.HaltDeviceDisabled); err != nil {
			tb.Errorf("halt: %v", err)
		}
		if err := e.d.Deregister(); err != nil {
			tb.Errorf("unload: %v", err)
		}
	})
	return e
}

// res is the adapter's Resources, as the miniport passes them to New.
func (e *env) res() *ndisshim.Resources { return &e.a.Resources }

// pool makes a pool on the adapter; at cleanup (before the adapter's halt)
// it takes back whatever is still held and frees the pool.
func (e *env) pool(cfg Config) *Pool {
	e.tb.Helper()
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(e.log, nil))
	}
	p, err := New(e.res(), cfg)
	if err != nil {
		e.tb.Fatal(err)
	}
	e.tb.Cleanup(func() { release(e.tb, p) })
	return p
}

// release puts back every held block of p (one at a time) and frees p,
// unless it is freed already.
func release(tb testing.TB, p *Pool) {
	tb.Helper()
	for _, n := range p.all {
		switch st, _ := p.State(n); st {
		case StateFilling:
			n.Next = nil
			p.Recycle(n)
		case StateIndicated:
			n.Next = nil
			if err := p.Return(n); err != nil {
				tb.Errorf("release: %v", err)
			}
		}
	}
	if err := p.Free(); err != nil && !errors.Is(err, ErrFreed) {
		tb.Errorf("release: %v", err)
	}
}

// fakeProtocol is a protocol binding that queues every chain indicated to
// it without RESOURCES, for the test to return later.
type fakeProtocol struct {
	rx chan *ndisshim.NetBufferList
}

var _ ndisshim.Protocol = (*fakeProtocol)(nil)

func (f *fakeProtocol) ReceiveNetBufferLists(_ *ndisshim.Binding, nbls *ndisshim.NetBufferList, _ ndisshim.PortNumber, _ int, flags ndisshim.ReceiveFlags) {
	if !flags.Has(ndisshim.ReceiveFlagResources) {
		f.rx <- nbls
	}
}
func (f *fakeProtocol) SendNetBufferListsComplete(*ndisshim.Binding, *ndisshim.NetBufferList, ndisshim.SendCompleteFlags) {
}
func (f *fakeProtocol) StatusEx(*ndisshim.Binding, ndisshim.StatusIndication)     {}
func (f *fakeProtocol) NetPnPEvent(*ndisshim.Binding, ndisshim.NetPnPEvent) error { return nil }

// getN gets exactly n regular blocks or fails the test.
func getN(tb testing.TB, p *Pool, n int) []*ndisshim.NetBufferList {
	tb.Helper()
	dst := make([]*ndisshim.NetBufferList, n)
	if k := p.Get(dst); k != n {
		tb.Fatalf("Get(%d) = %d", n, k)
	}
	return dst
}

// chain links nbls (in order) and returns the head.
func chain(nbls ...*ndisshim.NetBufferList) *ndisshim.NetBufferList {
	return ndisshim.Chain(nbls...)
}

func smallConfig() Config {
	return Config{Name: "test rx", Count: 8, BufferSize: 256, Headroom: 12, LowWater: 2}
}
