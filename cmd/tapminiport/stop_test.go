package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

// stopMiniport is a miniport whose HaltEx or OID requests can be held in
// the middle, so stop's decisions can be watched at the moments that a
// real run passes through too fast to hit with a signal.
type stopMiniport struct {
	holdHalt, holdOID bool
	inHalt, inOID     chan struct{}
	release           chan struct{}

	mu        sync.Mutex
	halts     []ndisshim.HaltAction
	shutdowns int
}

func newStopMiniport() *stopMiniport {
	return &stopMiniport{inHalt: make(chan struct{}), inOID: make(chan struct{}), release: make(chan struct{})}
}

func (m *stopMiniport) HaltEx(action ndisshim.HaltAction) {
	m.mu.Lock()
	m.halts = append(m.halts, action)
	m.mu.Unlock()
	if m.holdHalt {
		close(m.inHalt)
		<-m.release
	}
}
func (m *stopMiniport) PauseEx(context.Context) error   { return nil }
func (m *stopMiniport) RestartEx(context.Context) error { return nil }
func (m *stopMiniport) ShutdownEx(ndisshim.ShutdownAction) {
	m.mu.Lock()
	m.shutdowns++
	m.mu.Unlock()
}
func (m *stopMiniport) SendNetBufferLists(*ndisshim.NetBufferList, ndisshim.PortNumber, ndisshim.SendFlags) {
}
func (m *stopMiniport) ReturnNetBufferLists(*ndisshim.NetBufferList, ndisshim.ReturnFlags) {}
func (m *stopMiniport) CancelSend(uintptr)                                                 {}
func (m *stopMiniport) OIDRequest(*ndisshim.OIDRequest) ndisshim.Status {
	if m.holdOID {
		close(m.inOID)
		<-m.release
	}
	return ndisshim.StatusSuccess
}
func (m *stopMiniport) DevicePnPEventNotify(ndisshim.PnPEvent) {}

func (m *stopMiniport) counts() (halts []ndisshim.HaltAction, shutdowns int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]ndisshim.HaltAction(nil), m.halts...), m.shutdowns
}

// stopProto is a protocol that does nothing.
type stopProto struct{}

func (stopProto) ReceiveNetBufferLists(*ndisshim.Binding, *ndisshim.NetBufferList, ndisshim.PortNumber, int, ndisshim.ReceiveFlags) {
}
func (stopProto) SendNetBufferListsComplete(*ndisshim.Binding, *ndisshim.NetBufferList, ndisshim.SendCompleteFlags) {
}
func (stopProto) StatusEx(*ndisshim.Binding, ndisshim.StatusIndication)     {}
func (stopProto) NetPnPEvent(*ndisshim.Binding, ndisshim.NetPnPEvent) error { return nil }

// stopMachine is a running machine on mp: the real shim and stop, halt
// and force, with no TAPs, binding stack or observers.
func stopMachine(t *testing.T, mp *stopMiniport) (*machine, *shimtest.SyncBuffer, *shimtest.SyncBuffer) {
	t.Helper()
	o, err := parseFlags([]string{"--no-wire"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	stdout, stderr := &shimtest.SyncBuffer{}, &shimtest.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	drv, err := ndisshim.RegisterMiniportDriver(ndisshim.Characteristics{Name: "stoptest", Version: "1.0",
		InitializeEx: func(*ndisshim.Adapter, ndisshim.InitParameters) (ndisshim.Miniport, error) { return mp, nil }}, log)
	if err != nil {
		t.Fatal(err)
	}
	a, err := drv.AddAdapter(ndisshim.InitParameters{Name: "st0"}, ndisshim.AdapterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	shimtest.Restart(t, a)
	t.Cleanup(func() {
		select {
		case <-mp.release:
		default:
			close(mp.release)
		}
	})
	return &machine{o: o, log: log, stdout: stdout, stderr: stderr, drv: drv, a: a, started: time.Now()}, stdout, stderr
}

// TestThirdSignalDuringHaltExWaitsForTheHalt: a third signal that lands
// while HaltEx runs cannot force anything (the miniport gets no ShutdownEx
// during or after HaltEx): the run says so and waits for the halt, whose
// result stands. It used to print "forced shutdown (third signal)" and exit
// 3 while the halt went on underneath.
func TestThirdSignalDuringHaltExWaitsForTheHalt(t *testing.T) {
	mp := newStopMiniport()
	mp.holdHalt = true
	m, stdout, stderr := stopMachine(t, mp)
	sigs := make(chan os.Signal, 4)
	code := make(chan int, 1)
	go func() { code <- m.stop(sigs, nil) }()
	shimtest.Recv(t, "HaltEx called", mp.inHalt)
	sigs <- syscall.SIGTERM // the second
	sigs <- syscall.SIGTERM // the third
	shimtest.WaitFor(t, "the third signal answered", func() bool { return strings.Contains(stderr.String(), "cannot be forced") })
	select {
	case c := <-code:
		t.Fatalf("stop returned %d while HaltEx still ran:\n%s\n%s", c, stdout, stderr)
	case <-time.After(100 * time.Millisecond):
	}
	close(mp.release)
	c := shimtest.Recv(t, "stop's exit code", code)
	halts, shutdowns := mp.counts()
	if c == exitForced || strings.Contains(stdout.String(), "forced shutdown") || shutdowns != 0 {
		t.Errorf("exit %d, %d ShutdownEx calls after HaltEx, report:\n%s", c, shutdowns, stdout)
	}
	if len(halts) != 1 || !strings.Contains(stdout.String(), "verifier: clean") || strings.Count(stdout.String(), "exit report") != 1 {
		t.Errorf("HaltEx calls %v; want one halt and one clean report:\n%s", halts, stdout)
	}
	if st := m.a.State(); st != ndisshim.StateHalted {
		t.Errorf("adapter %s, want Halted", st)
	}
}

// TestHaltRefusedIsForced: a halt the shim refuses before HaltEx (a
// request still in the miniport when --halt-timeout runs out) leaves the
// adapter paused with its device: the run takes the forced path, one
// ShutdownEx and exit 3 naming why. It used to go on to unload, fail there
// and exit 4 without ShutdownEx.
func TestHaltRefusedIsForced(t *testing.T) {
	mp := newStopMiniport()
	mp.holdOID = true
	m, stdout, stderr := stopMachine(t, mp)
	m.o.haltTimeout = 300 * time.Millisecond
	shimtest.Pause(t, m.a) // bindings open in Paused
	b, err := m.a.OpenAdapter("stuck", stopProto{})
	if err != nil {
		t.Fatal(err)
	}
	go b.OIDRequest(ndisshim.NewQuery(ndisshim.OIDGenLinkSpeed, 8))
	shimtest.Recv(t, "the OID request in the miniport", mp.inOID)
	if err := b.Close(); err != nil { // Close does not wait for the binding's own request
		t.Fatal(err)
	}
	shimtest.Restart(t, m.a)
	c := m.stop(make(chan os.Signal), nil)
	halts, shutdowns := mp.counts()
	if c != exitForced || shutdowns != 1 || len(halts) != 0 {
		t.Errorf("exit %d, %d ShutdownEx, HaltEx %v; want exit 3, one ShutdownEx, no HaltEx:\n%s\n%s", c, shutdowns, halts, stdout, stderr)
	}
	if !strings.Contains(stdout.String(), "forced shutdown (halt: ") || !strings.Contains(stdout.String(), "gave up waiting for requests in the miniport") {
		t.Errorf("the report does not say the halt was refused and why:\n%s", stdout)
	}
	if strings.Count(stdout.String(), "exit report") != 1 {
		t.Errorf("want exactly one exit report:\n%s", stdout)
	}
}
