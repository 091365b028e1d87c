package hoststack

// The test rig: the binding over a small fake miniport (fakeNIC) under the
// real shim, its NIC TAP one end of a tapdev socketpair (the other end,
// host, plays the host's kernel stack). The test makes the fake miniport
// indicate by calling indicate; the fake records what is returned and
// sent.

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
	"github.com/tapminiport/tapminiport/tapdev"
)

// TestMain proves that the binding's reader and writer goroutines do not
// outlive the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	nicMAC  = net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}
	wireMAC = net.HardwareAddr{0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee}
)

const (
	testMTU    = 1500
	nicBufSize = 65536 + 128 // room for a 64 KiB large receive
	nicNBLs    = 64
)

// returnCall is one MiniportReturnNetBufferLists call.
type returnCall struct {
	idx  []int           // NBL indices, in chain order
	held []time.Duration // how long each was held: return time - its indication time
}

// fakeNIC is the fake miniport: one NBL pool with NBs, whose buffers live
// in one shared-memory slab; OIDs for the address, the frame size and the
// packet filter; sends recorded and completed at once.
type fakeNIC struct {
	a       *ndisshim.Adapter
	pool    *ndisshim.NBLPool
	slab    *ndisshim.SharedMemory
	failOID ndisshim.OID // answer this OID with StatusFailure
	// caps answer OID_TCP_OFFLOAD_CURRENT_CONFIG (nil: not supported);
	// info is every indicated NBL's out-of-band information.
	caps   *ndisshim.OffloadCaps
	info   ndisshim.NBLInfo
	hashes []uint32 // when set, the i-th indicated NBL's RSS hash
	// holdSends keeps sent NBLs uncompleted until releaseSends.
	holdSends bool

	mu          sync.Mutex
	oids        []ndisshim.OID
	filter      uint32
	filterSets  int
	indicatedAt map[int]time.Time
	returns     []returnCall
	returned    int
	sends       [][][]byte // frames of each SendNetBufferLists call
	sendInfos   []ndisshim.NBLInfo
	held        []*ndisshim.NetBufferList // chains kept by holdSends
}

// releaseSends completes the sends holdSends kept.
func (n *fakeNIC) releaseSends() {
	n.mu.Lock()
	held := n.held
	n.held = nil
	n.mu.Unlock()
	for _, c := range held {
		n.a.SendNetBufferListsComplete(c, 0)
	}
}

var _ ndisshim.Miniport = (*fakeNIC)(nil)

func fakeInitialize(a *ndisshim.Adapter, p ndisshim.InitParameters) (ndisshim.Miniport, error) {
	n := p.Config.(*fakeNIC)
	n.a = a
	var err error
	if n.slab, err = a.AllocateSharedMemory(nicNBLs * nicBufSize); err != nil {
		return nil, err
	}
	if n.pool, err = a.AllocateNBLPool(ndisshim.NBLPoolParams{Tag: ndisshim.MakeTag("FNrx"), Count: nicNBLs, WithNB: true}); err != nil {
		_ = n.slab.Free()
		return nil, err
	}
	for i := 0; i < nicNBLs; i++ {
		n.pool.NBL(i).FirstNB.Data = n.slab.Bytes[i*nicBufSize : (i+1)*nicBufSize : (i+1)*nicBufSize]
	}
	n.indicatedAt = map[int]time.Time{}
	return n, nil
}

// indicate copies frames into NBLs of the pool and indicates them as one
// chain (MiniportInterruptDPC → NdisMIndicateReceiveNetBufferLists). With
// RESOURCES (or when the indication fails) the chain is the miniport's
// again when the call returns and goes back to the pool. It returns the
// NBLs (which the protocol owns when the flag is not set).
func (n *fakeNIC) indicate(t *testing.T, flags ndisshim.ReceiveFlags, frames ...[]byte) []*ndisshim.NetBufferList {
	t.Helper()
	nbls := make([]*ndisshim.NetBufferList, len(frames))
	for i, f := range frames {
		nbl := n.pool.Allocate()
		if nbl == nil {
			t.Fatal("fake NIC: receive pool empty")
		}
		copy(nbl.FirstNB.Data, f)
		nbl.FirstNB.SetBytes(0, len(f))
		nbl.Info = n.info
		if i < len(n.hashes) {
			nbl.Info.HashValue = n.hashes[i]
		}
		nbls[i] = nbl
	}
	head := ndisshim.Chain(nbls...)
	now := time.Now()
	n.mu.Lock()
	for _, nbl := range nbls {
		n.indicatedAt[nbl.Index()] = now
	}
	n.mu.Unlock()
	err := n.a.IndicateReceive(head, ndisshim.DefaultPort, len(nbls), flags)
	if err != nil || flags.Has(ndisshim.ReceiveFlagResources) {
		n.pool.FreeChain(ndisshim.Chain(nbls...))
	}
	if err != nil {
		t.Fatalf("indicate: %v", err)
	}
	return nbls
}

func (n *fakeNIC) ReturnNetBufferLists(nbls *ndisshim.NetBufferList, flags ndisshim.ReturnFlags) {
	now := time.Now()
	var rc returnCall
	n.mu.Lock()
	for nbl := nbls; nbl != nil; nbl = nbl.Next {
		rc.idx = append(rc.idx, nbl.Index())
		rc.held = append(rc.held, now.Sub(n.indicatedAt[nbl.Index()]))
	}
	n.returns = append(n.returns, rc)
	n.returned += len(rc.idx)
	n.mu.Unlock()
	n.pool.FreeChain(nbls)
}

func (n *fakeNIC) SendNetBufferLists(nbls *ndisshim.NetBufferList, port ndisshim.PortNumber, flags ndisshim.SendFlags) {
	var frames [][]byte
	var infos []ndisshim.NBLInfo
	for nbl := nbls; nbl != nil; nbl = nbl.Next {
		frames = append(frames, bytes.Clone(nbl.Bytes()))
		infos = append(infos, nbl.Info)
		nbl.Status = ndisshim.StatusSuccess
	}
	n.mu.Lock()
	n.sends = append(n.sends, frames)
	n.sendInfos = append(n.sendInfos, infos...)
	if n.holdSends {
		n.held = append(n.held, nbls)
		n.mu.Unlock()
		return
	}
	n.mu.Unlock()
	n.a.SendNetBufferListsComplete(nbls, 0)
}

func (n *fakeNIC) OIDRequest(req *ndisshim.OIDRequest) ndisshim.Status {
	n.mu.Lock()
	n.oids = append(n.oids, req.OID)
	n.mu.Unlock()
	if req.OID == n.failOID {
		return ndisshim.StatusFailure
	}
	switch {
	case req.Type == ndisshim.OIDQuery && req.OID == ndisshim.OID8023CurrentAddress:
		return req.WriteBytes(nicMAC)
	case req.Type == ndisshim.OIDQuery && req.OID == ndisshim.OIDGenMaximumFrameSize:
		return req.WriteUint32(testMTU)
	case req.Type == ndisshim.OIDQuery && req.OID == ndisshim.OIDTCPOffloadCurrentConfig && n.caps != nil:
		return req.WriteBytes(n.caps.Marshal())
	case req.Type == ndisshim.OIDSet && req.OID == ndisshim.OIDGenCurrentPacketFilter:
		v, st := req.Uint32()
		if st != ndisshim.StatusSuccess {
			return st
		}
		n.mu.Lock()
		n.filter = v
		n.filterSets++
		n.mu.Unlock()
		return ndisshim.StatusSuccess
	}
	return ndisshim.StatusNotSupported
}

// HaltEx frees the pool, then the slab. A pool still in use is not freed
// (nor its slab): the verifier reports it at halt.
func (n *fakeNIC) HaltEx(action ndisshim.HaltAction) {
	if err := n.pool.Free(); err != nil {
		return
	}
	_ = n.slab.Free()
}

func (n *fakeNIC) PauseEx(ctx context.Context) error         { return nil }
func (n *fakeNIC) RestartEx(ctx context.Context) error       { return nil }
func (n *fakeNIC) ShutdownEx(action ndisshim.ShutdownAction) {}
func (n *fakeNIC) CancelSend(cancelID uintptr)               {}
func (n *fakeNIC) DevicePnPEventNotify(ev ndisshim.PnPEvent) {}

func (n *fakeNIC) returnedCount() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.returned
}

func (n *fakeNIC) returnCalls() []returnCall {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]returnCall(nil), n.returns...)
}

func (n *fakeNIC) sendCalls() [][][]byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([][][]byte(nil), n.sends...)
}

// gatedDev is the NIC TAP end with gates on ReadBatch (the reader) and
// WriteBatch (the writer and RESOURCES writes); with silent set its
// interrupt line never fires (until stopped): host frames go down only
// when something polls the reader.
type gatedDev struct {
	*tapdev.Dev
	reads, writes shimtest.Gate
	silent        *shimtest.SilentSource
	// sink, when set, takes the frames written instead of the
	// socketpair (more than its buffer holds at once); under sinkMu
	sinkMu sync.Mutex
	sink   [][]byte
	sinkOn bool
}

func (g *gatedDev) Interrupt() ndisshim.InterruptSource {
	if g.silent != nil {
		return g.silent
	}
	return g.Dev.Interrupt()
}

func (g *gatedDev) ReadBatch(bufs [][]byte, sizes []int) (int, error) {
	g.reads.Pass()
	return g.Dev.ReadBatch(bufs, sizes)
}

func (g *gatedDev) WriteBatch(bufs [][]byte, res []tapdev.TxResult) (int, error) {
	g.writes.Pass()
	g.sinkMu.Lock()
	if g.sinkOn {
		for i, b := range bufs {
			g.sink = append(g.sink, bytes.Clone(b))
			if res != nil {
				res[i] = tapdev.TxWritten
			}
		}
		g.sinkMu.Unlock()
		return len(bufs), nil
	}
	g.sinkMu.Unlock()
	return g.Dev.WriteBatch(bufs, res)
}

// sinkFrames returns the frames the sink took so far.
func (g *gatedDev) sinkFrames() [][]byte {
	g.sinkMu.Lock()
	defer g.sinkMu.Unlock()
	return append([][]byte(nil), g.sink...)
}

// rig is one driver with one adapter on the fake NIC, and the binding.
type rig struct {
	t    *testing.T
	drv  *ndisshim.Driver
	a    *ndisshim.Adapter
	nic  *fakeNIC
	s    *Stack
	dev  *gatedDev   // the NIC TAP end the binding got
	host *tapdev.Dev // the host's end
	nicE *tapdev.Dev
	done bool
}

// newAdapter registers the fake driver and adds one adapter (Paused).
func newAdapter(t *testing.T, nic *fakeNIC) (*ndisshim.Driver, *ndisshim.Adapter) {
	t.Helper()
	drv, err := ndisshim.RegisterMiniportDriver(ndisshim.Characteristics{Name: "fakenic", InitializeEx: fakeInitialize}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := drv.AddAdapter(ndisshim.InitParameters{Name: "fake0", Config: nic}, ndisshim.AdapterOptions{
		WatchdogInterval: 50 * time.Millisecond, OnHeld: func(ndisshim.HeldReport) {}})
	if err != nil {
		t.Fatal(err)
	}
	return drv, a
}

// newRig binds a Stack with cfg (NICName and Open are filled in).
func newRig(t *testing.T, cfg Config) *rig {
	t.Helper()
	return newRigNIC(t, cfg, &fakeNIC{})
}

// newRigNIC is newRig over a fake miniport the test set up.
func newRigNIC(t *testing.T, cfg Config, nic *fakeNIC) *rig {
	t.Helper()
	return newRigDev(t, cfg, nic, false)
}

// newRigSilent is newRig with a NIC TAP whose interrupt never fires.
func newRigSilent(t *testing.T, cfg Config) *rig {
	t.Helper()
	return newRigDev(t, cfg, &fakeNIC{}, true)
}

func newRigDev(t *testing.T, cfg Config, nic *fakeNIC, silent bool) *rig {
	t.Helper()
	r := &rig{t: t, nic: nic}
	var err error
	if r.nicE, r.host, err = tapdev.Socketpair(); err != nil {
		t.Fatal(err)
	}
	r.dev = &gatedDev{Dev: r.nicE}
	if silent {
		r.dev.silent = shimtest.NewSilentSource()
	}
	r.drv, r.a = newAdapter(t, r.nic)
	t.Cleanup(r.cleanup)
	if cfg.NICName == "" {
		cfg.NICName = "tm-test"
	}
	open := cfg.Open // queues after the first, when the test has several
	cfg.Open = func(name string, q int) (Device, bool, error) {
		if q > 0 && open != nil {
			return open(name, q)
		}
		return r.dev, false, nil
	}
	if r.s, err = Bind(r.a, cfg); err != nil {
		t.Fatalf("Bind: %v", err)
	}
	return r
}

func (r *rig) cleanup() {
	r.dev.reads.Open()
	r.dev.writes.Open()
	if !r.done {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if r.a.State() == ndisshim.StateRunning {
			if err := r.a.Pause(ctx); err != nil {
				r.t.Errorf("cleanup: pause: %v", err)
			}
		}
		if r.s != nil {
			if err := r.s.Close(ctx); err != nil {
				r.t.Errorf("cleanup: close binding: %v", err)
			}
		}
		if err := r.a.Halt(ctx, ndisshim.HaltDeviceDisabled); err != nil {
			r.t.Errorf("cleanup: halt: %v", err)
		}
		if err := r.drv.Deregister(); err != nil {
			r.t.Errorf("cleanup: deregister: %v", err)
		}
	}
	r.host.Close()
	r.nicE.Close()
}

func (r *rig) restart() {
	r.t.Helper()
	shimtest.Restart(r.t, r.a)
}

func (r *rig) pause() {
	r.t.Helper()
	shimtest.Pause(r.t, r.a)
}

// close pauses, unbinds, halts and unloads, each step verifier-clean.
func (r *rig) close() {
	r.t.Helper()
	if r.a.State() == ndisshim.StateRunning {
		r.pause()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r.done = true
	if err := r.s.Close(ctx); err != nil {
		r.t.Fatalf("close binding: %v", err)
	}
	if err := r.a.Halt(ctx, ndisshim.HaltDeviceDisabled); err != nil {
		r.t.Fatalf("halt: %v", err)
	}
	if err := r.drv.Deregister(); err != nil {
		r.t.Fatalf("deregister: %v", err)
	}
}

// hostSend writes frames on the host's end, as the host stack would.
func (r *rig) hostSend(frames ...[]byte) {
	r.t.Helper()
	shimtest.WriteFrames(r.t, "host", r.host, frames...)
}

// hostRead reads up to max frames the binding has written to the NIC TAP
// without waiting.
func (r *rig) hostRead(max int) [][]byte {
	r.t.Helper()
	got, err := shimtest.ReadFrames(r.host, max)
	if err != nil {
		r.t.Fatalf("host read: %v", err)
	}
	return got
}

// hostReadClosed reads what is left on the host's end after the binding
// closed the NIC TAP: the frames, then EOF.
func (r *rig) hostReadClosed() [][]byte {
	r.t.Helper()
	got, err := shimtest.ReadFrames(r.host, 64)
	if !errors.Is(err, tapdev.ErrDeviceGone) {
		r.t.Errorf("host read after the NIC TAP closed: %v, want EOF (device gone)", err)
	}
	return got
}

// hostReadN waits for exactly n frames on the host's end.
func (r *rig) hostReadN(n int) [][]byte {
	r.t.Helper()
	return shimtest.ReadFramesN(r.t, "the NIC TAP", r.host, n)
}
