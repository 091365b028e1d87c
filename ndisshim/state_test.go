package ndisshim_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// subject is an adapter brought to one state, with the binding p1 when one
// can exist in that state.
type subject struct {
	r      *rig
	b      *ndisshim.Binding
	protos map[*ndisshim.Binding]*fakeProto
}

// transition is one of the calls that move (or refuse to move) the adapter.
type transition struct {
	name   string
	phrase string         // what an illegal-state error must name
	after  ndisshim.State // state after a legal call (-1: unchanged)
	locker string         // the shim method that takes the transition lock for it ("": none)
	do     func(s *subject) error
}

const unchanged ndisshim.State = -1

var transitions = []transition{
	{"Restart", "restart adapter tm0", ndisshim.StateRunning, "(*Adapter).Restart", func(s *subject) error {
		return s.r.a.Restart(context.Background())
	}},
	{"Pause", "pause adapter tm0", ndisshim.StatePaused, "(*Adapter).Pause", func(s *subject) error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return s.r.a.Pause(ctx)
	}},
	{"Halt", "halt adapter tm0", ndisshim.StateHalted, "(*Adapter).Halt", func(s *subject) error {
		return s.r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled)
	}},
	{"OpenAdapter", "bind p2 to adapter tm0", unchanged, "(*Adapter).OpenAdapter", func(s *subject) error {
		p := newProto("p2")
		b, err := s.r.a.OpenAdapter("p2", p)
		if err == nil {
			s.protos[b] = p
		}
		return err
	}},
	{"Close", "close binding p1 on adapter tm0", unchanged, "(*Binding).Close", func(s *subject) error {
		return s.b.Close()
	}},
	{"Shutdown", "shut down adapter tm0", ndisshim.StateShutdown, "", func(s *subject) error {
		return s.r.a.Shutdown(ndisshim.ShutdownPowerOff)
	}},
}

// expectIllegal checks that err wraps ErrIllegalState and names the call,
// the adapter and the state.
func expectIllegal(t *testing.T, err error, phrase string, st ndisshim.State) {
	t.Helper()
	if !errors.Is(err, ndisshim.ErrIllegalState) {
		t.Fatalf("got %v, want an error wrapping ErrIllegalState", err)
	}
	if want := phrase + " in state " + st.String(); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
}

// newSubject makes a rig with binding p1 open, Paused.
func newSubject(t *testing.T, cfg *fakeConfig) *subject {
	r := newRig(t, cfg, ndisshim.AdapterOptions{WatchdogInterval: 5 * time.Millisecond, OnHeld: func(ndisshim.HeldReport) {}})
	b, p := r.open("p1")
	return &subject{r: r, b: b, protos: map[*ndisshim.Binding]*fakeProto{b: p}}
}

// teardown ends whatever state the subject is in as cleanly as that state
// allows, and checks what the verifier says at unload.
func (s *subject) teardown() {
	t := s.r.t
	t.Helper()
	for b, p := range s.protos {
		p.returnAll(b)
	}
	switch s.r.a.State() {
	case ndisshim.StateRunning:
		s.r.pause()
	case ndisshim.StatePausing, ndisshim.StateShutdown:
		// Neither can reach Halted: the unload must say so.
		_ = s.r.a.Shutdown(ndisshim.ShutdownBugCheck)
		f := verifierError(t, s.r.d.Deregister(), "unload of driver fakemp", ndisshim.FindAdapterNotHalted)
		if !strings.Contains(f.Object, "tm0") {
			t.Errorf("finding %q does not name adapter tm0", f)
		}
		return
	}
	if s.r.a.State() == ndisshim.StatePaused {
		for b := range s.protos {
			_ = b.Close() // some were closed by the test
		}
		if err := s.r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
			t.Errorf("Halt in teardown: %v", err)
		}
	}
	if err := s.r.d.Deregister(); err != nil {
		t.Errorf("Deregister: %v", err)
	}
	if p := s.r.m.problems(); len(p) > 0 {
		t.Errorf("fake miniport saw: %q", p)
	}
}

// TestTransitionsFromSettledStates drives each of Restart, Pause, Halt,
// OpenAdapter, Close and Shutdown from each state an adapter can rest in,
// each on a fresh adapter: a legal call succeeds and lands in the state the
// NDIS state machine says; an illegal one changes nothing and returns an
// error wrapping ErrIllegalState that names the call, the adapter and the
// state.
func TestTransitionsFromSettledStates(t *testing.T) {
	type setup struct {
		state ndisshim.State
		reach func(t *testing.T, s *subject)
		legal map[string]bool
	}
	setups := []setup{
		{ndisshim.StatePaused, func(t *testing.T, s *subject) {}, map[string]bool{
			"Restart": true, "Halt": true, "OpenAdapter": true, "Close": true, "Shutdown": true}},
		{ndisshim.StateRunning, func(t *testing.T, s *subject) { s.r.restart() }, map[string]bool{
			"Pause": true, "Shutdown": true}},
		{ndisshim.StatePausing, func(t *testing.T, s *subject) {
			// A pause that gave up on its deadline stays Pausing.
			s.r.restart()
			if _, err := s.r.m.indicateN(1, false); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
			defer cancel()
			if err := s.r.a.Pause(ctx); !errors.Is(err, ndisshim.ErrDrainTimeout) {
				t.Fatalf("Pause with a held NBL and a deadline: %v, want ErrDrainTimeout", err)
			}
		}, map[string]bool{"Shutdown": true}},
		{ndisshim.StateShutdown, func(t *testing.T, s *subject) {
			s.r.restart()
			if err := s.r.a.Shutdown(ndisshim.ShutdownBugCheck); err != nil {
				t.Fatal(err)
			}
		}, map[string]bool{"Close": true, "Shutdown": true}},
		{ndisshim.StateHalted, func(t *testing.T, s *subject) {
			if err := s.b.Close(); err != nil {
				t.Fatal(err)
			}
			if err := s.r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
				t.Fatal(err)
			}
		}, map[string]bool{}},
	}
	for _, su := range setups {
		for _, tr := range transitions {
			t.Run(su.state.String()+"/"+tr.name, func(t *testing.T) {
				s := newSubject(t, nil)
				su.reach(t, s)
				if got := s.r.a.State(); got != su.state {
					t.Fatalf("set-up reached %s, want %s", got, su.state)
				}
				defer s.teardown()
				if su.state == ndisshim.StatePaused && tr.name == "Halt" {
					// Halt needs every binding closed (see
					// TestHaltNeedsEveryBindingClosed).
					if err := s.b.Close(); err != nil {
						t.Fatal(err)
					}
				}
				err := tr.do(s)
				switch {
				case su.state == ndisshim.StateHalted && tr.name == "Close":
					// Halt needs every binding closed, so the only Close
					// left is a second one.
					if err == nil || !strings.Contains(err.Error(), "binding p1 to tm0 closed twice") {
						t.Fatalf("Close after Halt: %v, want a closed-twice error", err)
					}
				case su.legal[tr.name]:
					if err != nil {
						t.Fatalf("%s from %s: %v, want success", tr.name, su.state, err)
					}
					want := tr.after
					if want == unchanged {
						want = su.state
					}
					if got := s.r.a.State(); got != want {
						t.Errorf("%s from %s: state %s, want %s", tr.name, su.state, got, want)
					}
				default:
					expectIllegal(t, err, tr.phrase, su.state)
					if got := s.r.a.State(); got != su.state {
						t.Errorf("refused %s moved the adapter from %s to %s", tr.name, su.state, got)
					}
				}
				if tr.name == "Shutdown" && su.legal["Shutdown"] {
					// ShutdownEx runs once, however often Shutdown is called.
					if got := len(s.r.m.shutdowns); got != 1 {
						t.Errorf("ShutdownEx called %d times, want 1", got)
					}
				}
			})
		}
	}
}

// TestHaltNeedsEveryBindingClosed: Halt from Paused with a binding open is
// refused with ErrIllegalState naming the binding, and leaves the adapter
// Paused; after Close it succeeds.
func TestHaltNeedsEveryBindingClosed(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	b, _ := r.open("hoststack")
	err := r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled)
	if !errors.Is(err, ndisshim.ErrIllegalState) || !strings.Contains(err.Error(), `binding "hoststack" still open`) {
		t.Fatalf("Halt with a binding open: %v", err)
	}
	if r.a.State() != ndisshim.StatePaused || r.m.haltCalls.Load() != 0 {
		t.Fatalf("refused Halt: state %s, HaltEx called %d times", r.a.State(), r.m.haltCalls.Load())
	}
	r.finish(b)
	if r.m.haltCalls.Load() != 1 {
		t.Errorf("HaltEx called %d times, want 1", r.m.haltCalls.Load())
	}
}

// TestTransitionsFromInitializing: inside InitializeEx the adapter is
// Initializing, and Restart, Pause, Halt, OpenAdapter and Shutdown are all
// refused, naming the state. (No binding can exist yet, so there is no
// Close to try.)
func TestTransitionsFromInitializing(t *testing.T) {
	errs := map[string]error{}
	var seen ndisshim.State
	cfg := &fakeConfig{onInit: func(a *ndisshim.Adapter) {
		seen = a.State()
		s := &subject{r: &rig{a: a}, protos: map[*ndisshim.Binding]*fakeProto{}}
		for _, tr := range transitions {
			if tr.name != "Close" {
				errs[tr.name] = tr.do(s)
			}
		}
	}}
	r := newRig(t, cfg, ndisshim.AdapterOptions{})
	if seen != ndisshim.StateInitializing {
		t.Fatalf("state inside InitializeEx: %s", seen)
	}
	for _, tr := range transitions {
		if tr.name == "Close" {
			continue
		}
		t.Run(tr.name, func(t *testing.T) { expectIllegal(t, errs[tr.name], tr.phrase, ndisshim.StateInitializing) })
	}
	if len(r.m.shutdowns) != 0 || r.m.haltCalls.Load() != 0 {
		t.Errorf("refused calls reached the miniport: %d ShutdownEx, %d HaltEx", len(r.m.shutdowns), r.m.haltCalls.Load())
	}
	r.finish()
}

// TestTransitionsFromRestarting: Restarting lasts as long as RestartEx.
// Shutdown (the forced exit) is legal then, and the restart then fails
// naming the Shutdown state. The other calls are serialized behind the
// restart, not refused: they wait for it and are judged in the state it
// leaves (Running).
func TestTransitionsFromRestarting(t *testing.T) {
	for _, tr := range transitions {
		t.Run(tr.name, func(t *testing.T) {
			entered, released := make(chan struct{}), make(chan struct{})
			var once, releaseOnce sync.Once
			release := func() { releaseOnce.Do(func() { close(released) }) }
			cfg := &fakeConfig{onRestart: func(ctx context.Context) error {
				first := false
				once.Do(func() { first = true })
				if first {
					close(entered)
					<-released
				}
				return nil
			}}
			s := newSubject(t, cfg)
			defer s.teardown()
			restartErr, restartDone := make(chan error, 1), make(chan struct{})
			go func() {
				restartErr <- s.r.a.Restart(context.Background())
				close(restartDone)
			}()
			// A failed check must not leave RestartEx blocked under the teardown.
			defer func() { release(); <-restartDone }()
			<-entered
			if st := s.r.a.State(); st != ndisshim.StateRestarting {
				t.Fatalf("inside RestartEx: state %s", st)
			}
			if tr.name == "Shutdown" {
				if err := tr.do(s); err != nil {
					t.Fatalf("Shutdown while Restarting: %v", err)
				}
				if st := s.r.a.State(); st != ndisshim.StateShutdown {
					t.Errorf("after Shutdown: %s", st)
				}
				release()
				expectIllegal(t, <-restartErr, "restart adapter tm0", ndisshim.StateShutdown)
				if st := s.r.a.State(); st != ndisshim.StateShutdown {
					t.Errorf("restart cut short by Shutdown left state %s", st)
				}
				return
			}
			callErr, gid := make(chan error, 1), make(chan string, 1)
			go func() {
				gid <- goroutineID()
				callErr <- tr.do(s)
			}()
			waitParkedOnLock(t, tr, <-gid, callErr)
			select {
			case err := <-callErr:
				t.Fatalf("%s returned while the adapter was Restarting: %v", tr.name, err)
			default:
			}
			release()
			if err := <-restartErr; err != nil {
				t.Fatalf("Restart: %v", err)
			}
			err := <-callErr
			if tr.name == "Pause" {
				if err != nil || s.r.a.State() != ndisshim.StatePaused {
					t.Fatalf("Pause queued behind Restart: %v, state %s", err, s.r.a.State())
				}
				if c := s.r.m.calls; strings.Join(c, ",") != "RestartEx begin,RestartEx end,PauseEx" {
					t.Errorf("miniport calls %q: PauseEx overlapped RestartEx", c)
				}
				return
			}
			expectIllegal(t, err, tr.phrase, ndisshim.StateRunning)
		})
	}
}

// waitParkedOnLock returns once goroutine gid, which runs tr, is parked on
// a sync.Mutex with tr.locker as the first frame above package sync: the
// call has reached the adapter and waits behind the transition lock, which
// each of those methods takes first. The shim counts no waiters on that
// lock, so the goroutine dump is what shows it. It fails the test if the
// call returns first, or has not parked in 10s.
func waitParkedOnLock(t *testing.T, tr transition, gid string, callErr <-chan error) {
	t.Helper()
	if tr.locker == "" {
		t.Fatalf("%s takes no transition lock to wait on", tr.name)
	}
	frame := "github.com/tapminiport/tapminiport/ndisshim." + tr.locker + "("
	deadline := time.Now().Add(10 * time.Second)
	for {
		dump := allStacks()
		if parkedOnMutexIn(dump, gid, frame) {
			return
		}
		select {
		case err := <-callErr:
			t.Fatalf("%s returned while the adapter was Restarting: %v", tr.name, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s (goroutine %s) has not parked on the transition lock in %s after 10s; goroutines:\n%s", tr.name, gid, tr.locker, dump)
		}
		runtime.Gosched()
	}
}

// goroutineID is the number of the calling goroutine, as stack dumps show it.
func goroutineID() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	return strings.Fields(string(buf))[1] // "goroutine 42 [running]:"
}

// allStacks is runtime.Stack of every goroutine, whole.
func allStacks() string {
	buf := make([]byte, 64<<10)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

// parkedOnMutexIn reports whether, in dump, goroutine gid waits in
// sync.Mutex.Lock and its first caller outside sync and the runtime is
// frame.
func parkedOnMutexIn(dump, gid, frame string) bool {
	for _, g := range strings.Split(dump, "\n\n") {
		header, frames, _ := strings.Cut(g, "\n")
		if !strings.HasPrefix(header, "goroutine "+gid+" [") {
			continue
		}
		if !strings.Contains(header, "[sync.Mutex.Lock") {
			return false
		}
		for _, f := range strings.Split(frames, "\n") {
			if f == "" || f[0] == '\t' || strings.HasPrefix(f, "sync.") || strings.HasPrefix(f, "internal/sync.") || strings.HasPrefix(f, "runtime.") {
				continue // a file:line, or a frame of the lock itself
			}
			return strings.HasPrefix(f, frame)
		}
		return false
	}
	return false
}

// TestRestartFailureStaysPaused: when RestartEx fails the adapter stays
// Paused, Restart's error wraps the miniport's, and a later Restart works.
func TestRestartFailureStaysPaused(t *testing.T) {
	errHW := errors.New("link training failed")
	fail := true
	cfg := &fakeConfig{onRestart: func(ctx context.Context) error {
		if fail {
			return errHW
		}
		return nil
	}}
	r := newRig(t, cfg, ndisshim.AdapterOptions{})
	b, p := r.open("p1")
	err := r.a.Restart(context.Background())
	if !errors.Is(err, errHW) || !strings.Contains(err.Error(), "tm0") {
		t.Fatalf("Restart with a failing RestartEx: %v", err)
	}
	if r.a.State() != ndisshim.StatePaused {
		t.Fatalf("after a failed restart: %s", r.a.State())
	}
	if len(p.events) != 0 {
		t.Errorf("binding got %v after a failed restart", p.events)
	}
	if _, err := r.m.indicateN(1, false); !errors.Is(err, ndisshim.ErrNotReady) {
		t.Errorf("indicate after a failed restart: %v, want ErrNotReady", err)
	}
	fail = false
	r.restart()
	r.pause()
	if want := []ndisshim.NetPnPEvent{ndisshim.NetEventRestart, ndisshim.NetEventPause}; !equalEvents(p.events, want) {
		t.Errorf("binding events %v, want %v", p.events, want)
	}
	r.finish(b)
}

func equalEvents(a, b []ndisshim.NetPnPEvent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestPausedAfterRunCycles: Paused → Running → Paused several times, each
// binding told pause and restart, and the halt frees in the reverse of the
// initialize order.
func TestPausedAfterRunCycles(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	b, p := r.open("p1")
	for range 3 {
		r.restart()
		r.pause()
	}
	if len(p.events) != 6 {
		t.Errorf("binding got %d PnP events, want 6", len(p.events))
	}
	r.finish(b)
	want := "port,timer,interrupt,nbls,pool,shared,tagged,device"
	if got := strings.Join(r.m.haltLog, ","); got != want {
		t.Errorf("HaltEx freed %s, want %s", got, want)
	}
	if r.m.pool.InUse() != 0 {
		t.Errorf("pool has %d NBLs in use after halt", r.m.pool.InUse())
	}
}

// TestSurpriseRemoval: the miniport hears of it, bindings see the link go
// down, sends and OIDs are not accepted, Restart is refused, and the
// adapter can still be paused and halted.
func TestSurpriseRemoval(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	b, p := r.open("p1")
	r.restart()
	r.a.NotifySurpriseRemoval()
	r.a.NotifySurpriseRemoval() // once only
	if !r.a.Removed() {
		t.Fatal("Removed() is false")
	}
	if len(r.m.pnp) != 1 || r.m.pnp[0] != ndisshim.PnPSurpriseRemoved {
		t.Errorf("miniport PnP events %v, want one surprise removal", r.m.pnp)
	}
	if len(p.status) != 1 || p.status[0].Code != ndisshim.StatusLinkState || p.status[0].Data.(ndisshim.LinkState).Connected {
		t.Errorf("binding status indications %+v, want one link-down", p.status)
	}
	sp, send := sendPool(t, b, 2)
	send(ndisshim.Chain(sp[0]))
	if st := p.statuses[sp[0]]; len(st) != 1 || st[0] != ndisshim.StatusNotAccepted {
		t.Errorf("send after removal completed %v, want [NOT_ACCEPTED]", st)
	}
	if st := b.OIDRequest(ndisshim.NewQuery(ndisshim.OIDGenMaximumFrameSize, 4)); st != ndisshim.StatusNotAccepted {
		t.Errorf("OID after removal: %s", st)
	}
	r.pause()
	if err := r.a.Restart(context.Background()); !errors.Is(err, ndisshim.ErrRemoved) || !errors.Is(err, ndisshim.ErrIllegalState) || !strings.Contains(err.Error(), "restart adapter tm0") {
		t.Errorf("Restart after surprise removal: %v, want ErrRemoved and ErrIllegalState naming the call", err)
	}
	if len(r.m.calls) != 3 { // the first restart's begin and end, the pause
		t.Errorf("miniport calls %q: the refused restart reached RestartEx", r.m.calls)
	}
	freeSendPool(t, b, sp)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.a.Halt(context.Background(), ndisshim.HaltDeviceSurpriseRemoved); err != nil {
		t.Fatal(err)
	}
	if err := r.d.Deregister(); err != nil {
		t.Fatal(err)
	}
}

// TestDriverLifecycle: registration needs a name and InitializeEx; a
// driver unloads once; an unloaded driver adds no adapter; a failing
// InitializeEx that cleans up leaves no finding.
func TestDriverLifecycle(t *testing.T) {
	if _, err := ndisshim.RegisterMiniportDriver(ndisshim.Characteristics{Name: "x"}, nil); err == nil {
		t.Error("registered a driver without InitializeEx")
	}
	d, _ := newDriver(t)
	cfg := &fakeConfig{faults: faults{failInitClean: true}}
	t.Cleanup(func() { cfg.mp.forceRelease() })
	a, err := d.AddAdapter(ndisshim.InitParameters{Name: "tm9", Config: cfg}, ndisshim.AdapterOptions{})
	var ve *ndisshim.VerifierError
	if a != nil || !errors.Is(err, errInitFailed) || errors.As(err, &ve) || !strings.Contains(err.Error(), "tm9") {
		t.Fatalf("AddAdapter with a clean failing InitializeEx: %v, %v", a, err)
	}
	if err := d.Deregister(); err != nil {
		t.Fatalf("Deregister: %v", err)
	}
	if err := d.Deregister(); err == nil || !strings.Contains(err.Error(), "deregistered twice") {
		t.Errorf("second Deregister: %v", err)
	}
	if _, err := d.AddAdapter(ndisshim.InitParameters{Name: "tm1", Config: &fakeConfig{}}, ndisshim.AdapterOptions{}); err == nil || !strings.Contains(err.Error(), "unloaded") {
		t.Errorf("AddAdapter after unload: %v", err)
	}
}

// TestShutdownDuringHaltEx: once HaltEx has been called the miniport gets
// no other callback, ShutdownEx included (MiniportHaltEx's contract): a
// Shutdown while HaltEx runs is refused with ErrIllegalState, and one after
// Halt names the Halted state.
func TestShutdownDuringHaltEx(t *testing.T) {
	inHalt, release := make(chan struct{}), make(chan struct{})
	cfg := &fakeConfig{onHalt: func() {
		close(inHalt)
		<-release
	}}
	r := newRig(t, cfg, ndisshim.AdapterOptions{})
	done := make(chan error, 1)
	go func() { done <- r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled) }()
	<-inHalt
	err := r.a.Shutdown(ndisshim.ShutdownBugCheck)
	if !errors.Is(err, ndisshim.ErrIllegalState) || !strings.Contains(err.Error(), "shut down adapter tm0") {
		t.Errorf("Shutdown during HaltEx: %v, want an ErrIllegalState refusal", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Halt: %v", err)
	}
	expectIllegal(t, r.a.Shutdown(ndisshim.ShutdownBugCheck), "shut down adapter tm0", ndisshim.StateHalted)
	if len(r.m.shutdowns) != 0 {
		t.Errorf("ShutdownEx called %d times during or after HaltEx", len(r.m.shutdowns))
	}
	if err := r.d.Deregister(); err != nil {
		t.Fatal(err)
	}
	if p := r.m.problems(); len(p) > 0 {
		t.Errorf("fake miniport saw: %q", p)
	}
}

// TestShutdownRacingHaltAndRestart races the forced exit against Halt and
// against Restart, many times over on fresh adapters. Against Halt:
// ShutdownEx either completes before HaltEx starts or is refused; it never
// overlaps or follows HaltEx. Against Restart: the adapter always ends in
// Shutdown with its data path closed (an indication is refused, a send
// comes back PAUSED), and ShutdownEx ran once.
func TestShutdownRacingHaltAndRestart(t *testing.T) {
	const rounds = 2000
	d, _ := newDriver(t)
	add := func() (*ndisshim.Adapter, *fakeConfig) {
		cfg := &fakeConfig{poolSize: 2}
		t.Cleanup(func() { cfg.mp.forceRelease() })
		a, err := d.AddAdapter(ndisshim.InitParameters{Name: "tm0", Config: cfg}, ndisshim.AdapterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return a, cfg
	}
	for i := range rounds {
		a, cfg := add()
		done := make(chan error, 1)
		go func() { done <- a.Halt(context.Background(), ndisshim.HaltDeviceDisabled) }()
		serr := a.Shutdown(ndisshim.ShutdownBugCheck)
		if err := <-done; err != nil && !(serr == nil && errors.Is(err, ndisshim.ErrIllegalState) && a.State() == ndisshim.StateShutdown) {
			// (Shutdown may win outright: then Halt is refused in state Shutdown.)
			t.Fatalf("round %d: Halt: %v (Shutdown: %v)", i, err, serr)
		}
		if p := cfg.mp.problems(); len(p) > 0 {
			t.Fatalf("round %d: Shutdown racing Halt (returned %v): miniport saw %q", i, serr, p)
		}
		if called := len(cfg.mp.shutdowns) == 1; called != (serr == nil) {
			t.Fatalf("round %d: Shutdown returned %v but ShutdownEx called %d times", i, serr, len(cfg.mp.shutdowns))
		}
	}
	for i := range rounds {
		a, cfg := add()
		p := newProto("p")
		b, err := a.OpenAdapter("p", p)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			_ = a.Restart(context.Background()) // may lose to Shutdown
			close(done)
		}()
		if err := a.Shutdown(ndisshim.ShutdownBugCheck); err != nil {
			t.Fatalf("round %d: Shutdown: %v", i, err)
		}
		<-done
		if st := a.State(); st != ndisshim.StateShutdown {
			t.Fatalf("round %d: state %s after Shutdown raced Restart", i, st)
		}
		if _, err := cfg.mp.indicateN(1, false); !errors.Is(err, ndisshim.ErrNotReady) {
			t.Fatalf("round %d: indication accepted in Shutdown: %v", i, err)
		}
		nbls, send := sendPool(t, b, 1)
		send(nbls[0])
		if st := p.statuses[nbls[0]]; len(st) != 1 || st[0] != ndisshim.StatusPaused {
			t.Fatalf("round %d: send in Shutdown completed %v, want [PAUSED]", i, st)
		}
		freeSendPool(t, b, nbls)
		if err := b.Close(); err != nil {
			t.Fatalf("round %d: Close in Shutdown: %v", i, err)
		}
		if len(cfg.mp.shutdowns) != 1 {
			t.Fatalf("round %d: ShutdownEx called %d times", i, len(cfg.mp.shutdowns))
		}
	}
	// Every adapter of the second half is left in Shutdown, by design.
	err := d.Deregister()
	verifierError(t, err, "unload of driver fakemp", ndisshim.FindAdapterNotHalted)
	var ve *ndisshim.VerifierError
	if errors.As(err, &ve) {
		for _, f := range ve.Findings {
			if f.Kind != ndisshim.FindAdapterNotHalted || f.Detail != "state Shutdown" {
				t.Errorf("unexpected finding %q", f)
			}
		}
	}
}

// TestShutdownDuringFailingRestart: a Shutdown that arrives while RestartEx
// runs, before RestartEx fails, is not undone by Restart's way back to
// Paused: the adapter ends in Shutdown with its data path closed, and the
// next Restart is refused. (Restart once stored Paused here, and stored
// Restarting over a Shutdown that came between its check and its store:
// then the adapter ended Running after Shutdown.)
func TestShutdownDuringFailingRestart(t *testing.T) {
	var a *ndisshim.Adapter
	cfg := &fakeConfig{onRestart: func(ctx context.Context) error {
		if err := a.Shutdown(ndisshim.ShutdownBugCheck); err != nil {
			t.Errorf("Shutdown inside RestartEx: %v", err)
		}
		return errors.New("link training failed")
	}}
	r := newRig(t, cfg, ndisshim.AdapterOptions{})
	a = r.a
	b, _ := r.open("p1")
	if err := r.a.Restart(context.Background()); err == nil {
		t.Fatal("Restart with a failing RestartEx succeeded")
	}
	if st := r.a.State(); st != ndisshim.StateShutdown {
		t.Fatalf("state %s after Shutdown during a failing RestartEx, want Shutdown", st)
	}
	if _, err := r.m.indicateN(1, false); !errors.Is(err, ndisshim.ErrNotReady) {
		t.Errorf("indication accepted in Shutdown: %v", err)
	}
	expectIllegal(t, r.a.Restart(context.Background()), "restart adapter tm0", ndisshim.StateShutdown)
	if err := b.Close(); err != nil {
		t.Fatalf("Close in Shutdown: %v", err)
	}
	verifierError(t, r.d.Deregister(), "unload of driver fakemp", ndisshim.FindAdapterNotHalted)
}

// TestShutdownBeforeRestartOpens: a Shutdown that runs whole after
// RestartEx returned and before Restart opens the data path (here inside
// RestartEx, the instant before; the seam looks in right after the open)
// keeps it closed: no send reaches the miniport after its ShutdownEx and
// no indication is taken. (The data path was two flags that Restart set
// to open before it found the state Shutdown and closed them again: a send
// in that instant reached the miniport, seen here as one more send.)
func TestShutdownBeforeRestartOpens(t *testing.T) {
	var a *ndisshim.Adapter
	cfg := &fakeConfig{onRestart: func(ctx context.Context) error {
		if err := a.Shutdown(ndisshim.ShutdownBugCheck); err != nil {
			t.Errorf("Shutdown inside RestartEx: %v", err)
		}
		return nil
	}}
	r := newRig(t, cfg, ndisshim.AdapterOptions{})
	a = r.a
	b, p := r.open("p1")
	nbls, send := sendPool(t, b, 1)
	looked := false
	defer ndisshim.SetTestHookRestartOpened(func(*ndisshim.Adapter) {
		looked = true
		r.m.mu.Lock()
		before := r.m.sendsSeen
		r.m.mu.Unlock()
		send(nbls[0])
		r.m.mu.Lock()
		after := r.m.sendsSeen
		r.m.mu.Unlock()
		if after != before {
			t.Errorf("a send after ShutdownEx reached the miniport (%d sends seen, %d before)", after, before)
		}
		if st := p.statuses[nbls[0]]; len(st) != 1 || st[0] != ndisshim.StatusPaused {
			t.Errorf("send after ShutdownEx completed %v, want [PAUSED]", st)
		}
		if _, err := r.m.indicateN(1, false); !errors.Is(err, ndisshim.ErrNotReady) {
			t.Errorf("indication after ShutdownEx: %v, want ErrNotReady", err)
		}
	})()
	expectIllegal(t, r.a.Restart(context.Background()), "restart adapter tm0", ndisshim.StateShutdown)
	if !looked {
		t.Fatal("the seam after the open never ran")
	}
	if st := r.a.State(); st != ndisshim.StateShutdown {
		t.Fatalf("state %s, want Shutdown", st)
	}
	freeSendPool(t, b, nbls)
	if err := b.Close(); err != nil {
		t.Fatalf("Close in Shutdown: %v", err)
	}
	verifierError(t, r.d.Deregister(), "unload of driver fakemp", ndisshim.FindAdapterNotHalted)
}

// TestShutdownWhilePauseWaits: Shutdown is legal while Pause waits for
// NBLs; it does not cut the wait short (nothing held is given up), and
// when the NBLs are back Pause reports that it could not complete because
// the adapter is now Shutdown. A binding's failing NetPnPEvent and a
// failing PauseEx are logged, not fatal.
func TestShutdownWhilePauseWaits(t *testing.T) {
	reports := make(chan ndisshim.HeldReport, 16)
	r := newRig(t, &fakeConfig{pauseErr: errors.New("NIC did not stop")}, ndisshim.AdapterOptions{WatchdogInterval: time.Minute, OnHeld: func(h ndisshim.HeldReport) {
		select {
		case reports <- h:
		default:
		}
	}})
	b, p := r.open("p1")
	p.pnpErr = errors.New("protocol busy")
	r.restart()
	if _, err := r.m.indicateN(1, false); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.a.Pause(context.Background()) }()
	<-reports // Pause is waiting
	if err := r.a.Shutdown(ndisshim.ShutdownBugCheck); err != nil {
		t.Fatalf("Shutdown while Pausing: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Pause returned (%v) while an NBL was still held", err)
	default:
	}
	p.returnAll(b)
	expectIllegal(t, <-done, "complete pause adapter tm0", ndisshim.StateShutdown)
	if r.m.counts().returned != 1 || r.a.Stats().HeldNow != 0 {
		t.Errorf("the held NBL did not come back to the miniport")
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close in Shutdown: %v", err)
	}
	verifierError(t, r.d.Deregister(), "unload of driver fakemp", ndisshim.FindAdapterNotHalted)
}

// TestAccessors: names and the verifier are reachable from the handles.
func TestAccessors(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	b, _ := r.open("hoststack")
	if r.a.Name() != "tm0" || b.Name() != "hoststack" || b.AdapterName() != "tm0" || r.a.Removed() {
		t.Errorf("names: %q %q %q, removed %v", r.a.Name(), b.Name(), b.AdapterName(), r.a.Removed())
	}
	r.a.FreeTagged(nil) // one finding, seen through the driver's verifier
	if fs := r.d.Verifier().Findings(); len(fs) != 1 || fs[0].Kind != ndisshim.FindBadFree {
		t.Errorf("Verifier().Findings() = %v", fs)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
		t.Fatal(err)
	}
	verifierError(t, r.d.Deregister(), "unload of driver fakemp", ndisshim.FindBadFree)
}
