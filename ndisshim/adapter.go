package ndisshim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// State is the miniport adapter's state (the NDIS 6 state machine).
type State int32

// The adapter states.
const (
	StateHalted State = iota
	StateInitializing
	StatePaused
	StateRestarting
	StateRunning
	StatePausing
	StateShutdown
)

func (s State) String() string {
	return [...]string{"Halted", "Initializing", "Paused", "Restarting", "Running", "Pausing", "Shutdown"}[s]
}

var procStart = time.Now()

// nanotime is a cheap monotonic clock for the ledger's ages.
func nanotime() int64 { return int64(time.Since(procStart)) }

// Driver is a registered miniport driver (NdisMRegisterMiniportDriver).
type Driver struct {
	chars Characteristics
	v     Verifier
	log   *slog.Logger

	mu       sync.Mutex
	adapters map[*Adapter]struct{}
	unloaded bool
}

// RegisterMiniportDriver registers a miniport driver (NdisMRegisterMiniportDriver).
// log may be nil (logs are discarded).
func RegisterMiniportDriver(chars Characteristics, log *slog.Logger) (*Driver, error) {
	if chars.Name == "" || chars.InitializeEx == nil {
		return nil, errors.New("ndisshim: register miniport driver: Name and InitializeEx are required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{chars: chars, log: log.With("driver", chars.Name), adapters: map[*Adapter]struct{}{}}, nil
}

// Verifier returns the driver's verifier.
func (d *Driver) Verifier() *Verifier { return &d.v }

// OnFinding sets a function called for every verifier finding as it is made.
func (d *Driver) OnFinding(fn func(Finding)) {
	d.v.mu.Lock()
	d.v.onFind = fn
	d.v.mu.Unlock()
}

// Deregister unloads the driver (NdisMDeregisterMiniportDriver). Every
// adapter must be halted. It returns every finding the verifier made during
// the driver's life as a *VerifierError, or nil when there were none.
func (d *Driver) Deregister() error {
	d.mu.Lock()
	if d.unloaded {
		d.mu.Unlock()
		return fmt.Errorf("ndisshim: driver %s deregistered twice", d.chars.Name)
	}
	d.unloaded = true
	var live []*Adapter
	for a := range d.adapters {
		live = append(live, a)
	}
	d.mu.Unlock()
	for _, a := range live {
		d.v.Record(Finding{Kind: FindAdapterNotHalted, Object: "adapter " + a.name, Detail: "state " + a.State().String()})
	}
	if fs := d.v.Findings(); len(fs) > 0 {
		return &VerifierError{Scope: "unload of driver " + d.chars.Name, Findings: fs}
	}
	return nil
}

// AdapterOptions tune the shim's handling of one adapter.
type AdapterOptions struct {
	// WatchdogInterval is how often pause and halt report what is still
	// held while they wait (default 1s).
	WatchdogInterval time.Duration
	// OnHeld receives those reports; nil logs them at Warn level.
	OnHeld func(HeldReport)
}

// Adapter is the shim's side of one miniport adapter (the NDIS miniport
// adapter handle). The miniport calls its methods; the shim routes to the
// miniport's handlers and the bound protocols.
type Adapter struct {
	Resources
	d    *Driver
	name string
	log  *slog.Logger
	mp   Miniport
	opts AdapterOptions

	transition sync.Mutex // serializes Pause, Restart, Halt, OpenAdapter, Close
	state      atomic.Int32
	dp         dataPath    // whether indications and sends are accepted
	removed    atomic.Bool // surprise-removed
	shutdown   atomic.Bool // ShutdownEx called
	halted     atomic.Bool

	// shutMu orders ShutdownEx before HaltEx: Shutdown holds it shared
	// around ShutdownEx, Halt takes it to set halting before HaltEx, so no
	// ShutdownEx overlaps or follows HaltEx (NDIS: none after MiniportHaltEx).
	shutMu  sync.RWMutex
	halting bool

	rxOutstanding atomic.Int64 // NBLs indicated and not returned
	rxCalls       atomic.Int64 // indicate calls running in a protocol (IndicateReceive)
	txOutstanding atomic.Int64 // NBLs sent and not completed
	waiters       atomic.Int32
	drainCh       chan struct{}
	drained       atomic.Int64 // NBLs that came back while pause or halt waited
	peakHeld      atomic.Int64

	// reqMu guards the control-path calls running in the miniport (see
	// request.go): OIDRequest and CancelSendNetBufferLists register there,
	// Halt waits until there are none.
	reqMu   sync.Mutex
	reqs    map[*request]struct{}
	reqIdle chan struct{} // closed when reqs empties while Halt waits

	bindMu   sync.Mutex
	bindings atomic.Pointer[[]*Binding] // copy on write; the indicate path reads it without a lock
	nextBind int32
	allBinds []*Binding // by index, for reports
}

// AddAdapter creates an adapter and runs the driver's InitializeEx (the PnP
// manager starting a device). On success the adapter is Paused: call
// Restart to run it. On failure the adapter is Halted and the error carries
// the verifier's findings about whatever InitializeEx left behind.
func (d *Driver) AddAdapter(p InitParameters, opts AdapterOptions) (*Adapter, error) {
	d.mu.Lock()
	if d.unloaded {
		d.mu.Unlock()
		return nil, fmt.Errorf("ndisshim: add adapter %s: driver %s is unloaded", p.Name, d.chars.Name)
	}
	d.mu.Unlock()
	if opts.WatchdogInterval <= 0 {
		opts.WatchdogInterval = time.Second
	}
	a := &Adapter{d: d, name: p.Name, log: d.log.With("adapter", p.Name), opts: opts, drainCh: make(chan struct{}, 1)}
	a.Resources.init("adapter "+p.Name, &d.v)
	a.bindings.Store(&[]*Binding{})
	a.state.Store(int32(StateInitializing))
	start := time.Now()
	mp, err := d.chars.InitializeEx(a, p)
	if err != nil {
		a.state.Store(int32(StateHalted))
		a.halted.Store(true)
		if fs := a.Resources.leaks(); len(fs) > 0 {
			for _, f := range fs {
				d.v.Record(f)
			}
			return nil, errors.Join(fmt.Errorf("ndisshim: initialize adapter %s: %w", p.Name, err),
				&VerifierError{Scope: "failed initialize of adapter " + p.Name, Findings: fs})
		}
		return nil, fmt.Errorf("ndisshim: initialize adapter %s: %w", p.Name, err)
	}
	a.mp = mp
	a.state.Store(int32(StatePaused))
	d.mu.Lock()
	d.adapters[a] = struct{}{}
	d.mu.Unlock()
	a.log.Debug("initialized", "took", time.Since(start))
	return a, nil
}

// MiniportContext returns the adapter context InitializeEx returned
// (MiniportAdapterContext), for the code that loaded the driver.
func (a *Adapter) MiniportContext() Miniport { return a.mp }

// Name is the adapter's name.
func (a *Adapter) Name() string { return a.name }

// State is the adapter's current state.
func (a *Adapter) State() State { return State(a.state.Load()) }

// Removed reports whether the adapter was surprise-removed.
func (a *Adapter) Removed() bool { return a.removed.Load() }

// Stats are the shim's own counters for an adapter.
type Stats struct {
	HeldNow     int64 // receive NBLs the protocols hold now
	PeakHeld    int64 // the most they held at once
	SendsNow    int64 // sends the miniport holds now
	DrainedNBLs int64 // NBLs that came back while pause or halt waited for them
}

// Stats returns the shim's counters for the adapter.
func (a *Adapter) Stats() Stats {
	return Stats{HeldNow: a.rxOutstanding.Load(), PeakHeld: a.peakHeld.Load(), SendsNow: a.txOutstanding.Load(), DrainedNBLs: a.drained.Load()}
}

func (a *Adapter) illegal(op string, want ...State) error {
	return fmt.Errorf("ndisshim: %s adapter %s in state %s (needs %v): %w", op, a.name, a.State(), want, ErrIllegalState)
}

// Restart moves a Paused adapter to Running (MiniportRestart, then
// NetEventRestart to each binding). If RestartEx fails the adapter stays Paused.
func (a *Adapter) Restart(ctx context.Context) error {
	a.transition.Lock()
	defer a.transition.Unlock()
	if a.State() != StatePaused {
		return a.illegal("restart", StatePaused)
	}
	if a.removed.Load() {
		return fmt.Errorf("ndisshim: restart adapter %s: %w (%w)", a.name, ErrRemoved, ErrIllegalState)
	}
	// Every step from here is a compare-and-swap: Shutdown takes no
	// transition lock and may store Shutdown at any moment, and a plain
	// store would overwrite it (a Restart racing Shutdown then ended
	// Running).
	if !a.state.CompareAndSwap(int32(StatePaused), int32(StateRestarting)) {
		return a.illegal("restart", StatePaused) // shut down meanwhile
	}
	if err := a.mp.RestartEx(ctx); err != nil {
		a.state.CompareAndSwap(int32(StateRestarting), int32(StatePaused))
		return fmt.Errorf("ndisshim: restart adapter %s: %w", a.name, err)
	}
	// Open the data path before publishing Running. A Shutdown that
	// closed it for good before this refuses the open (the data path is
	// one word: see dataPath), so no send reaches the miniport after its
	// ShutdownEx; one after the open closes it after us, and its state
	// makes the CAS fail.
	opened := a.dp.open()
	if testHookRestartOpened != nil {
		testHookRestartOpened(a)
	}
	if !opened || !a.state.CompareAndSwap(int32(StateRestarting), int32(StateRunning)) {
		a.dp.close(dpRx | dpTx)
		return a.illegal("restart", StateRestarting) // shut down meanwhile
	}
	for _, b := range *a.bindings.Load() {
		if err := b.proto.NetPnPEvent(b, NetEventRestart); err != nil {
			a.log.Warn("binding refused restart", "binding", b.name, "err", err)
		}
	}
	return nil
}

// Pause moves a Running adapter to Paused: sends are refused with
// StatusPaused from now on, each binding gets NetEventPause, the miniport's
// PauseEx stops indications and completes pending sends, and then Pause
// waits until every indicated NBL has been returned and every send
// completed, reporting what is held every WatchdogInterval. If ctx ends
// first, Pause returns an ErrDrainTimeout error naming what is still held,
// and the adapter stays Pausing: nothing held is freed.
func (a *Adapter) Pause(ctx context.Context) error {
	a.transition.Lock()
	defer a.transition.Unlock()
	if !a.state.CompareAndSwap(int32(StateRunning), int32(StatePausing)) { // see Restart
		return a.illegal("pause", StateRunning)
	}
	a.dp.close(dpTx)
	for _, b := range *a.bindings.Load() {
		if err := b.proto.NetPnPEvent(b, NetEventPause); err != nil {
			a.log.Warn("binding failed pause", "binding", b.name, "err", err)
		}
	}
	if err := a.mp.PauseEx(ctx); err != nil {
		a.log.Warn("miniport PauseEx failed", "err", err)
	}
	a.dp.close(dpRx)
	if err := a.waitDrain(ctx, "pause"); err != nil {
		return err
	}
	a.state.CompareAndSwap(int32(StatePausing), int32(StatePaused))
	if a.State() != StatePaused {
		return a.illegal("complete pause", StatePausing)
	}
	return nil
}

// Halt undoes the adapter (MiniportHaltEx): only from Paused, with every
// binding closed. Before HaltEx it waits for every OID request and send
// cancel still running in the miniport (NDIS never calls MiniportHaltEx
// with one outstanding); if ctx ends first it returns an error wrapping
// ErrRequestsOutstanding that names them, and the adapter stays Paused.
// After HaltEx returns the shim calls no miniport handler again, and the
// verifier checks that the miniport freed everything it allocated through
// the adapter; its findings come back as a *VerifierError.
func (a *Adapter) Halt(ctx context.Context, action HaltAction) error {
	a.transition.Lock()
	defer a.transition.Unlock()
	if a.State() != StatePaused {
		return a.illegal("halt", StatePaused)
	}
	if bs := *a.bindings.Load(); len(bs) > 0 {
		return fmt.Errorf("ndisshim: halt adapter %s: binding %q still open (close it first): %w", a.name, bs[0].name, ErrIllegalState)
	}
	// Nothing is outstanding in Paused; the wait is the contract's, and it
	// is cheap when there is nothing to wait for.
	if err := a.waitDrain(ctx, "halt"); err != nil {
		return err
	}
	// Every binding is closed, so no request starts from here on (see
	// request.go); wait for those already in the miniport.
	if err := a.waitRequests(ctx, "halt"); err != nil {
		return err
	}
	a.shutMu.Lock()               // waits for a ShutdownEx in flight; none starts after this
	if a.State() != StatePaused { // a Shutdown won the race: ShutdownEx ran, HaltEx must not
		a.shutMu.Unlock()
		return a.illegal("halt", StatePaused)
	}
	a.halting = true
	a.shutMu.Unlock()
	a.mp.HaltEx(action)
	a.halted.Store(true)
	a.state.Store(int32(StateHalted))
	a.d.mu.Lock()
	delete(a.d.adapters, a)
	a.d.mu.Unlock()
	fs := a.Resources.leaks()
	for _, f := range fs {
		a.d.v.Record(f)
	}
	if len(fs) > 0 {
		return &VerifierError{Scope: "halt of adapter " + a.name, Findings: fs}
	}
	return nil
}

// Shutdown calls the miniport's ShutdownEx once (the forced-exit path): the
// hardware goes back to its initial state, nothing is freed or waited for,
// and the adapter is in Shutdown. It does not wait for a transition in
// progress. Once Halt has called HaltEx it is refused: the miniport gets no
// ShutdownEx during or after its HaltEx.
func (a *Adapter) Shutdown(action ShutdownAction) error {
	st := a.State()
	if st == StateHalted || st == StateInitializing {
		return a.illegal("shut down", StatePaused, StateRestarting, StateRunning, StatePausing)
	}
	a.shutMu.RLock()
	defer a.shutMu.RUnlock()
	if a.halting {
		return fmt.Errorf("ndisshim: shut down adapter %s: HaltEx already called: %w", a.name, ErrIllegalState)
	}
	if !a.shutdown.CompareAndSwap(false, true) {
		return nil
	}
	// State first, then close the data path for good: see Restart.
	a.state.Store(int32(StateShutdown))
	a.dp.closeForGood(dpShut)
	a.mp.ShutdownEx(action)
	return nil
}

// NotifySurpriseRemoval tells the miniport its hardware is gone
// (MiniportDevicePnPEventNotify with NdisDevicePnPEventSurpriseRemoved) and
// the bindings that the media is disconnected. From now on sends and OID
// requests complete with StatusNotAccepted; the caller then pauses and
// halts the adapter with HaltDeviceSurpriseRemoved.
func (a *Adapter) NotifySurpriseRemoval() {
	a.shutMu.RLock() // no PnP event once HaltEx has started
	defer a.shutMu.RUnlock()
	if a.halting || a.State() == StateInitializing || !a.removed.CompareAndSwap(false, true) {
		return
	}
	a.dp.closeForGood(dpRemoved)
	a.mp.DevicePnPEventNotify(PnPSurpriseRemoved)
	a.IndicateStatus(StatusIndication{Code: StatusLinkState, Data: LinkState{Connected: false}})
}

// IndicateStatus passes a status indication to every binding (NdisMIndicateStatusEx).
func (a *Adapter) IndicateStatus(s StatusIndication) {
	if a.halted.Load() {
		a.v.Record(Finding{Kind: FindCallAfterHalt, Object: "adapter " + a.name, Where: callerSite(1), Detail: "IndicateStatus"})
		return
	}
	for _, b := range *a.bindings.Load() {
		b.proto.StatusEx(b, s)
	}
}

// allBack reports whether no receive NBL is held, no indicate call runs
// in a protocol and no send is outstanding. rxOutstanding is read before
// rxCalls: see IndicateReceive.
func (a *Adapter) allBack() bool {
	return a.rxOutstanding.Load() == 0 && a.rxCalls.Load() == 0 && a.txOutstanding.Load() == 0
}

// waitDrain waits until no receive indication and no send is outstanding.
func (a *Adapter) waitDrain(ctx context.Context, phase string) error {
	if a.allBack() {
		return nil
	}
	a.waiters.Add(1)
	defer a.waiters.Add(-1)
	start := time.Now()
	report := time.NewTicker(a.opts.WatchdogInterval)
	defer report.Stop()
	poll := time.NewTicker(20 * time.Millisecond) // belt and braces against a lost wake-up
	defer poll.Stop()
	first := true
	for {
		if a.allBack() {
			a.log.Debug(phase+": drained", "took", time.Since(start))
			return nil
		}
		if first {
			first = false
			a.emitHeld(a.HeldReport(phase, start))
		}
		select {
		case <-a.drainCh:
		case <-poll.C:
		case <-report.C:
			a.emitHeld(a.HeldReport(phase, start))
		case <-ctx.Done():
			r := a.HeldReport(phase, start)
			return fmt.Errorf("ndisshim: %s of adapter %s after %s: %w: %s", phase, a.name, time.Since(start).Round(time.Millisecond), ErrDrainTimeout, r)
		}
	}
}

func (a *Adapter) emitHeld(r HeldReport) {
	if r.Total() == 0 {
		return
	}
	if a.opts.OnHeld != nil {
		a.opts.OnHeld(r)
		return
	}
	a.log.Warn(r.Phase+": waiting", "held", r.String())
}

// wake tells a drain waiter that a counter may have reached zero.
func (a *Adapter) wake() {
	if a.waiters.Load() > 0 {
		select {
		case a.drainCh <- struct{}{}:
		default:
		}
	}
}

// dataPath says whether the adapter takes indications and sends, in one
// word, so that opening it (Restart) cannot undo a close for good
// (Shutdown, a surprise removal) that raced with it. As two flags, a
// Shutdown that ran whole between a Restart's RestartEx and its opening
// of the flags was undone until the Restart saw the state and closed them
// again: for that instant a send could reach the miniport after its
// ShutdownEx. The checks are one atomic load, as before.
type dataPath struct{ v atomic.Uint32 }

const (
	dpRx      uint32 = 1 << iota // indications accepted (Running, and Pausing until PauseEx returns)
	dpTx                         // sends accepted (Running)
	dpShut                       // ShutdownEx called: neither, for good
	dpRemoved                    // surprise-removed: no sends, for good
)

// testHookRestartOpened, if set, runs in Restart between opening the data
// path and publishing Running (a test's seam for the race above).
var testHookRestartOpened func(*Adapter)

func (d *dataPath) rxOpen() bool { return d.v.Load()&(dpRx|dpShut) == dpRx }

func (d *dataPath) txOpen() bool { return d.v.Load()&(dpTx|dpShut|dpRemoved) == dpTx }

// open opens both directions unless a Shutdown closed the path for good
// (a removal still keeps sends closed); it reports whether it did.
func (d *dataPath) open() bool {
	for {
		v := d.v.Load()
		if v&dpShut != 0 {
			return false
		}
		if d.v.CompareAndSwap(v, v|dpRx|dpTx) {
			return true
		}
	}
}

// close closes the directions named (dpRx, dpTx) until the next open.
func (d *dataPath) close(dirs uint32) { d.v.And(^dirs) }

// closeForGood records why (dpShut, dpRemoved) the path stays closed.
func (d *dataPath) closeForGood(why uint32) { d.v.Or(why) }
