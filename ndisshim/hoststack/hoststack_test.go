package hoststack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

// Bind learns the NIC's address and frame size by OID (and configures the
// NIC TAP with them) and sets the packet filter, as tcpip.sys does.
func TestBindLearnsAndSetsFilter(t *testing.T) {
	var gotMAC net.HardwareAddr
	var gotMTU atomic.Int32
	r := newRig(t, Config{Configure: func(c Config, mac net.HardwareAddr, mtu int) error {
		gotMAC = mac
		gotMTU.Store(int32(mtu))
		return nil
	}})
	if !bytes.Equal(gotMAC, nicMAC) || gotMTU.Load() != testMTU {
		t.Errorf("Configure got MAC %s MTU %d, want %s %d", gotMAC, gotMTU.Load(), nicMAC, testMTU)
	}
	r.nic.mu.Lock()
	oids, filter, sets := r.nic.oids, r.nic.filter, r.nic.filterSets
	r.nic.mu.Unlock()
	for _, o := range []ndisshim.OID{ndisshim.OID8023CurrentAddress, ndisshim.OIDGenMaximumFrameSize, ndisshim.OIDGenCurrentPacketFilter} {
		if !slices.Contains(oids, o) {
			t.Errorf("Bind did not request %v (requests: %v)", o, oids)
		}
	}
	if sets != 1 {
		t.Errorf("packet filter set %d times, want 1", sets)
	}
	if want := ndisshim.PacketTypeDirected | ndisshim.PacketTypeBroadcast; filter&want != want {
		t.Errorf("packet filter %#x lacks directed and broadcast", filter)
	}
	if r.s.Binding().Name() != ProtocolName || r.s.Binding().AdapterName() != "fake0" {
		t.Errorf("binding %q on %q", r.s.Binding().Name(), r.s.Binding().AdapterName())
	}

	// The learned MTU sizes the send buffers: the largest frame goes down whole.
	r.restart()
	big := shimtest.Frame(wireMAC, nicMAC, testMTU+18, 1)
	r.hostSend(big)
	shimtest.WaitFor(t, "the largest frame sent down", func() bool { return len(r.nic.sendCalls()) == 1 })
	shimtest.EqualFrames(t, "largest frame", r.nic.sendCalls()[0], [][]byte{big})
	r.close()
}

// A Bind that cannot learn the address fails naming the OID and leaves
// nothing: the adapter halts and unloads verifier-clean.
func TestBindFailsCleanly(t *testing.T) {
	nic := &fakeNIC{failOID: ndisshim.OID8023CurrentAddress}
	drv, a := newAdapter(t, nic)
	opened := false
	_, err := Bind(a, Config{NICName: "tm-test", Open: func(string, int) (Device, bool, error) {
		opened = true
		return nil, false, errors.New("must not be opened")
	}})
	if err == nil || !strings.Contains(err.Error(), ndisshim.OID8023CurrentAddress.String()) {
		t.Fatalf("Bind: %v, want an error naming %v", err, ndisshim.OID8023CurrentAddress)
	}
	if opened {
		t.Error("NIC TAP opened although Bind failed before")
	}
	if err := a.Halt(context.Background(), ndisshim.HaltDeviceDisabled); err != nil {
		t.Errorf("halt after failed bind: %v", err)
	}
	if err := drv.Deregister(); err != nil {
		t.Errorf("deregister after failed bind: %v", err)
	}
}

// An indication is written to the NIC TAP, bytes intact, and the chain is
// returned to the miniport whole, in one ReturnNetBufferLists.
func TestIndicationWrittenAndReturnedInChain(t *testing.T) {
	r := newRig(t, Config{})
	r.restart()

	var want [][]byte
	var bytes int64
	for i := 0; i < 5; i++ {
		f := shimtest.Frame(nicMAC, wireMAC, 60+100*i, i)
		want = append(want, f)
		bytes += int64(len(f))
	}
	nbls := r.nic.indicate(t, 0, want[:3]...)
	nbls = append(nbls, r.nic.indicate(t, 0, want[3:]...)...)
	shimtest.EqualFrames(t, "on the NIC TAP", r.hostReadN(5), want)
	shimtest.WaitFor(t, "5 NBLs returned", func() bool { return r.nic.returnedCount() == 5 })

	rc := r.nic.returnCalls()
	if len(rc) != 2 || len(rc[0].idx) != 3 || len(rc[1].idx) != 2 {
		t.Fatalf("return calls %+v, want two chains of 3 and 2", rc)
	}
	for i, nbl := range nbls {
		call, pos := 0, i
		if i >= 3 {
			call, pos = 1, i-3
		}
		if rc[call].idx[pos] != nbl.Index() {
			t.Errorf("return call %d position %d is NBL %d, want %d", call, pos, rc[call].idx[pos], nbl.Index())
		}
	}
	c := r.s.Counters()
	if c.ToHostFrames != 5 || c.ToHostBytes != bytes {
		t.Errorf("ToHostFrames = %d, ToHostBytes = %d; want 5, %d", c.ToHostFrames, c.ToHostBytes, bytes)
	}
	if h := r.a.Stats().HeldNow; h != 0 {
		t.Errorf("shim says %d NBLs held", h)
	}
	r.close()
}

// TestPollOnReceive: with the NIC TAP's interrupt silent, a host reply
// waiting on the NIC TAP goes down only when a small indication (at most
// 2 frames of at most 256 bytes) runs the reader on the indicating
// goroutine; a large indication or a chain of 3 does not; off, none does.
func TestPollOnReceive(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("PollOnReceive=%v", on), func(t *testing.T) {
			r := newRigSilent(t, Config{PollOnReceive: on})
			r.restart()
			reply := shimtest.Frame(wireMAC, nicMAC, 98, 100)
			r.hostSend(reply)
			r.nic.indicate(t, 0, shimtest.Frame(nicMAC, wireMAC, 1000, 1)) // large: no poll
			r.nic.indicate(t, 0, shimtest.Frame(nicMAC, wireMAC, 60, 2), shimtest.Frame(nicMAC, wireMAC, 60, 3), shimtest.Frame(nicMAC, wireMAC, 60, 4))
			if c := r.s.Counters(); c.Polls != 0 || len(r.nic.sendCalls()) != 0 {
				t.Fatalf("a large indication and a chain of 3 polled %d times, %d sends", c.Polls, len(r.nic.sendCalls()))
			}
			r.nic.indicate(t, 0, shimtest.Frame(nicMAC, wireMAC, 98, 5)) // the echo request
			c := r.s.Counters()
			if !on {
				if c.Polls != 0 || len(r.nic.sendCalls()) != 0 {
					t.Fatalf("PollOnReceive off: %d polls, %d sends", c.Polls, len(r.nic.sendCalls()))
				}
				r.hostReadN(5)
				r.close()
				return
			}
			if c.Polls != 1 || c.PollFrames != 1 {
				t.Fatalf("after a small indication: %d polls found %d frames, want 1 and 1", c.Polls, c.PollFrames)
			}
			sends := r.nic.sendCalls()
			if len(sends) != 1 {
				t.Fatalf("%d send calls, want the reply's", len(sends))
			}
			shimtest.EqualFrames(t, "sent down", sends[0], [][]byte{reply})
			r.nic.indicate(t, 0, shimtest.Frame(nicMAC, wireMAC, 98, 6)) // nothing waiting: a poll that finds nothing
			if c := r.s.Counters(); c.Polls != 2 || c.PollFrames != 1 || len(r.nic.sendCalls()) != 1 {
				t.Fatalf("second small indication: %d polls found %d frames, %d sends; want 2, 1, 1", c.Polls, c.PollFrames, len(r.nic.sendCalls()))
			}
			// A run that reads a bulk stream (6 full-size frames, more than
			// ndisshim.BulkRun bytes) marks the queue: the next small
			// indication (that stream's ACK) leaves the waiting frame to
			// the reader.
			for i := 0; i < 6; i++ {
				r.hostSend(shimtest.Frame(wireMAC, nicMAC, 1514, 10+i))
			}
			r.nic.indicate(t, 0, shimtest.Frame(nicMAC, wireMAC, 60, 7))
			if c := r.s.Counters(); c.Polls != 3 || c.PollFrames != 7 {
				t.Fatalf("small indication with a bulk run waiting: %d polls found %d frames, want 3 and 7", c.Polls, c.PollFrames)
			}
			r.hostSend(shimtest.Frame(wireMAC, nicMAC, 98, 20))
			r.nic.indicate(t, 0, shimtest.Frame(nicMAC, wireMAC, 60, 8))
			if c := r.s.Counters(); c.Polls != 3 {
				t.Fatalf("small indication after a bulk run polled (%d polls, want 3)", c.Polls)
			}
			r.hostReadN(8)
			r.close()
		})
	}
}

// With ReturnDelay every indicated NBL is held at least that long.
func TestReturnDelayHolds(t *testing.T) {
	const delay = 60 * time.Millisecond
	r := newRig(t, Config{ReturnDelay: delay})
	r.restart()
	for i := 0; i < 3; i++ {
		r.nic.indicate(t, 0, shimtest.Frame(nicMAC, wireMAC, 100, 2*i), shimtest.Frame(nicMAC, wireMAC, 100, 2*i+1))
		time.Sleep(10 * time.Millisecond)
	}
	shimtest.WaitFor(t, "6 NBLs returned", func() bool { return r.nic.returnedCount() == 6 })
	for _, rc := range r.nic.returnCalls() {
		if len(rc.idx) != 2 {
			t.Errorf("return chain of %d, want 2", len(rc.idx))
		}
		for k, held := range rc.held {
			if held < delay {
				t.Errorf("NBL %d held %s, want at least %s", rc.idx[k], held, delay)
			}
		}
	}
	r.hostReadN(6) // every frame was written too
	r.close()
}

// With RESOURCES the frames are on the NIC TAP before
// ReceiveNetBufferLists returns, and the NBLs are never returned.
func TestResourcesWrittenBeforeReturnNeverReturned(t *testing.T) {
	r := newRig(t, Config{ReturnDelay: 20 * time.Millisecond})
	r.restart()
	want := [][]byte{shimtest.Frame(nicMAC, wireMAC, 100, 1), shimtest.Frame(nicMAC, wireMAC, 200, 2), shimtest.Frame(nicMAC, wireMAC, 300, 3)}
	r.nic.indicate(t, ndisshim.ReceiveFlagResources, want...)
	// No waiting: the write happened inside the indication.
	shimtest.EqualFrames(t, "on the NIC TAP when the indication returned", r.hostRead(10), want)
	if c := r.s.Counters(); c.ResourcesWrites != 3 || c.ToHostFrames != 3 {
		t.Errorf("ResourcesWrites = %d, ToHostFrames = %d; want 3, 3", c.ResourcesWrites, c.ToHostFrames)
	}

	// A normal indication afterwards comes back; the RESOURCES ones never do.
	after := shimtest.Frame(nicMAC, wireMAC, 64, 4)
	r.nic.indicate(t, 0, after)
	shimtest.EqualFrames(t, "normal indication", r.hostReadN(1), [][]byte{after})
	shimtest.WaitFor(t, "the normal NBL returned", func() bool { return r.nic.returnedCount() >= 1 })
	r.close() // pause drains the writer: nothing else can come back
	if n := r.nic.returnedCount(); n != 1 {
		t.Errorf("%d NBLs returned, want 1 (RESOURCES NBLs must never be returned)", n)
	}
}

// Frames are written at once, in order; when the hold queue is full an
// indication is returned before ReceiveNetBufferLists returns, and
// counted. The returner holds the first chain for ReturnDelay, the second
// fills the queue (length 1), the third comes back at once.
func TestQueueFullReturnsAtOnce(t *testing.T) {
	r := newRig(t, Config{QueueLen: 1, ReturnDelay: 300 * time.Millisecond})
	r.restart()

	fa, fb := shimtest.Frame(nicMAC, wireMAC, 100, 1), shimtest.Frame(nicMAC, wireMAC, 100, 2)
	fc, fd := shimtest.Frame(nicMAC, wireMAC, 100, 3), shimtest.Frame(nicMAC, wireMAC, 100, 4)
	r.nic.indicate(t, 0, fa)
	shimtest.WaitFor(t, "the returner took the first chain", func() bool { return len(r.s.q) == 0 })
	r.nic.indicate(t, 0, fb) // fills the queue
	c := r.nic.indicate(t, 0, fc, fd)
	rc := r.nic.returnCalls()
	if len(rc) != 1 || len(rc[0].idx) != 2 || rc[0].idx[0] != c[0].Index() || rc[0].idx[1] != c[1].Index() {
		t.Fatalf("return calls when the indication returned: %+v, want the third chain (NBLs %d, %d)", rc, c[0].Index(), c[1].Index())
	}
	if d := r.s.Counters().ReturnedEarly; d != 2 {
		t.Errorf("ReturnedEarly = %d, want 2", d)
	}
	shimtest.EqualFrames(t, "every frame on the NIC TAP at once, in order", r.hostReadN(4), [][]byte{fa, fb, fc, fd})
	shimtest.WaitFor(t, "all 4 returned", func() bool { return r.nic.returnedCount() == 4 })
	r.close()
}

// Frames the host writes on the NIC TAP go down as sends, one chain per
// batch, bytes intact, and the send NBLs come back to the binding's pool.
func TestHostFramesSentInChains(t *testing.T) {
	r := newRig(t, Config{})
	r.restart()

	parked := r.dev.reads.Close()
	want := [][]byte{shimtest.Frame(wireMAC, nicMAC, 60, 0)}
	r.hostSend(want[0]) // wakes the reader, which parks in ReadBatch
	shimtest.Recv(t, "a parked call", parked)
	var bytes int64 = 60
	for i := 1; i < 10; i++ {
		f := shimtest.Frame(wireMAC, nicMAC, 60+150*i, i)
		want = append(want, f)
		bytes += int64(len(f))
	}
	r.hostSend(want[1:]...)
	r.dev.reads.Open()

	shimtest.WaitFor(t, "10 frames sent down", func() bool {
		n := 0
		for _, s := range r.nic.sendCalls() {
			n += len(s)
		}
		return n == 10
	})
	sends := r.nic.sendCalls()
	if len(sends) != 1 {
		t.Fatalf("%d send calls for 10 frames queued at once, want 1 chain", len(sends))
	}
	shimtest.EqualFrames(t, "sent down", sends[0], want)
	shimtest.WaitFor(t, "send NBLs back in the pool", func() bool { return r.s.sendPool.InUse() == 0 })
	c := r.s.Counters()
	if c.ToWireFrames != 10 || c.ToWireBytes != bytes || c.SendFailed != 0 {
		t.Errorf("ToWireFrames = %d, ToWireBytes = %d, SendFailed = %d; want 10, %d, 0", c.ToWireFrames, c.ToWireBytes, c.SendFailed, bytes)
	}

	// And in free flow: more frames than a batch, all down, pool empty again.
	var more [][]byte
	for i := 0; i < 100; i++ {
		more = append(more, shimtest.Frame(wireMAC, nicMAC, 64, 100+i))
	}
	for _, f := range more {
		r.hostSend(f)
	}
	var got [][]byte
	shimtest.WaitFor(t, "100 more frames sent down", func() bool {
		got = nil
		for _, s := range r.nic.sendCalls()[1:] {
			got = append(got, s...)
		}
		return len(got) == 100
	})
	shimtest.EqualFrames(t, "free flow", got, more)
	shimtest.WaitFor(t, "send NBLs back in the pool", func() bool { return r.s.sendPool.InUse() == 0 })
	if s := r.a.Stats(); s.SendsNow != 0 {
		t.Errorf("shim says %d sends outstanding", s.SendsNow)
	}
	r.close()
}

// While the binding is paused (from Bind until the first restart, and
// after a pause) host frames are dropped and counted, never sent.
func TestHostFramesDroppedWhilePaused(t *testing.T) {
	r := newRig(t, Config{})
	r.hostSend(shimtest.Frame(wireMAC, nicMAC, 100, 1), shimtest.Frame(wireMAC, nicMAC, 100, 2), shimtest.Frame(wireMAC, nicMAC, 100, 3))
	shimtest.WaitFor(t, "3 paused drops before restart", func() bool {
		c := r.s.Counters()
		if c.SendFailed > 0 {
			t.Fatalf("host frames sent down before the first restart (%d completed with a failure): the binding did not start paused", c.SendFailed)
		}
		return c.DropPaused == 3
	})

	r.restart()
	f := shimtest.Frame(wireMAC, nicMAC, 100, 4)
	r.hostSend(f)
	shimtest.WaitFor(t, "a send after restart", func() bool { return len(r.nic.sendCalls()) == 1 })
	shimtest.EqualFrames(t, "after restart", r.nic.sendCalls()[0], [][]byte{f})

	r.pause()
	r.hostSend(shimtest.Frame(wireMAC, nicMAC, 100, 5), shimtest.Frame(wireMAC, nicMAC, 100, 6))
	shimtest.WaitFor(t, "2 more paused drops", func() bool { return r.s.Counters().DropPaused == 5 })
	if n := len(r.nic.sendCalls()); n != 1 {
		t.Errorf("%d send calls, want 1 (nothing while paused)", n)
	}
	if c := r.s.Counters(); c.SendFailed != 0 || c.ToWireFrames != 1 {
		t.Errorf("SendFailed = %d, ToWireFrames = %d; want 0, 1", c.SendFailed, c.ToWireFrames)
	}
	if r.s.sendPool.InUse() != 0 {
		t.Errorf("send pool has %d NBLs in use", r.s.sendPool.InUse())
	}
	r.close()
}

// CheckHeld finds nothing when held buffers are left alone, and counts a
// buffer the test scribbles on while the binding holds it.
func TestCheckHeld(t *testing.T) {
	r := newRig(t, Config{CheckHeld: true, ReturnDelay: 200 * time.Millisecond})
	r.restart()

	r.nic.indicate(t, 0, shimtest.Frame(nicMAC, wireMAC, 100, 1), shimtest.Frame(nicMAC, wireMAC, 100, 2))
	shimtest.WaitFor(t, "clean chain returned", func() bool { return r.nic.returnedCount() == 2 })
	if c := r.s.Counters().CorruptHeld; c != 0 {
		t.Fatalf("CorruptHeld = %d for untouched buffers", c)
	}

	b := r.nic.indicate(t, 0, shimtest.Frame(nicMAC, wireMAC, 100, 5), shimtest.Frame(nicMAC, wireMAC, 100, 6)) // held 200ms
	// a use after "free" by the miniport
	b[0].FirstNB.Data[b[0].FirstNB.Offset+20] ^= 0xff
	shimtest.WaitFor(t, "all returned", func() bool { return r.nic.returnedCount() == 4 })
	if c := r.s.Counters().CorruptHeld; c != 1 {
		t.Errorf("CorruptHeld = %d, want 1 (one scribbled buffer)", c)
	}
	r.close()
}

// Close after Pause is verifier-clean, closes the NIC TAP and stops the
// reader and the writer (goleak in TestMain); a second Close is an error.
func TestCloseAfterPauseClean(t *testing.T) {
	fds := shimtest.OpenFDs(t)
	r := newRig(t, Config{ReturnDelay: 30 * time.Millisecond})
	r.restart()
	r.nic.indicate(t, 0, shimtest.Frame(nicMAC, wireMAC, 100, 1))
	r.hostSend(shimtest.Frame(wireMAC, nicMAC, 100, 2))
	shimtest.WaitFor(t, "the send", func() bool { return len(r.nic.sendCalls()) == 1 })

	r.pause() // waits for the held NBL (ReturnDelay)
	if n := r.nic.returnedCount(); n != 1 {
		t.Fatalf("%d NBLs returned after pause, want 1", n)
	}
	ctx := context.Background()
	r.done = true
	if err := r.s.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := r.s.Close(ctx); err == nil {
		t.Error("second Close succeeded")
	}
	if _, err := r.nicE.ReadBatch([][]byte{make([]byte, 64)}, []int{0}); !errors.Is(err, os.ErrClosed) {
		t.Errorf("NIC TAP end after close: %v, want closed", err)
	}
	if n := len(r.hostReadClosed()); n != 1 { // the indicated frame, then EOF
		t.Errorf("%d frames on the NIC TAP, want 1", n)
	}
	if err := r.a.Halt(ctx, ndisshim.HaltDeviceDisabled); err != nil {
		t.Fatalf("halt: %v", err)
	}
	if err := r.drv.Deregister(); err != nil {
		t.Fatalf("deregister: %v", err)
	}
	r.host.Close()
	if n := shimtest.OpenFDs(t); n != fds {
		t.Errorf("%d fds open after close and halt, %d before the binding", n, fds)
	}
}

// Config.Validate names what is wrong.
func TestConfigValidate(t *testing.T) {
	cases := []struct {
		want string
		cfg  Config
	}{
		{"name", Config{}},
		{"name", Config{NICName: "a-very-long-tap-name"}},
		{"return delay", Config{NICName: "tm0", ReturnDelay: -time.Second}},
		{"queue length", Config{NICName: "tm0", QueueLen: -1}},
		{"send NBLs", Config{NICName: "tm0", SendNBLs: -1}},
		{"batch", Config{NICName: "tm0", Batch: -1}},
	}
	for _, c := range cases {
		err := c.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error naming %q", c.cfg, err, c.want)
		}
	}
	if err := (Config{NICName: "tm0"}).Validate(); err != nil {
		t.Errorf("good config: %v", err)
	}
}

// What the NIC TAP drops without an error is counted: frames to a host
// that reads nothing, once its queue is full (no room), and a host frame
// longer than a send buffer (the NIC TAP's MTU raised past the adapter's;
// the read drops it). Both were lost without a trace: tapdev counted
// them, and the binding never read its counters.
func TestNICTAPDropsCounted(t *testing.T) {
	r := newRig(t, Config{})
	r.restart()
	sent := 0
	for i := 0; i < 16 && r.s.Counters().ToHostNoRoom == 0; i++ {
		frames := make([][]byte, 32)
		for j := range frames {
			frames[j] = shimtest.Frame(nicMAC, wireMAC, testMTU+14, sent)
			sent++
		}
		r.nic.indicate(t, 0, frames...)
		shimtest.WaitFor(t, "the indication returned", func() bool { return r.nic.returnedCount() == sent })
	}
	c := r.s.Counters()
	if c.ToHostNoRoom == 0 || c.ToHostFrames+c.ToHostNoRoom != int64(sent) || c.WriteErrors != 0 {
		t.Fatalf("%d frames to a host that reads nothing: written %d, no room %d, write errors %d; want some without room, every frame written or counted once", sent, c.ToHostFrames, c.ToHostNoRoom, c.WriteErrors)
	}
	if got := len(r.hostReadN(int(c.ToHostFrames))); int64(got) != c.ToHostFrames {
		t.Errorf("the host read %d frames, ToHostFrames %d", got, c.ToHostFrames)
	}

	r.hostSend(shimtest.Frame(wireMAC, nicMAC, 3000, 1), shimtest.Frame(wireMAC, nicMAC, 100, 2))
	shimtest.WaitFor(t, "the host frames read", func() bool { return r.s.Counters().ToWireFrames >= 1 })
	shimtest.WaitFor(t, "the long frame counted", func() bool { return r.s.Counters().DropOversize == 1 })
	if c := r.s.Counters(); c.ToWireFrames != 1 {
		t.Errorf("to wire %d frames, want the 100-byte one (the 3000-byte one dropped)", c.ToWireFrames)
	}
	r.close()
}
