package ndisshim_test

// The fakes at the shim's two seams: fakeMiniport (an in-memory NIC whose
// InitializeEx allocates one of every resource the shim tracks, and whose
// HaltEx frees them in reverse, unless told to misbehave) and fakeProto (a
// protocol that keeps, copies or returns what it is given). A rig is one
// driver with one adapter on the fake miniport.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

var (
	_ ndisshim.Miniport        = (*fakeMiniport)(nil)
	_ ndisshim.Protocol        = (*fakeProto)(nil)
	_ ndisshim.InterruptSource = (*fakeSource)(nil)
)

var errInitFailed = errors.New("fake: hardware did not answer")

const fakeBufSize = 128

// faults makes the fake miniport break one NDIS rule each.
type faults struct {
	leakPool        bool // HaltEx frees neither the NBLs nor their pool
	keepTimer       bool // HaltEx does not free the timer
	keepInterrupt   bool // HaltEx does not deregister the interrupt
	keepTagged      bool // HaltEx does not free the tagged memory
	keepShared      bool // HaltEx does not free the shared memory
	keepPort        bool // HaltEx does not free the port
	keepDevice      bool // HaltEx does not release the device registration
	freePoolFirst   bool // HaltEx frees the pool while its NBLs are allocated, then does it right
	failInit        bool // InitializeEx fails and leaves the interrupt and the tagged memory behind
	failInitClean   bool // InitializeEx fails and undoes everything
	holdSends       bool // sends are queued until the test completes them
	pauseKeepsSends bool // PauseEx does not complete the queued sends (the test does, late)
}

// fakeConfig is the InitParameters.Config of the fake miniport.
type fakeConfig struct {
	poolSize       int // receive NBLs (default 64)
	dpcBatch       int // NBLs per indication from the DPC (default 8)
	resourcesEvery int // every n-th DPC batch is indicated with RESOURCES (0: never)
	faults         faults
	onInit         func(a *ndisshim.Adapter)       // runs inside InitializeEx (state Initializing)
	onRestart      func(ctx context.Context) error // runs inside RestartEx (state Restarting)
	onPause        func()                          // runs inside PauseEx (state Pausing)
	onHalt         func()                          // runs first thing in HaltEx
	requestGate    *shimtest.Gate                  // OIDRequest and CancelSend pass it first (outside the fake's lock)
	pauseErr       error                           // what PauseEx returns (after doing its work)
	onDPC          func()                          // replaces the receive DPC
	onIntrError    func(error)                     // extra observer of the interrupt's error
	stats          ndisshim.StatisticsInfo         // what OID_GEN_STATISTICS answers
	mp             *fakeMiniport                   // set by InitializeEx
}

// fakeSource is an interrupt line the test (or the miniport) raises with kick.
type fakeSource struct {
	kickCh chan struct{}
	errCh  chan error
	stopCh chan struct{}
	stops  atomic.Int32
	once   sync.Once
}

func newFakeSource() *fakeSource {
	return &fakeSource{kickCh: make(chan struct{}, 1), errCh: make(chan error, 1), stopCh: make(chan struct{})}
}

func (s *fakeSource) Wait() error {
	select {
	case <-s.stopCh:
		return ndisshim.ErrInterruptStopped
	default:
	}
	select {
	case <-s.stopCh:
		return ndisshim.ErrInterruptStopped
	case err := <-s.errCh:
		return err
	case <-s.kickCh:
		return nil
	}
}

func (s *fakeSource) Stop() {
	s.stops.Add(1)
	s.once.Do(func() { close(s.stopCh) })
}

// kick raises the line (coalescing, like a level-triggered interrupt).
func (s *fakeSource) kick() {
	select {
	case s.kickCh <- struct{}{}:
	default:
	}
}

// fakeMiniport is an in-memory NIC: its receive buffers are a shared-memory
// slab, one NBL (with NB) per buffer, all allocated at initialize and
// recycled through the free list; its "interrupt" is a fakeSource and its
// DPC indicates batches from the free list.
type fakeMiniport struct {
	a   *ndisshim.Adapter
	cfg *fakeConfig

	dev    *ndisshim.DeviceRegistration
	tagged []byte
	mem    *ndisshim.SharedMemory
	pool   *ndisshim.NBLPool
	src    *fakeSource
	intr   *ndisshim.Interrupt
	timer  *ndisshim.Timer
	port   ndisshim.PortNumber

	dpcRuns    atomic.Int64
	haltCalls  atomic.Int32
	requestsIn atomic.Int32 // OIDRequest and CancelSend calls running now

	mu           sync.Mutex
	gone         map[string]bool // resources already released
	haltLog      []string        // what HaltEx freed, in order
	free         []*ndisshim.NetBufferList
	out          map[*ndisshim.NetBufferList]bool // indicated without RESOURCES, not back
	indicatedIdx map[int]int                      // NBL index → indications without RESOURCES
	returnedIdx  map[int]int                      // NBL index → times the return handler saw it
	indicated    int                              // NBLs indicated without RESOURCES
	resIndicated int                              // NBLs indicated with RESOURCES
	refused      int                              // NBLs IndicateReceive refused
	returned     int
	rxBudget     int // NBLs the DPC may still indicate
	batchNo      int
	seq          uint64
	paused       bool
	inHalt       bool
	halted       bool
	bad          []string // contract violations seen by the handlers
	queued       []*ndisshim.NetBufferList
	sendsSeen    int
	shutdowns    []ndisshim.ShutdownAction
	pnp          []ndisshim.PnPEvent
	cancels      []uintptr
	filter       uint32
	calls        []string // PauseEx/RestartEx begin/end, for ordering checks
}

func fakeInitialize(a *ndisshim.Adapter, p ndisshim.InitParameters) (ndisshim.Miniport, error) {
	cfg := p.Config.(*fakeConfig)
	if cfg.poolSize == 0 {
		cfg.poolSize = 64
	}
	if cfg.dpcBatch == 0 {
		cfg.dpcBatch = 8
	}
	m := &fakeMiniport{a: a, cfg: cfg, gone: map[string]bool{}, out: map[*ndisshim.NetBufferList]bool{},
		indicatedIdx: map[int]int{}, returnedIdx: map[int]int{}, paused: true}
	cfg.mp = m
	if cfg.onInit != nil {
		cfg.onInit(a)
	}
	fail := func(err error) (ndisshim.Miniport, error) {
		m.undo(faults{})
		return nil, err
	}
	var err error
	// The allocation order; HaltEx undoes it in reverse.
	if m.dev, err = a.RegisterDevice("fakehw-" + p.Name); err != nil {
		return fail(err)
	}
	if m.tagged, err = a.AllocateTagged(256, ndisshim.MakeTag("FkTg")); err != nil {
		return fail(err)
	}
	n := cfg.poolSize
	if m.mem, err = a.AllocateSharedMemory(n * fakeBufSize); err != nil {
		return fail(err)
	}
	if m.pool, err = a.AllocateNBLPool(ndisshim.NBLPoolParams{Tag: ndisshim.MakeTag("FkRx"), Count: n, WithNB: true}); err != nil {
		return fail(err)
	}
	nbls := make([]*ndisshim.NetBufferList, n)
	if got := m.pool.AllocateBatch(nbls); got != n {
		return fail(fmt.Errorf("fake: allocated %d of %d NBLs", got, n))
	}
	for i, nbl := range nbls {
		nbl.FirstNB.Data = m.mem.Bytes[i*fakeBufSize : (i+1)*fakeBufSize : (i+1)*fakeBufSize]
	}
	m.free = nbls
	m.src = newFakeSource()
	if m.intr, err = a.RegisterInterrupt("fake-rx", m.src, m.dpc, m.interruptFailed); err != nil {
		return fail(err)
	}
	if m.timer, err = a.AllocateTimer("fake-watchdog", func() {}); err != nil {
		return fail(err)
	}
	if m.port, err = a.AllocatePort(); err != nil {
		return fail(err)
	}
	if err = a.ActivatePort(m.port); err != nil {
		return fail(err)
	}
	switch {
	case cfg.faults.failInit:
		m.undo(faults{keepInterrupt: true, keepTagged: true})
		return nil, errInitFailed
	case cfg.faults.failInitClean:
		return fail(errInitFailed)
	}
	return m, nil
}

// undo frees, in the reverse of the allocation order, what is still
// allocated, except what f says to keep; it logs each step in haltLog.
func (m *fakeMiniport) undo(f faults) {
	step := func(name string, keep bool, do func()) {
		m.mu.Lock()
		skip := keep || m.gone[name]
		if !skip {
			m.gone[name] = true
			m.haltLog = append(m.haltLog, name)
		}
		m.mu.Unlock()
		if !skip {
			do()
		}
	}
	if m.port != 0 {
		step("port", f.keepPort, func() { _ = m.a.FreePort(m.port) })
	}
	if m.timer != nil {
		step("timer", f.keepTimer, m.timer.Free)
	}
	if m.intr != nil {
		step("interrupt", f.keepInterrupt, func() { _ = m.intr.Deregister() })
	}
	if m.pool != nil {
		if f.freePoolFirst {
			_ = m.pool.Free() // refused: the NBLs are still allocated
		}
		step("nbls", f.leakPool, func() {
			m.mu.Lock()
			free := m.free
			m.free = nil
			m.mu.Unlock()
			m.pool.FreeChain(ndisshim.Chain(free...))
		})
		step("pool", f.leakPool, func() { _ = m.pool.Free() })
	}
	if m.mem != nil {
		step("shared", f.keepShared, func() { _ = m.mem.Free() })
	}
	if m.tagged != nil {
		step("tagged", f.keepTagged, func() { m.a.FreeTagged(m.tagged) })
	}
	if m.dev != nil {
		step("device", f.keepDevice, m.dev.Release)
	}
}

// forceRelease frees whatever a faulty HaltEx (or an abandoned adapter)
// left, so that no goroutine and no mapping outlives the test.
func (m *fakeMiniport) forceRelease() {
	if m != nil {
		m.undo(faults{})
	}
}

func (m *fakeMiniport) checkLive(call string) {
	if m.inHalt {
		m.bad = append(m.bad, call+" during HaltEx")
	}
	if m.halted {
		m.bad = append(m.bad, call+" after HaltEx")
	}
}

// problems returns the contract violations the fake saw.
func (m *fakeMiniport) problems() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.bad...)
}

func (m *fakeMiniport) HaltEx(action ndisshim.HaltAction) {
	m.haltCalls.Add(1)
	m.mu.Lock()
	m.checkLive("HaltEx")
	if n := m.requestsIn.Load(); n > 0 {
		m.bad = append(m.bad, fmt.Sprintf("HaltEx while %d OIDRequest or CancelSend calls are running", n))
	}
	m.inHalt = true
	m.mu.Unlock()
	if m.cfg.onHalt != nil {
		m.cfg.onHalt()
	}
	m.mu.Lock()
	if len(m.out) > 0 {
		m.bad = append(m.bad, fmt.Sprintf("HaltEx with %d NBLs still indicated", len(m.out)))
	}
	if len(m.queued) > 0 {
		m.bad = append(m.bad, fmt.Sprintf("HaltEx with %d sends queued", len(m.queued)))
	}
	m.mu.Unlock()
	m.undo(m.cfg.faults)
	m.mu.Lock()
	m.inHalt, m.halted = false, true
	m.mu.Unlock()
}

func (m *fakeMiniport) PauseEx(ctx context.Context) error {
	m.mu.Lock()
	m.checkLive("PauseEx")
	m.calls = append(m.calls, "PauseEx")
	m.paused = true
	var q []*ndisshim.NetBufferList
	if !m.cfg.faults.pauseKeepsSends {
		q, m.queued = m.queued, nil
	}
	m.mu.Unlock()
	if m.cfg.onPause != nil {
		m.cfg.onPause()
	}
	if len(q) > 0 {
		for _, n := range q {
			n.Status = ndisshim.StatusPaused
		}
		m.a.SendNetBufferListsComplete(ndisshim.Chain(q...), 0)
	}
	return m.cfg.pauseErr
}

func (m *fakeMiniport) RestartEx(ctx context.Context) error {
	m.mu.Lock()
	m.checkLive("RestartEx")
	m.calls = append(m.calls, "RestartEx begin")
	m.mu.Unlock()
	if m.cfg.onRestart != nil {
		if err := m.cfg.onRestart(ctx); err != nil {
			return err
		}
	}
	m.mu.Lock()
	m.paused = false
	m.calls = append(m.calls, "RestartEx end")
	budget := m.rxBudget
	m.mu.Unlock()
	if budget > 0 {
		m.src.kick()
	}
	return nil
}

func (m *fakeMiniport) ShutdownEx(action ndisshim.ShutdownAction) {
	m.mu.Lock()
	m.checkLive("ShutdownEx")
	m.shutdowns = append(m.shutdowns, action)
	m.paused = true
	m.mu.Unlock()
}

func (m *fakeMiniport) SendNetBufferLists(nbls *ndisshim.NetBufferList, port ndisshim.PortNumber, flags ndisshim.SendFlags) {
	var chain []*ndisshim.NetBufferList
	for n := nbls; n != nil; n = n.Next {
		chain = append(chain, n)
	}
	m.mu.Lock()
	m.checkLive("SendNetBufferLists")
	m.sendsSeen += len(chain)
	if m.cfg.faults.holdSends && !m.paused {
		m.queued = append(m.queued, chain...)
		m.mu.Unlock()
		return
	}
	st := ndisshim.StatusSuccess
	if m.paused { // a send that raced PauseEx
		st = ndisshim.StatusPaused
	}
	m.mu.Unlock()
	for _, n := range chain {
		n.Status = st
	}
	m.a.SendNetBufferListsComplete(nbls, 0)
}

// takeQueued hands the queued sends to the test, which completes them.
func (m *fakeMiniport) takeQueued() []*ndisshim.NetBufferList {
	m.mu.Lock()
	defer m.mu.Unlock()
	q := m.queued
	m.queued = nil
	return q
}

func (m *fakeMiniport) ReturnNetBufferLists(nbls *ndisshim.NetBufferList, flags ndisshim.ReturnFlags) {
	m.mu.Lock()
	m.checkLive("ReturnNetBufferLists")
	for n := nbls; n != nil; {
		next := n.Next
		n.Next = nil
		m.returnedIdx[n.Index()]++
		m.returned++
		if !m.out[n] {
			m.bad = append(m.bad, fmt.Sprintf("return handler got NBL %d, which is not indicated", n.Index()))
		} else {
			delete(m.out, n)
			m.free = append(m.free, n)
		}
		n = next
	}
	budget := m.rxBudget
	m.mu.Unlock()
	if budget > 0 {
		m.src.kick()
	}
}

// request is the start of OIDRequest and CancelSend: it counts the call
// as running (HaltEx checks) and passes the request gate; the returned
// function ends the call.
func (m *fakeMiniport) request() func() {
	m.requestsIn.Add(1)
	if g := m.cfg.requestGate; g != nil {
		g.Pass()
	}
	return func() { m.requestsIn.Add(-1) }
}

func (m *fakeMiniport) CancelSend(id uintptr) {
	defer m.request()()
	m.mu.Lock()
	m.checkLive("CancelSend")
	m.cancels = append(m.cancels, id)
	m.mu.Unlock()
}

func (m *fakeMiniport) OIDRequest(req *ndisshim.OIDRequest) ndisshim.Status {
	defer m.request()()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.checkLive("OIDRequest")
	switch {
	case req.OID == ndisshim.OIDGenMaximumFrameSize && req.Type == ndisshim.OIDQuery:
		return req.WriteUint32(1514)
	case req.OID == ndisshim.OIDGenStatistics && req.Type == ndisshim.OIDQuery:
		return req.WriteBytes(m.cfg.stats.Marshal())
	case req.OID == ndisshim.OIDGenCurrentPacketFilter && req.Type == ndisshim.OIDSet:
		v, st := req.Uint32()
		if st == ndisshim.StatusSuccess {
			m.filter = v
		}
		return st
	case req.OID == ndisshim.OIDGenCurrentPacketFilter && req.Type == ndisshim.OIDQuery:
		return req.WriteUint32(m.filter)
	}
	return ndisshim.StatusNotSupported
}

func (m *fakeMiniport) DevicePnPEventNotify(ev ndisshim.PnPEvent) {
	m.mu.Lock()
	m.checkLive("DevicePnPEventNotify")
	m.pnp = append(m.pnp, ev)
	m.mu.Unlock()
}

func (m *fakeMiniport) interruptFailed(err error) {
	if m.cfg.onIntrError != nil {
		m.cfg.onIntrError(err)
	}
}

// dpc is the receive DPC: indicate batches from the free list while the
// budget lasts and the adapter is not paused.
func (m *fakeMiniport) dpc() {
	m.dpcRuns.Add(1)
	if m.cfg.onDPC != nil {
		m.cfg.onDPC()
		return
	}
	for {
		m.mu.Lock()
		if m.halted {
			m.bad = append(m.bad, "DPC after HaltEx")
		}
		k := min(m.cfg.dpcBatch, len(m.free), m.rxBudget)
		if m.paused || m.halted || k <= 0 {
			m.mu.Unlock()
			return
		}
		m.batchNo++
		res := m.cfg.resourcesEvery > 0 && m.batchNo%m.cfg.resourcesEvery == 0
		nbls := m.takeFreeLocked(k)
		m.mu.Unlock()
		if err := m.indicate(nbls, res); err != nil {
			return
		}
	}
}

// allowRx lets the DPC indicate n more NBLs and raises the interrupt.
func (m *fakeMiniport) allowRx(n int) {
	m.mu.Lock()
	m.rxBudget += n
	m.mu.Unlock()
	m.src.kick()
}

func (m *fakeMiniport) takeFreeLocked(k int) []*ndisshim.NetBufferList {
	nbls := append([]*ndisshim.NetBufferList(nil), m.free[len(m.free)-k:]...)
	m.free = m.free[:len(m.free)-k]
	return nbls
}

// indicateN takes k NBLs from the free list and indicates them in one chain
// from the caller's goroutine. On error the NBLs are back in the free list.
func (m *fakeMiniport) indicateN(k int, resources bool) ([]*ndisshim.NetBufferList, error) {
	m.mu.Lock()
	if k > len(m.free) {
		m.mu.Unlock()
		return nil, fmt.Errorf("fake: %d NBLs asked, %d free", k, len(m.free))
	}
	nbls := m.takeFreeLocked(k)
	m.mu.Unlock()
	return nbls, m.indicate(nbls, resources)
}

// indicate writes a sequence number into each buffer and indicates the
// chain. The ledger is updated before the call: the protocol may return
// the NBLs before IndicateReceive returns.
func (m *fakeMiniport) indicate(nbls []*ndisshim.NetBufferList, resources bool) error {
	m.mu.Lock()
	for _, n := range nbls {
		m.seq++
		binary.LittleEndian.PutUint64(n.FirstNB.Data, m.seq)
		n.FirstNB.SetBytes(0, 8)
		if !resources {
			m.out[n] = true
			m.indicatedIdx[n.Index()]++
		}
	}
	if resources {
		m.resIndicated += len(nbls)
	} else {
		m.indicated += len(nbls)
		m.rxBudget -= len(nbls)
	}
	m.mu.Unlock()
	var flags ndisshim.ReceiveFlags
	if resources {
		flags |= ndisshim.ReceiveFlagResources
	}
	err := m.a.IndicateReceive(ndisshim.Chain(nbls...), ndisshim.DefaultPort, len(nbls), flags)
	if err == nil && !resources {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.refused += len(nbls)
		if resources {
			m.resIndicated -= len(nbls)
		} else {
			m.indicated -= len(nbls)
			m.rxBudget += len(nbls)
		}
	}
	for _, n := range nbls {
		if err != nil && !resources {
			delete(m.out, n)
			m.indicatedIdx[n.Index()]--
		}
		n.Next = nil
		// Ours again: overwrite the buffer, as the NIC would reuse it.
		binary.LittleEndian.PutUint64(n.FirstNB.Data, ^uint64(0))
		m.free = append(m.free, n)
	}
	return err
}

// counts is a snapshot of the fake's receive ledger.
type counts struct {
	indicated, resIndicated, returned, free, out, refused int
}

func (m *fakeMiniport) counts() counts {
	m.mu.Lock()
	defer m.mu.Unlock()
	return counts{m.indicated, m.resIndicated, m.returned, len(m.free), len(m.out), m.refused}
}

// checkExactlyOnce reports every NBL whose returns differ from its
// indications without RESOURCES.
func (m *fakeMiniport) checkExactlyOnce(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := 0; i < m.cfg.poolSize; i++ {
		if m.indicatedIdx[i] != m.returnedIdx[i] {
			t.Errorf("NBL %d: indicated %d times without RESOURCES, seen by the return handler %d times", i, m.indicatedIdx[i], m.returnedIdx[i])
		}
	}
}

// recvCall is one ReceiveNetBufferLists call a fakeProto saw.
type recvCall struct {
	count int
	flags ndisshim.ReceiveFlags
	seqs  []uint64 // the data, copied during the call
	nbls  []*ndisshim.NetBufferList
}

// fakeProto is a protocol binding. By default it keeps every NBL indicated
// without RESOURCES (in held) and copies what it is shown with RESOURCES.
type fakeProto struct {
	name  string
	order *orderLog

	// onReceive, when set, replaces the default keeping (after the call
	// is recorded); it owns the chain without RESOURCES.
	onReceive func(b *ndisshim.Binding, nbls *ndisshim.NetBufferList, count int, flags ndisshim.ReceiveFlags)
	// onComplete observes each completion run (after it is recorded).
	onComplete func(b *ndisshim.Binding, run []*ndisshim.NetBufferList)
	pnpErr     error

	mu       sync.Mutex
	held     []*ndisshim.NetBufferList
	recv     []recvCall
	runs     [][]*ndisshim.NetBufferList // send completions, one run per call
	statuses map[*ndisshim.NetBufferList][]ndisshim.Status
	events   []ndisshim.NetPnPEvent
	status   []ndisshim.StatusIndication
	bad      []string
}

// orderLog records which binding saw an indication first.
type orderLog struct {
	mu  sync.Mutex
	log []string
}

func (o *orderLog) add(s string) {
	o.mu.Lock()
	o.log = append(o.log, s)
	o.mu.Unlock()
}

func (o *orderLog) get() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.log...)
}

func newProto(name string) *fakeProto {
	return &fakeProto{name: name, statuses: map[*ndisshim.NetBufferList][]ndisshim.Status{}}
}

func (p *fakeProto) ReceiveNetBufferLists(b *ndisshim.Binding, nbls *ndisshim.NetBufferList, port ndisshim.PortNumber, count int, flags ndisshim.ReceiveFlags) {
	if p.order != nil {
		p.order.add(p.name)
	}
	var c recvCall
	c.count, c.flags = count, flags
	for n := nbls; n != nil; n = n.Next {
		c.seqs = append(c.seqs, binary.LittleEndian.Uint64(n.Bytes()))
		c.nbls = append(c.nbls, n)
	}
	p.mu.Lock()
	if len(c.nbls) != count {
		p.bad = append(p.bad, fmt.Sprintf("indication of %d NBLs says count %d", len(c.nbls), count))
	}
	if b.Name() != p.name {
		p.bad = append(p.bad, fmt.Sprintf("indication for binding %s reached protocol %s", b.Name(), p.name))
	}
	p.recv = append(p.recv, c)
	hook := p.onReceive
	if hook == nil && !flags.Has(ndisshim.ReceiveFlagResources) {
		p.held = append(p.held, c.nbls...)
	}
	p.mu.Unlock()
	if hook != nil {
		hook(b, nbls, count, flags)
	}
}

func (p *fakeProto) SendNetBufferListsComplete(b *ndisshim.Binding, nbls *ndisshim.NetBufferList, flags ndisshim.SendCompleteFlags) {
	var run []*ndisshim.NetBufferList
	for n := nbls; n != nil; n = n.Next {
		run = append(run, n)
	}
	p.mu.Lock()
	if b.Name() != p.name {
		p.bad = append(p.bad, fmt.Sprintf("completion for binding %s reached protocol %s", b.Name(), p.name))
	}
	p.runs = append(p.runs, run)
	for _, n := range run {
		p.statuses[n] = append(p.statuses[n], n.Status)
	}
	hook := p.onComplete
	p.mu.Unlock()
	if hook != nil {
		hook(b, run)
	}
}

func (p *fakeProto) StatusEx(b *ndisshim.Binding, s ndisshim.StatusIndication) {
	p.mu.Lock()
	p.status = append(p.status, s)
	p.mu.Unlock()
}

func (p *fakeProto) NetPnPEvent(b *ndisshim.Binding, ev ndisshim.NetPnPEvent) error {
	p.mu.Lock()
	p.events = append(p.events, ev)
	p.mu.Unlock()
	return p.pnpErr
}

// take removes up to n held NBLs (the oldest first) and gives them to the caller.
func (p *fakeProto) take(n int) []*ndisshim.NetBufferList {
	p.mu.Lock()
	defer p.mu.Unlock()
	n = min(n, len(p.held))
	out := append([]*ndisshim.NetBufferList(nil), p.held[:n]...)
	p.held = p.held[n:]
	return out
}

func (p *fakeProto) heldCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.held)
}

func (p *fakeProto) calls() []recvCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]recvCall(nil), p.recv...)
}

func (p *fakeProto) problems() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.bad...)
}

// returnAll gives back everything the protocol holds, in one chain.
func (p *fakeProto) returnAll(b *ndisshim.Binding) int {
	nbls := p.take(1 << 30)
	if len(nbls) > 0 {
		b.ReturnNetBufferLists(ndisshim.Chain(nbls...), 0)
	}
	return len(nbls)
}

// findingLog collects what the verifier reports as it happens.
type findingLog struct {
	mu sync.Mutex
	fs []ndisshim.Finding
}

func (l *findingLog) add(f ndisshim.Finding) {
	l.mu.Lock()
	l.fs = append(l.fs, f)
	l.mu.Unlock()
}

func (l *findingLog) get() []ndisshim.Finding {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]ndisshim.Finding(nil), l.fs...)
}

// rig is a driver with one adapter on the fake miniport.
type rig struct {
	t     *testing.T
	d     *ndisshim.Driver
	a     *ndisshim.Adapter
	m     *fakeMiniport
	cfg   *fakeConfig
	found *findingLog
}

func newDriver(t *testing.T) (*ndisshim.Driver, *findingLog) {
	t.Helper()
	d, err := ndisshim.RegisterMiniportDriver(ndisshim.Characteristics{Name: "fakemp", Version: "1.0", InitializeEx: fakeInitialize}, nil)
	if err != nil {
		t.Fatalf("RegisterMiniportDriver: %v", err)
	}
	found := &findingLog{}
	d.OnFinding(found.add)
	return d, found
}

// newRig registers a driver and adds an adapter "tm0" on the fake. The
// cleanup frees whatever the test (or a faulty HaltEx) left behind.
func newRig(t *testing.T, cfg *fakeConfig, opts ndisshim.AdapterOptions) *rig {
	t.Helper()
	d, found := newDriver(t)
	r := &rig{t: t, d: d, cfg: cfg, found: found}
	r.addAdapter("tm0", cfg, opts)
	return r
}

func (r *rig) addAdapter(name string, cfg *fakeConfig, opts ndisshim.AdapterOptions) {
	r.t.Helper()
	if cfg == nil {
		cfg = &fakeConfig{}
		r.cfg = cfg
	}
	r.t.Cleanup(func() { cfg.mp.forceRelease() })
	a, err := r.d.AddAdapter(ndisshim.InitParameters{Name: name, Config: cfg}, opts)
	if err != nil {
		r.t.Fatalf("AddAdapter %s: %v", name, err)
	}
	if a.State() != ndisshim.StatePaused {
		r.t.Fatalf("after AddAdapter: state %s, want Paused", a.State())
	}
	r.a, r.m = a, cfg.mp
}

func (r *rig) open(name string) (*ndisshim.Binding, *fakeProto) {
	r.t.Helper()
	p := newProto(name)
	b, err := r.a.OpenAdapter(name, p)
	if err != nil {
		r.t.Fatalf("OpenAdapter %s: %v", name, err)
	}
	return b, p
}

func (r *rig) restart() {
	r.t.Helper()
	shimtest.Restart(r.t, r.a)
}

func (r *rig) pause() {
	r.t.Helper()
	shimtest.Pause(r.t, r.a)
}

// finish is the orderly end: pause if running, close the bindings, halt,
// unload; each must succeed, and neither fake may have seen a violation.
func (r *rig) finish(bs ...*ndisshim.Binding) {
	r.t.Helper()
	if r.a.State() == ndisshim.StateRunning {
		r.pause()
	}
	for _, b := range bs {
		if err := b.Close(); err != nil {
			r.t.Errorf("Close %s: %v", b.Name(), err)
		}
	}
	if err := r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
		r.t.Errorf("Halt: %v", err)
	}
	if st := r.a.State(); st != ndisshim.StateHalted {
		r.t.Errorf("after Halt: state %s, want Halted", st)
	}
	if err := r.d.Deregister(); err != nil {
		r.t.Errorf("Deregister: %v", err)
	}
	if p := r.m.problems(); len(p) > 0 {
		r.t.Errorf("fake miniport saw contract violations: %q", p)
	}
}

// verifierError asserts that err is (or joins) a *VerifierError with a
// finding of kind k, and returns that finding.
func verifierError(t *testing.T, err error, scope string, k ndisshim.FindingKind) ndisshim.Finding {
	t.Helper()
	var ve *ndisshim.VerifierError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v is not a *VerifierError", err)
	}
	if !strings.Contains(ve.Scope, scope) {
		t.Errorf("VerifierError scope %q, want it to name %q", ve.Scope, scope)
	}
	for _, f := range ve.Findings {
		if f.Kind == k {
			if !strings.Contains(err.Error(), string(k)) || !strings.Contains(err.Error(), f.Object) {
				t.Errorf("error text %q does not name the finding %q", err.Error(), f)
			}
			return f
		}
	}
	t.Fatalf("VerifierError has no %q finding: %v", k, err)
	return ndisshim.Finding{}
}

// findingOf returns the first finding of kind k in fs.
func findingOf(t *testing.T, fs []ndisshim.Finding, k ndisshim.FindingKind) ndisshim.Finding {
	t.Helper()
	for _, f := range fs {
		if f.Kind == k {
			return f
		}
	}
	t.Fatalf("no %q finding among %v", k, fs)
	return ndisshim.Finding{}
}
