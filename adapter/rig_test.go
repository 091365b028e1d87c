package adapter

// The test rig: the TAP miniport under the real shim, its hardware one end
// of a tapdev socketpair (the other end, peer, plays the wire), and a fake
// protocol bound above it that records every indication and returns the
// NBLs at once or holds them until the test returns them.

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
	"github.com/tapminiport/tapminiport/tapdev"
)

// TestMain proves that no goroutine of the miniport (the interrupt reader,
// timer handlers) outlives the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	ourMAC   = net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}
	otherMAC = net.HardwareAddr{0x02, 0x66, 0x77, 0x88, 0x99, 0xaa}
	peerMAC  = net.HardwareAddr{0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee}
	bcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	mcastA   = net.HardwareAddr{0x01, 0x00, 0x5e, 0x00, 0x00, 0x01}
	mcastB   = net.HardwareAddr{0x01, 0x00, 0x5e, 0x00, 0x00, 0x02}
)

const testMTU = 1500

// frame builds a frame of size bytes to dst from peerMAC (truncated when
// size < 14, for runts), with a payload that depends on seq.
func frame(dst net.HardwareAddr, size int, seq int) []byte {
	return shimtest.Frame(dst, peerMAC, size, seq)
}

// indication is what the fake protocol saw of one ReceiveNetBufferLists.
type indication struct {
	frames [][]byte           // copies, taken during the call
	infos  []ndisshim.NBLInfo // each NBL's out-of-band information
	count  int                // the count argument
	flags  ndisshim.ReceiveFlags
}

type completion struct {
	statuses []ndisshim.Status
}

// fakeProto is a protocol bound with Adapter.OpenAdapter.
type fakeProto struct {
	hold atomic.Bool // keep NBLs indicated without RESOURCES until the test returns them

	mu        sync.Mutex
	inds      []indication
	frames    int
	held      []*ndisshim.NetBufferList
	completes []completion
	events    []ndisshim.NetPnPEvent
	statuses  []ndisshim.StatusIndication
	sendPool  *ndisshim.NBLPool
	// onStatus, if set, runs in StatusEx after the indication is
	// recorded (a protocol that sends from its status handler)
	onStatus func(b *ndisshim.Binding, s ndisshim.StatusIndication)
}

var _ ndisshim.Protocol = (*fakeProto)(nil)

func (p *fakeProto) ReceiveNetBufferLists(b *ndisshim.Binding, nbls *ndisshim.NetBufferList, port ndisshim.PortNumber, count int, flags ndisshim.ReceiveFlags) {
	ind := indication{count: count, flags: flags}
	var list []*ndisshim.NetBufferList
	for n := nbls; n != nil; n = n.Next {
		ind.frames = append(ind.frames, bytes.Clone(n.Bytes()))
		ind.infos = append(ind.infos, n.Info)
		list = append(list, n)
	}
	resources := flags.Has(ndisshim.ReceiveFlagResources)
	keep := !resources && p.hold.Load()
	p.mu.Lock()
	p.inds = append(p.inds, ind)
	p.frames += len(list)
	if keep {
		p.held = append(p.held, list...)
	}
	p.mu.Unlock()
	if !resources && !keep {
		b.ReturnNetBufferLists(nbls, 0)
	}
}

func (p *fakeProto) SendNetBufferListsComplete(b *ndisshim.Binding, nbls *ndisshim.NetBufferList, flags ndisshim.SendCompleteFlags) {
	var c completion
	for n := nbls; n != nil; n = n.Next {
		c.statuses = append(c.statuses, n.Status)
	}
	p.mu.Lock()
	p.completes = append(p.completes, c)
	pool := p.sendPool
	p.mu.Unlock()
	pool.FreeChain(nbls)
}

func (p *fakeProto) StatusEx(b *ndisshim.Binding, s ndisshim.StatusIndication) {
	p.mu.Lock()
	p.statuses = append(p.statuses, s)
	hook := p.onStatus
	p.mu.Unlock()
	if hook != nil {
		hook(b, s)
	}
}

func (p *fakeProto) NetPnPEvent(b *ndisshim.Binding, ev ndisshim.NetPnPEvent) error {
	p.mu.Lock()
	p.events = append(p.events, ev)
	p.mu.Unlock()
	return nil
}

func (p *fakeProto) frameCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.frames
}

func (p *fakeProto) indications() []indication {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]indication(nil), p.inds...)
}

// allFrames is every indicated frame, in order.
func (p *fakeProto) allFrames() [][]byte {
	var fs [][]byte
	for _, ind := range p.indications() {
		fs = append(fs, ind.frames...)
	}
	return fs
}

func (p *fakeProto) heldCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.held)
}

func (p *fakeProto) completions() []completion {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]completion(nil), p.completes...)
}

func (p *fakeProto) sawEvent(ev ndisshim.NetPnPEvent) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.events {
		if e == ev {
			return true
		}
	}
	return false
}

// returnHeld gives the first k held NBLs back in one chain.
func (p *fakeProto) returnHeld(b *ndisshim.Binding, k int) {
	p.mu.Lock()
	k = min(k, len(p.held))
	list := append([]*ndisshim.NetBufferList(nil), p.held[:k]...)
	p.held = p.held[k:]
	p.mu.Unlock()
	if len(list) > 0 {
		b.ReturnNetBufferLists(ndisshim.Chain(list...), 0)
	}
}

// send sends frames down as one chain of NBLs from the protocol's own pool.
func (p *fakeProto) send(t *testing.T, b *ndisshim.Binding, frames ...[]byte) {
	t.Helper()
	p.sendWith(t, b, 0, ndisshim.NBLInfo{}, frames...)
}

// sendWith sends frames with headroom bytes free before each one and info
// as every NBL's out-of-band information.
func (p *fakeProto) sendWith(t *testing.T, b *ndisshim.Binding, headroom int, info ndisshim.NBLInfo, frames ...[]byte) {
	t.Helper()
	pool := p.pool(t, b)
	nbls := make([]*ndisshim.NetBufferList, len(frames))
	for i, f := range frames {
		n := pool.Allocate()
		if n == nil {
			t.Fatalf("send pool empty")
		}
		n.FirstNB.Data = append(make([]byte, headroom), f...)
		n.FirstNB.SetBytes(headroom, len(f))
		n.Info = info
		nbls[i] = n
	}
	b.SendNetBufferLists(ndisshim.Chain(nbls...), ndisshim.DefaultPort, 0)
}

// sendNBs sends one chain with an NBL per element of nbls, each carrying
// its frames as a list of NET_BUFFERs.
func (p *fakeProto) sendNBs(t *testing.T, b *ndisshim.Binding, nbls ...[][]byte) {
	t.Helper()
	pool := p.pool(t, b)
	chain := make([]*ndisshim.NetBufferList, len(nbls))
	for i, frames := range nbls {
		n := pool.Allocate()
		if n == nil {
			t.Fatalf("send pool empty")
		}
		nb := n.FirstNB
		for j, f := range frames {
			if j > 0 {
				nb.Next = &ndisshim.NetBuffer{}
				nb = nb.Next
			}
			nb.Data = bytes.Clone(f)
			nb.SetBytes(0, len(f))
		}
		chain[i] = n
	}
	b.SendNetBufferLists(ndisshim.Chain(chain...), ndisshim.DefaultPort, 0)
}

// pool is the protocol's send pool, allocated at the first send.
func (p *fakeProto) pool(t *testing.T, b *ndisshim.Binding) *ndisshim.NBLPool {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sendPool == nil {
		pool, err := b.AllocateNBLPool(ndisshim.NBLPoolParams{Tag: ndisshim.MakeTag("FPtx"), Count: 64, WithNB: true})
		if err != nil {
			t.Fatalf("send pool: %v", err)
		}
		p.sendPool = pool
	}
	return p.sendPool
}

// gatedDev is the socketpair end with a gate on ReadBatch: while the gate
// is closed the DPC parks in ReadBatch, so the test can queue frames on the
// wire and then let the DPC read them all at once.
type gatedDev struct {
	*tapdev.Dev
	reads shimtest.Gate
}

func (g *gatedDev) ReadBatch(bufs [][]byte, sizes []int) (int, error) {
	g.reads.Pass()
	return g.Dev.ReadBatch(bufs, sizes)
}

// silentDev is the socketpair end with an interrupt line that never fires
// (until stopped): frames are read only when something polls the DPC.
type silentDev struct {
	*tapdev.Dev
	src *shimtest.SilentSource
}

func (d *silentDev) Interrupt() ndisshim.InterruptSource { return d.src }

type rigOptions struct {
	cfg    func(*Config)
	gated  bool // the hardware is a gatedDev
	silent bool // the hardware is a silentDev
	// wrap, if set, makes the hardware what it returns around the
	// miniport's end of the socketpair.
	wrap func(*tapdev.Dev) Device
	hold bool // the protocol holds NBLs
	// onHeld receives the shim's pause/halt reports.
	onHeld func(ndisshim.HeldReport)
	// proto, if set, is bound instead of the rig's fakeProto (which then
	// sees nothing): a benchmark's protocol that allocates nothing.
	proto ndisshim.Protocol
}

// rig is one driver, one adapter on a socketpair, one fake protocol bound.
type rig struct {
	t    testing.TB
	cfg  Config
	drv  *ndisshim.Driver
	a    *ndisshim.Adapter
	mp   *Miniport
	b    *ndisshim.Binding
	p    *fakeProto
	hw   *tapdev.Dev // the miniport's end
	gate *gatedDev   // nil unless gated
	peer *tapdev.Dev // the wire's end

	opens, configures, unconfigures atomic.Int32

	bindingClosed bool
	done          bool // halted (or torn down by the test itself)
}

func baseConfig(r *rig, dev Device) Config {
	return Config{
		HardwareName: "tmhw-test",
		MTU:          testMTU,
		MAC:          append(net.HardwareAddr(nil), ourMAC...),
		RxBuffers:    64,
		Batch:        16,
		StatsPeriod:  5 * time.Millisecond,
		Open: func(name string, _ int) (Device, bool, error) {
			r.opens.Add(1)
			return dev, false, nil
		},
		Configure: func(name string, mtu int, bridge string) error {
			r.configures.Add(1)
			return nil
		},
		Unconfigure: func(name string) error {
			r.unconfigures.Add(1)
			return nil
		},
	}
}

func newRig(t testing.TB, o rigOptions) *rig {
	t.Helper()
	r := &rig{t: t, p: &fakeProto{}}
	r.p.hold.Store(o.hold)
	var err error
	if r.hw, r.peer, err = tapdev.Socketpair(); err != nil {
		t.Fatal(err)
	}
	var dev Device = r.hw
	if o.gated {
		r.gate = &gatedDev{Dev: r.hw}
		dev = r.gate
	}
	if o.silent {
		dev = &silentDev{Dev: r.hw, src: shimtest.NewSilentSource()}
	}
	if o.wrap != nil {
		dev = o.wrap(r.hw)
	}
	r.cfg = baseConfig(r, dev)
	if o.cfg != nil {
		o.cfg(&r.cfg)
	}
	t.Cleanup(r.cleanup)
	if r.drv, err = ndisshim.RegisterMiniportDriver(Characteristics(), nil); err != nil {
		t.Fatal(err)
	}
	opts := ndisshim.AdapterOptions{WatchdogInterval: 50 * time.Millisecond, OnHeld: o.onHeld}
	if opts.OnHeld == nil {
		opts.OnHeld = func(ndisshim.HeldReport) {}
	}
	if r.a, err = r.drv.AddAdapter(ndisshim.InitParameters{Name: "tm-test", Config: r.cfg}, opts); err != nil {
		t.Fatalf("AddAdapter: %v", err)
	}
	r.mp = r.a.MiniportContext().(*Miniport)
	var proto ndisshim.Protocol = r.p
	if o.proto != nil {
		proto = o.proto
	}
	if r.b, err = r.a.OpenAdapter("fakeproto", proto); err != nil {
		t.Fatalf("OpenAdapter: %v", err)
	}
	return r
}

// cleanup halts whatever the test left running, so goleak stays quiet.
func (r *rig) cleanup() {
	if r.gate != nil {
		r.gate.reads.Open()
	}
	if !r.done && r.a != nil && r.b != nil {
		r.p.hold.Store(false)
		r.p.returnHeld(r.b, 1<<30)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if r.a.State() == ndisshim.StateRunning {
			if err := r.a.Pause(ctx); err != nil {
				r.t.Errorf("cleanup: pause: %v", err)
			}
		}
		r.closeBinding()
		if err := r.a.Halt(ctx, ndisshim.HaltDeviceDisabled); err != nil {
			r.t.Errorf("cleanup: halt: %v", err)
		}
		if err := r.drv.Deregister(); err != nil {
			r.t.Errorf("cleanup: deregister: %v", err)
		}
	}
	r.peer.Close()
	r.hw.Close()
}

func (r *rig) closeBinding() {
	if r.bindingClosed {
		return
	}
	r.bindingClosed = true
	r.p.mu.Lock()
	pool := r.p.sendPool
	r.p.sendPool = nil
	r.p.mu.Unlock()
	if pool != nil {
		if err := pool.Free(); err != nil {
			r.t.Errorf("free protocol send pool: %v", err)
		}
	}
	if err := r.b.Close(); err != nil {
		r.t.Errorf("close binding: %v", err)
	}
}

func (r *rig) restart() {
	r.t.Helper()
	shimtest.Restart(r.t, r.a)
}

func (r *rig) pause() {
	r.t.Helper()
	shimtest.Pause(r.t, r.a)
}

// halt pauses (if running), unbinds, halts and unloads, asserting that each
// step is verifier-clean.
func (r *rig) halt() {
	r.t.Helper()
	if r.a.State() == ndisshim.StateRunning {
		r.pause()
	}
	r.closeBinding()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.a.Halt(ctx, ndisshim.HaltDeviceDisabled); err != nil {
		r.t.Fatalf("halt: %v", err)
	}
	r.done = true
	if err := r.drv.Deregister(); err != nil {
		r.t.Fatalf("deregister: %v", err)
	}
}

func (r *rig) setFilter(v uint32) {
	r.t.Helper()
	if st := r.b.OIDRequest(ndisshim.NewSetUint32(ndisshim.OIDGenCurrentPacketFilter, v)); st != ndisshim.StatusSuccess {
		r.t.Fatalf("set packet filter %#x: %v", v, st)
	}
}

func (r *rig) setMulticast(list ...net.HardwareAddr) {
	r.t.Helper()
	req := &ndisshim.OIDRequest{Type: ndisshim.OIDSet, OID: ndisshim.OID8023MulticastList}
	for _, a := range list {
		req.InformationBuffer = append(req.InformationBuffer, a...)
	}
	if st := r.b.OIDRequest(req); st != ndisshim.StatusSuccess {
		r.t.Fatalf("set multicast list: %v", st)
	}
}

func (r *rig) query(oid ndisshim.OID, size int) (*ndisshim.OIDRequest, ndisshim.Status) {
	req := ndisshim.NewQuery(oid, size)
	return req, r.b.OIDRequest(req)
}

// wire writes frames on the peer end, as the link partner would.
func (r *rig) wire(frames ...[]byte) {
	r.t.Helper()
	shimtest.WriteFrames(r.t, "peer", r.peer, frames...)
}

// readPeer reads exactly n frames the miniport wrote to the wire.
func (r *rig) readPeer(n int) [][]byte {
	r.t.Helper()
	return shimtest.ReadFramesN(r.t, "the wire", r.peer, n)
}

// peerEmpty reports whether nothing is waiting on the peer end.
func (r *rig) peerEmpty() bool {
	r.t.Helper()
	got, err := shimtest.ReadFrames(r.peer, 1)
	if err != nil {
		r.t.Fatalf("peer read: %v", err)
	}
	return len(got) == 0
}

func (r *rig) counters() Snapshot { return r.mp.Counters() }

// statistics is the answer to OID_GEN_STATISTICS.
func (r *rig) statistics() ndisshim.StatisticsInfo {
	r.t.Helper()
	q, st := r.query(ndisshim.OIDGenStatistics, 128)
	if st != ndisshim.StatusSuccess {
		r.t.Fatalf("statistics: %v", st)
	}
	s, err := ndisshim.UnmarshalStatistics(q.Answer())
	if err != nil {
		r.t.Fatal(err)
	}
	return s
}

// isGone reports whether err says the other end of the socketpair is closed.
func isGone(err error) bool { return errors.Is(err, tapdev.ErrDeviceGone) }
