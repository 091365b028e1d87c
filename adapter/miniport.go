package adapter

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/rxpool"
	"github.com/tapminiport/tapminiport/tapdev"
)

// DriverName is the miniport driver's name.
const DriverName = "tapminiport"

// Version is the driver version, reported by OID_GEN_VENDOR_DRIVER_VERSION.
const Version = "0.1.0"

// headroom is kept before every received frame (room for a virtio-net header).
const headroom = 64

// Characteristics registers the TAP miniport with the shim
// (NDIS_MINIPORT_DRIVER_CHARACTERISTICS). InitParameters.Config must be a
// Config.
func Characteristics() ndisshim.Characteristics {
	return ndisshim.Characteristics{Name: DriverName, Version: Version, InitializeEx: InitializeEx}
}

// Miniport is the adapter context of the TAP miniport (NetVMini's MP_ADAPTER).
type Miniport struct {
	a   *ndisshim.Adapter
	cfg Config
	log *slog.Logger
	mac net.HardwareAddr // permanent address
	cur net.HardwareAddr // current address

	ctxBlock []byte // the adapter context, tagged memory "TMad"
	reg      *ndisshim.DeviceRegistration
	queues   []*queue // the hardware queues (RSS), queue 0 first
	created  bool
	// devClosed: teardown closed the queues' fds (written only by teardown)
	devClosed bool
	// configured: InitializeEx reached the configure step, so halt and
	// shutdown have a link to put down (written only by InitializeEx).
	configured bool
	pool       *rxpool.Pool
	leakPool   bool // halt could not drain the pool: it is never freed
	stats      *ndisshim.Timer

	vnet       int         // bytes of virtio-net header before each frame (0 or tapdev.VnetHdrLen)
	hwOffloads uint        // TUN_F_* offloads the hardware TAP took (with vnet)
	rxEnabled  atomic.Bool // indications on (Running)
	txEnabled  atomic.Bool // sends on (Running)
	removed    atomic.Bool
	nicDown    atomic.Bool // ShutdownEx or halt stopped the NIC
	shut       atomic.Bool // ShutdownEx was called: no RestartEx turns the NIC on again
	// linkDown: the hardware TAP's link is set down (a pulled cable: a
	// write found tapdev.ErrLinkDown, or the link watch said so); a write
	// that goes through, or the watch, clears it. Changed only under
	// linkMu, by setLink. linkObs numbers the observations (each send's
	// write, each watch event) in the order they were made; linkSeen is
	// the newest one known, applied or agreeing with the state: a send's
	// observation older than it is stale (see observeLink).
	// linkReporting and linkReportedDown (under linkMu) are reportLink's:
	// whether a goroutine is indicating the state, and what the bindings
	// were told last.
	linkDown         atomic.Bool
	linkObs          atomic.Uint64
	linkSeen         atomic.Uint64
	linkMu           sync.Mutex
	linkReporting    bool
	linkReportedDown bool

	filter    atomic.Uint32 // NDIS packet filter
	lookahead atomic.Uint32
	mcMu      sync.Mutex
	multicast [][6]byte

	ctr Counters
}

var _ ndisshim.Miniport = (*Miniport)(nil)

// InitializeEx is MiniportInitializeEx: it claims the device, opens and
// configures the hardware TAP, allocates the receive pool, registers the
// interrupt and starts the statistics timer. On failure it undoes what it
// did, in reverse, and returns an error naming the step.
func InitializeEx(a *ndisshim.Adapter, p ndisshim.InitParameters) (mp ndisshim.Miniport, err error) {
	cfg, ok := p.Config.(Config)
	if !ok {
		return nil, fmt.Errorf("adapter %s: InitParameters.Config is %T, want adapter.Config", p.Name, p.Config)
	}
	if cfg.LowWater == 0 {
		cfg.LowWater = cfg.RxBuffers / 8
	}
	if cfg.StatsPeriod <= 0 {
		cfg.StatsPeriod = time.Second
	}
	if cfg.Queues == 0 {
		cfg.Queues = 1
	}
	if cfg.LinkSpeedBps == 0 {
		cfg.LinkSpeedBps = 10_000_000_000
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	m := &Miniport{a: a, cfg: cfg, log: cfg.Log.With("adapter", p.Name)}
	m.filter.Store(0)                  // NDIS: nothing is indicated until a protocol sets a filter
	m.lookahead.Store(uint32(cfg.MTU)) // OID_GEN_CURRENT_LOOKAHEAD never exceeds OID_GEN_MAXIMUM_LOOKAHEAD (the MTU)
	m.mac = cfg.MAC
	if m.mac == nil {
		m.mac = randomMAC()
	}
	m.cur = append(net.HardwareAddr(nil), m.mac...)

	step := func(name string) error {
		if cfg.FailAt == name {
			return fmt.Errorf("adapter %s: injected failure at step %s", p.Name, name)
		}
		return nil
	}
	// undo runs the halt path over whatever was set up so far.
	defer func() {
		if err != nil {
			m.log.Warn("initialize failed; undoing", "err", err)
			m.teardown(ndisshim.HaltDeviceInitializationFailed)
		}
	}()

	if err = step("context"); err != nil {
		return nil, err
	}
	if m.ctxBlock, err = a.AllocateTagged(4096, ndisshim.MakeTag("TMad")); err != nil {
		return nil, err
	}
	if err = step("register"); err != nil {
		return nil, err
	}
	if m.reg, err = a.RegisterDevice(cfg.HardwareName); err != nil {
		return nil, err
	}
	if err = step("open"); err != nil {
		return nil, err
	}
	if cfg.Open == nil {
		return nil, fmt.Errorf("adapter %s: no way to open hardware %s (Config.Open is nil)", p.Name, cfg.HardwareName)
	}
	for i := 0; i < cfg.Queues; i++ {
		dev, created, err := cfg.Open(cfg.HardwareName, i)
		if err != nil {
			if cfg.Queues > 1 {
				return nil, fmt.Errorf("adapter %s: open hardware TAP %s queue %d of %d: %w", p.Name, cfg.HardwareName, i, cfg.Queues, err)
			}
			return nil, fmt.Errorf("adapter %s: open hardware TAP %s: %w", p.Name, cfg.HardwareName, err)
		}
		if i == 0 {
			m.created = created
		}
		m.queues = append(m.queues, newQueue(m, i, dev))
	}
	if cfg.VnetHdr {
		m.hwOffloads = tapdev.DeviceOffloads(m.queues[0].dev)
	}
	if err = step("configure"); err != nil {
		return nil, err
	}
	m.configured = true // before Configure: a Configure that fails halfway is undone too
	if cfg.Configure != nil {
		if err = cfg.Configure(cfg.HardwareName, cfg.MTU, cfg.Bridge); err != nil {
			return nil, fmt.Errorf("adapter %s: configure hardware TAP %s: %w", p.Name, cfg.HardwareName, err)
		}
	}
	if err = step("rxpool"); err != nil {
		return nil, err
	}
	bufSize := headroom + cfg.maxFrame() + 64
	if cfg.VnetHdr {
		m.vnet = tapdev.VnetHdrLen
		bufSize = headroom + maxGSOFrame + 64 // the slab is mmap'd: untouched pages cost nothing
	}
	m.pool, err = rxpool.New(&a.Resources, rxpool.Config{
		Name: cfg.HardwareName + " rx", Count: cfg.RxBuffers, BufferSize: bufSize,
		Headroom: headroom, LowWater: cfg.LowWater, Log: m.log,
	})
	if err != nil {
		return nil, fmt.Errorf("adapter %s: receive pool: %w", p.Name, err)
	}
	if err = step("interrupt"); err != nil {
		return nil, err
	}
	for _, q := range m.queues {
		name := cfg.HardwareName + " rx"
		if len(m.queues) > 1 {
			name = fmt.Sprintf("%s rx%d", cfg.HardwareName, q.index)
		}
		if q.intr, err = a.RegisterInterrupt(name, q.dev.Interrupt(), q.dpc, m.interruptError); err != nil {
			return nil, err
		}
		q.poller.Arm(q.intr, q.poll)
	}
	if err = step("timer"); err != nil {
		return nil, err
	}
	if m.stats, err = a.AllocateTimer("statistics", m.statsTick); err != nil {
		return nil, err
	}
	if _, err = m.stats.Set(cfg.StatsPeriod, cfg.StatsPeriod); err != nil {
		return nil, err
	}
	m.log.Info("initialized", "hardware", cfg.HardwareName, "created", m.created, "mac", m.mac.String(), "mtu", cfg.MTU,
		"rx_buffers", cfg.RxBuffers, "batch", cfg.Batch, "queues", cfg.Queues, "offloads", tapdev.OffloadNames(m.hwOffloads),
		"reads", tapdev.ReadPathOf(m.queues[0].dev))
	return m, nil
}

func randomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	_, _ = rand.Read(mac)
	mac[0] = (mac[0] | 0x02) &^ 0x01 // locally administered, unicast
	return mac
}

// HaltEx is MiniportHaltEx: the reverse of InitializeEx. Called by the shim
// only in Paused, so no indication is outstanding; the pool's Drain checks
// it all the same and reports what is held if not.
func (m *Miniport) HaltEx(action ndisshim.HaltAction) {
	start := time.Now()
	m.teardown(action)
	m.log.Info("halted", "action", action.String(), "took", time.Since(start))
}

// teardown undoes initialization in the NDIS halt order, skipping what was
// never set up (so a failing InitializeEx uses it too).
func (m *Miniport) teardown(action ndisshim.HaltAction) {
	m.rxEnabled.Store(false)
	m.txEnabled.Store(false)
	// 1. ports: only the default port, nothing to free.
	// 2. timers: cancel, and wait for a handler that already fired.
	if m.stats != nil {
		if !m.stats.Cancel() {
			m.stats.WaitForHandler()
		}
		m.stats.Free()
		m.stats = nil
	}
	// 3. the interrupts: stop each queue's reader and join it.
	for _, q := range m.queues {
		if q.intr != nil {
			q.poller.Disarm()
			if err := q.intr.Deregister(); err != nil {
				m.log.Warn("deregister interrupt", "queue", q.index, "err", err)
			}
			q.intr = nil
		}
	}
	// 4. queued sends: sends are written synchronously, none is queued;
	// take each send lock so a send in progress finishes first.
	m.waitSends()
	// 5. wait for every outstanding receive indication.
	if m.pool != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := m.pool.Drain(ctx)
		cancel()
		if err != nil {
			// Never free memory that is still held: leak it, loudly. The
			// pool stays reachable, so a late return still lands in it.
			m.log.Error("receive buffers still held at halt; leaving them allocated", "err", err)
			m.leakPool = true
		}
	}
	// 6. stop the NIC (unless ShutdownEx already did), 7. close the hardware.
	if len(m.queues) > 0 && !m.devClosed {
		m.devClosed = true // the queues stay listed: their counters are still read
		m.stopNIC()
		for _, q := range m.queues {
			if err := q.dev.Close(); err != nil {
				m.log.Warn("close hardware", "queue", q.index, "err", err)
			}
		}
		if m.created {
			m.log.Info("hardware TAP deleted (it was created by this adapter)", "tap", m.cfg.HardwareName)
		}
	}
	// 8. NBLs, then their pool, then the slab (rxpool frees in that order).
	if m.pool != nil && !m.leakPool {
		if err := m.pool.Free(); err != nil {
			m.log.Error("free receive pool", "err", err)
		}
		m.pool = nil
	}
	// 9. tagged memory, 10. the device registration.
	if m.ctxBlock != nil {
		m.a.FreeTagged(m.ctxBlock)
		m.ctxBlock = nil
	}
	if m.reg != nil {
		m.reg.Release()
		m.reg = nil
	}
	_ = action
}

func (m *Miniport) stopNIC() {
	if !m.configured || m.nicDown.Swap(true) || m.removed.Load() || m.cfg.Unconfigure == nil {
		return
	}
	if err := m.cfg.Unconfigure(m.cfg.HardwareName); err != nil {
		m.log.Warn("put the hardware link down", "tap", m.cfg.HardwareName, "err", err)
	}
}

// PauseEx is MiniportPause: stop indicating and refuse sends. Sends are
// written synchronously, so none is pending once the send lock is free;
// indications already made are waited for by the shim.
func (m *Miniport) PauseEx(ctx context.Context) error {
	m.txEnabled.Store(false)
	m.rxEnabled.Store(false)
	m.waitSends()
	return nil
}

// waitSends waits for the sends in progress on every queue: each checks
// txEnabled under its queue's send lock.
func (m *Miniport) waitSends() {
	for _, q := range m.queues {
		q.txMu.Lock()
		q.txMu.Unlock() //nolint:staticcheck // an empty critical section: wait for the sender
	}
}

// RestartEx is MiniportRestart.
func (m *Miniport) RestartEx(ctx context.Context) error {
	if m.removed.Load() {
		return fmt.Errorf("adapter %s: %w", m.cfg.HardwareName, ndisshim.ErrRemoved)
	}
	// ShutdownEx may come at any moment, even while this runs (the shim
	// takes no lock for it): enable, then look again, so a ShutdownEx
	// before or during the restart leaves the NIC off.
	// A surprise removal likewise (DevicePnPEventNotify sets removed,
	// then turns the NIC off).
	off := func() bool { return m.shut.Load() || m.removed.Load() }
	if !off() {
		m.rxEnabled.Store(true)
		m.txEnabled.Store(true)
		if !off() {
			return nil
		}
		m.rxEnabled.Store(false)
		m.txEnabled.Store(false)
	}
	if m.removed.Load() {
		return fmt.Errorf("adapter %s: %w", m.cfg.HardwareName, ndisshim.ErrRemoved)
	}
	return fmt.Errorf("adapter %s: restart after ShutdownEx: %w", m.cfg.HardwareName, ndisshim.ErrIllegalState)
}

// ShutdownEx is MiniportShutdownEx: put the NIC in its initial state (link
// down), freeing nothing and waiting for nothing.
func (m *Miniport) ShutdownEx(action ndisshim.ShutdownAction) {
	m.shut.Store(true) // first: see RestartEx
	m.rxEnabled.Store(false)
	m.txEnabled.Store(false)
	m.stopNIC()
	m.log.Warn("shut down", "action", action.String())
}

// DevicePnPEventNotify is MiniportDevicePnPEventNotify.
func (m *Miniport) DevicePnPEventNotify(ev ndisshim.PnPEvent) {
	if ev == ndisshim.PnPSurpriseRemoved {
		m.removed.Store(true)
		m.rxEnabled.Store(false)
		m.txEnabled.Store(false)
		m.log.Warn("hardware surprise-removed", "tap", m.cfg.HardwareName)
	}
}

// CancelSend is MiniportCancelSend: sends are never queued, so there is
// nothing to cancel.
func (m *Miniport) CancelSend(cancelID uintptr) {}

// interruptError is called on the interrupt goroutine when the hardware
// fails: a TAP deleted underneath is a surprise removal.
func (m *Miniport) interruptError(err error) {
	m.log.Error("hardware failed", "tap", m.cfg.HardwareName, "err", err)
	if errors.Is(err, tapdev.ErrDeviceGone) {
		m.removed.Store(true)
	}
}

// statsTick is the statistics timer's handler: it samples the counters for
// the per-second rates.
func (m *Miniport) statsTick() { m.ctr.sample() }

// Counters returns a snapshot of the adapter's counters.
func (m *Miniport) Counters() Snapshot {
	s := m.ctr.snapshot()
	if m.pool != nil {
		ps := m.pool.Stats()
		s.PoolInUse, s.PoolHighWater, s.PoolExhaustions = int64(ps.InUse), int64(ps.HighWater), int64(ps.Exhaustions)
	}
	return s
}

// MAC is the NIC's current address.
func (m *Miniport) MAC() net.HardwareAddr { return m.cur }

// Created reports whether InitializeEx created the hardware TAP (and so
// closing it deletes it) rather than attaching to an existing one.
func (m *Miniport) Created() bool { return m.created }
