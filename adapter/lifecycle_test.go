package adapter

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
	"github.com/tapminiport/tapminiport/tapdev"
)

// Pause waits for every NBL the protocol holds: the adapter stays Pausing
// until the last one comes back, then it is Paused. Halt after that is
// verifier-clean, puts the link down once and closes the hardware.
func TestPauseWaitsForHeldThenHaltClean(t *testing.T) {
	fds := shimtest.OpenFDs(t)
	reports := make(chan ndisshim.HeldReport, 64)
	r := newRig(t, rigOptions{hold: true, onHeld: func(h ndisshim.HeldReport) {
		select {
		case reports <- h:
		default:
		}
	}})
	r.restart()
	r.setFilter(ndisshim.PacketTypeDirected)
	r.wire(frame(ourMAC, 100, 1), frame(ourMAC, 100, 2), frame(ourMAC, 100, 3))
	shimtest.WaitFor(t, "3 frames held", func() bool { return r.p.heldCount() == 3 })

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- r.a.Pause(ctx)
	}()
	// The first report comes when the shim starts waiting.
	h := shimtest.Recv(t, "the first held report", reports)
	if h.Phase != "pause" || h.Total() != 3 || len(h.Held) != 1 || h.Held[0].Holder != "fakeproto" {
		t.Errorf("held report %+v, want pause waiting for 3 held by fakeproto", h)
	}
	if !r.p.sawEvent(ndisshim.NetEventPause) {
		t.Error("the binding got no NetEventPause")
	}
	if st := r.a.State(); st != ndisshim.StatePausing {
		t.Fatalf("state %v while NBLs are held, want Pausing", st)
	}

	// While pausing: sends are refused, frames from the wire are not indicated.
	r.p.send(t, r.b, frame(peerMAC, 100, 9))
	if cs := r.p.completions(); len(cs) != 1 || cs[0].statuses[0] != ndisshim.StatusPaused {
		t.Errorf("send while pausing completed %+v, want one PAUSED", cs)
	}
	r.wire(frame(ourMAC, 100, 4))
	shimtest.WaitFor(t, "not-ready drop while pausing", func() bool { return r.counters().RxDropNotReady == 1 })
	if n := r.p.frameCount(); n != 3 {
		t.Errorf("%d frames indicated, want 3 (none while pausing)", n)
	}

	for i := 0; i < 2; i++ {
		r.p.returnHeld(r.b, 1)
		select {
		case err := <-done:
			t.Fatalf("pause returned (%v) with %d NBLs still held", err, r.p.heldCount())
		default:
		}
		if st := r.a.State(); st != ndisshim.StatePausing {
			t.Fatalf("state %v with %d NBLs held, want Pausing", st, r.p.heldCount())
		}
	}
	r.p.returnHeld(r.b, 1)
	if err := shimtest.Recv(t, "pause to complete", done); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if st := r.a.State(); st != ndisshim.StatePaused {
		t.Fatalf("state %v after the last return, want Paused", st)
	}
	if s := r.a.Stats(); s.DrainedNBLs != 3 || s.HeldNow != 0 || s.PeakHeld != 3 {
		t.Errorf("shim stats %+v, want 3 drained, 0 held, peak 3", s)
	}

	r.halt()
	if n := r.unconfigures.Load(); n != 1 {
		t.Errorf("Unconfigure called %d times at halt, want 1", n)
	}
	// The hardware is closed: the wire reads EOF, the miniport's end is closed.
	if _, err := r.peer.ReadBatch([][]byte{make([]byte, 2048)}, []int{0}); !isGone(err) {
		t.Errorf("peer read after halt: %v, want the device gone (EOF)", err)
	}
	if _, err := r.hw.ReadBatch([][]byte{make([]byte, 2048)}, []int{0}); !errors.Is(err, os.ErrClosed) {
		t.Errorf("hardware end after halt: %v, want closed", err)
	}
	if st := r.b.OIDRequest(ndisshim.NewQuery(ndisshim.OIDGenLinkSpeed, 4)); st == ndisshim.StatusSuccess {
		t.Error("an OID request reached the miniport after halt")
	}
	r.peer.Close()
	if n := shimtest.OpenFDs(t); n != fds {
		t.Errorf("%d fds open after halt and closing the wire, %d before the adapter", n, fds)
	}
}

// Halt with the receive path busy just before it: the reader is joined and
// nothing is left (goleak in TestMain checks the goroutines).
func TestHaltAfterTrafficClean(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.restart()
	r.setFilter(ndisshim.PacketTypeDirected)
	for i := 0; i < 20; i++ {
		r.wire(frame(ourMAC, 64+i, i))
	}
	r.p.send(t, r.b, frame(peerMAC, 100, 1))
	shimtest.WaitFor(t, "20 frames indicated", func() bool { return r.p.frameCount() == 20 })
	shimtest.WaitFor(t, "the statistics timer to fire", func() bool { return r.mp.stats.Fired() >= 2 })
	r.pause()
	r.halt()
	if r.configures.Load() != 1 || r.unconfigures.Load() != 1 {
		t.Errorf("Configure %d, Unconfigure %d times; want 1 each", r.configures.Load(), r.unconfigures.Load())
	}
}

// InitializeEx failing at each step returns an error naming the step and
// leaves nothing: no verifier finding, the hardware closed if it was
// opened, the link configured and unconfigured in pairs.
func TestInitializeFailsAtEachStep(t *testing.T) {
	drv, err := ndisshim.RegisterMiniportDriver(Characteristics(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, step := range InitSteps {
		t.Run(step, func(t *testing.T) {
			hw, peer, err := tapdev.Socketpair()
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			defer hw.Close()
			r := &rig{t: t}
			cfg := baseConfig(r, hw)
			cfg.FailAt = step
			a, err := drv.AddAdapter(ndisshim.InitParameters{Name: "tm-fail-" + step, Config: cfg}, ndisshim.AdapterOptions{})
			if err == nil {
				t.Fatalf("AddAdapter with FailAt %q succeeded (adapter %v)", step, a.State())
			}
			if !strings.Contains(err.Error(), step) {
				t.Errorf("error %q does not name the step %q", err, step)
			}
			var ve *ndisshim.VerifierError
			if errors.As(err, &ve) {
				t.Errorf("failed initialize left resources behind: %v", ve)
			}
			opened := i > slices.Index(InitSteps, "open")
			if got := r.opens.Load() == 1; got != opened {
				t.Errorf("hardware opened: %v, want %v", got, opened)
			}
			configured := i > slices.Index(InitSteps, "configure")
			if got := r.configures.Load() == 1; got != configured {
				t.Errorf("link configured: %v, want %v", got, configured)
			}
			if u := r.unconfigures.Load(); u != r.configures.Load() {
				t.Errorf("Unconfigure called %d times after Configure %d times", u, r.configures.Load())
			}
			if opened {
				if _, err := hw.ReadBatch([][]byte{make([]byte, 64)}, []int{0}); !errors.Is(err, os.ErrClosed) {
					t.Errorf("hardware end after failed initialize: %v, want closed", err)
				}
				if _, err := peer.ReadBatch([][]byte{make([]byte, 64)}, []int{0}); !isGone(err) {
					t.Errorf("peer read after failed initialize: %v, want EOF", err)
				}
			}
		})
	}
	if err := drv.Deregister(); err != nil {
		t.Errorf("deregister after the failed initializations: %v", err)
	}
}

// A config that is not an adapter.Config, or an invalid one, fails
// InitializeEx before anything is allocated.
func TestInitializeRejectsBadConfig(t *testing.T) {
	drv, err := ndisshim.RegisterMiniportDriver(Characteristics(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := drv.AddAdapter(ndisshim.InitParameters{Name: "x", Config: "tmhw0"}, ndisshim.AdapterOptions{}); err == nil || !strings.Contains(err.Error(), "adapter.Config") {
		t.Errorf("string config: %v", err)
	}
	r := &rig{t: t}
	cfg := baseConfig(r, nil)
	cfg.MTU = 20
	if _, err := drv.AddAdapter(ndisshim.InitParameters{Name: "x", Config: cfg}, ndisshim.AdapterOptions{}); err == nil || !strings.Contains(err.Error(), "MTU") {
		t.Errorf("MTU 20: %v", err)
	}
	if r.opens.Load() != 0 {
		t.Error("hardware opened for an invalid config")
	}
	if err := drv.Deregister(); err != nil {
		t.Errorf("deregister: %v", err)
	}
}

// ShutdownEx from Running puts the link down exactly once, frees nothing,
// and the adapter reports the media disconnected; sends are refused.
func TestShutdownFromRunning(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.restart()
	r.setFilter(ndisshim.PacketTypeDirected)

	if err := r.a.Shutdown(ndisshim.ShutdownBugCheck); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if n := r.unconfigures.Load(); n != 1 {
		t.Errorf("Unconfigure called %d times by ShutdownEx, want 1", n)
	}
	if st := r.a.State(); st != ndisshim.StateShutdown {
		t.Errorf("state %v, want Shutdown", st)
	}
	if err := r.a.Shutdown(ndisshim.ShutdownBugCheck); err != nil {
		t.Errorf("second shutdown: %v", err)
	}
	if q, st := r.query(ndisshim.OIDGenMediaConnectStatus, 4); st != ndisshim.StatusSuccess || q.AnswerUint32() != ndisshim.MediaStateDisconnected {
		t.Errorf("media connect status after shutdown %d (%v), want disconnected", q.AnswerUint32(), st)
	}
	r.p.send(t, r.b, frame(peerMAC, 100, 1))
	if cs := r.p.completions(); len(cs) != 1 || cs[0].statuses[0] == ndisshim.StatusSuccess {
		t.Errorf("send after shutdown completed %+v, want refused", cs)
	}
	// Nothing was freed: the hardware is still open.
	if !r.peerEmpty() {
		t.Error("a send reached the wire after shutdown")
	}

	// A shut-down adapter cannot be halted through the shim; tear the
	// miniport down directly so the test leaves no goroutine behind.
	r.closeBinding()
	r.done = true
	r.mp.HaltEx(ndisshim.HaltDeviceFailed)
	if n := r.unconfigures.Load(); n != 1 {
		t.Errorf("Unconfigure called %d times after shutdown and halt, want 1", n)
	}
	if _, err := r.peer.ReadBatch([][]byte{make([]byte, 64)}, []int{0}); !isGone(err) {
		t.Errorf("peer read after teardown: %v, want EOF", err)
	}
	err := r.drv.Deregister()
	var ve *ndisshim.VerifierError
	if !errors.As(err, &ve) {
		t.Fatalf("deregister with a shut-down adapter: %v, want a verifier error", err)
	}
	for _, f := range ve.Findings {
		if f.Kind != ndisshim.FindAdapterNotHalted {
			t.Errorf("unexpected finding %v", f)
		}
	}
}

// Config.Validate names the field that is wrong.
func TestConfigValidate(t *testing.T) {
	good := Config{HardwareName: "tmhw0", MTU: 1500, RxBuffers: 256, Batch: 32, LowWater: 32}
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	cases := []struct {
		field string
		mod   func(*Config)
	}{
		{"hardware name", func(c *Config) { c.HardwareName = "" }},
		{"hardware name", func(c *Config) { c.HardwareName = "a-very-long-tap-name" }},
		{"MTU", func(c *Config) { c.MTU = 67 }},
		{"MTU", func(c *Config) { c.MTU = 9001 }},
		{"MAC", func(c *Config) { c.MAC = []byte{1, 2, 3, 4, 5, 6} }}, // multicast
		{"MAC", func(c *Config) { c.MAC = []byte{2, 2, 3, 4, 5} }},
		{"rx buffers", func(c *Config) { c.RxBuffers = 1 }},
		{"rx buffers", func(c *Config) { c.RxBuffers = 1<<20 + 1 }},
		{"batch", func(c *Config) { c.Batch = 0 }},
		{"batch", func(c *Config) { c.Batch = 1025 }},
		{"low water", func(c *Config) { c.LowWater = -1 }},
		{"low water", func(c *Config) { c.LowWater = 256 }},
		{"fail-at", func(c *Config) { c.FailAt = "nowhere" }},
	}
	for _, c := range cases {
		cfg := good
		c.mod(&cfg)
		err := cfg.Validate()
		if err == nil {
			t.Errorf("%s: invalid config accepted", c.field)
			continue
		}
		if !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: error %q does not name the field", c.field, err)
		}
		if !errors.Is(err, errConfig) {
			t.Errorf("%s: error %q does not wrap errConfig", c.field, err)
		}
	}
	for _, step := range InitSteps {
		cfg := good
		cfg.FailAt = step
		if err := cfg.Validate(); err != nil {
			t.Errorf("FailAt %q: %v", step, err)
		}
	}
}

// ShutdownEx may come while the shim runs RestartEx (the shim takes no
// lock for it): a RestartEx after ShutdownEx fails and leaves the NIC
// off. (It turned receive and send back on after ShutdownEx had turned
// them off.)
func TestRestartExAfterShutdownExKeepsNICOff(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.mp.ShutdownEx(ndisshim.ShutdownPowerOff)
	err := r.mp.RestartEx(context.Background())
	if !errors.Is(err, ndisshim.ErrIllegalState) {
		t.Errorf("RestartEx after ShutdownEx: %v, want an ErrIllegalState error", err)
	}
	if r.mp.rxEnabled.Load() || r.mp.txEnabled.Load() {
		t.Errorf("after RestartEx following ShutdownEx: receive on %v, send on %v; want both off", r.mp.rxEnabled.Load(), r.mp.txEnabled.Load())
	}
	r.halt()
}
