package adapter

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
	"github.com/tapminiport/tapminiport/tapdev"
)

// A chain of sends is written to the wire, bytes intact and in order, and
// completed as one chain with StatusSuccess.
func TestSendWrittenAndCompletedInOneChain(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.restart()

	var want [][]byte
	var bytes int64
	for i := 0; i < 5; i++ {
		f := frame(peerMAC, 60+i*300, i)
		want = append(want, f)
		bytes += int64(len(f))
	}
	r.p.send(t, r.b, want...)

	cs := r.p.completions()
	if len(cs) != 1 {
		t.Fatalf("%d completion calls for one chain of 5, want 1", len(cs))
	}
	if len(cs[0].statuses) != 5 {
		t.Fatalf("completion chain of %d NBLs, want 5", len(cs[0].statuses))
	}
	for i, st := range cs[0].statuses {
		if st != ndisshim.StatusSuccess {
			t.Errorf("NBL %d completed with %v, want SUCCESS", i, st)
		}
	}
	shimtest.EqualFrames(t, "on the wire", r.readPeer(5), want)
	c := r.counters()
	if c.TxFrames != 5 || c.TxBytes != bytes {
		t.Errorf("TxFrames = %d, TxBytes = %d; want 5 and %d", c.TxFrames, c.TxBytes, bytes)
	}
	if s := r.a.Stats(); s.SendsNow != 0 {
		t.Errorf("shim says %d sends outstanding after completion", s.SendsNow)
	}
	r.halt()
}

// An NBL whose frame is longer than MTU+18 (or shorter than a header) is
// completed with StatusInvalidLength and not written; the rest of the chain
// goes out.
func TestSendInvalidLength(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.restart()

	good1, good2 := frame(peerMAC, 100, 1), frame(peerMAC, testMTU+18, 2)
	r.p.send(t, r.b, good1, frame(peerMAC, testMTU+19, 3), good2, frame(peerMAC, 10, 4))

	cs := r.p.completions()
	if len(cs) != 1 {
		t.Fatalf("%d completion calls, want 1", len(cs))
	}
	want := []ndisshim.Status{ndisshim.StatusSuccess, ndisshim.StatusInvalidLength, ndisshim.StatusSuccess, ndisshim.StatusInvalidLength}
	for i, st := range cs[0].statuses {
		if st != want[i] {
			t.Errorf("NBL %d completed with %v, want %v", i, st, want[i])
		}
	}
	shimtest.EqualFrames(t, "on the wire", r.readPeer(2), [][]byte{good1, good2})
	if !r.peerEmpty() {
		t.Error("an invalid frame reached the wire")
	}
	if c := r.counters(); c.TxDropOversize != 2 || c.TxFrames != 2 {
		t.Errorf("TxDropOversize = %d, TxFrames = %d; want 2 and 2", c.TxDropOversize, c.TxFrames)
	}
	r.halt()
}

// Sends while the adapter is Paused (before the first restart, and after a
// pause) complete with StatusPaused and never reach the wire.
func TestSendWhilePaused(t *testing.T) {
	r := newRig(t, rigOptions{})

	check := func(when string) {
		t.Helper()
		before := len(r.p.completions())
		r.p.send(t, r.b, frame(peerMAC, 100, 1), frame(peerMAC, 100, 2))
		cs := r.p.completions()
		if len(cs) != before+1 {
			t.Fatalf("%s: %d completion calls, want %d (completed before the send call returned)", when, len(cs), before+1)
		}
		for i, st := range cs[before].statuses {
			if st != ndisshim.StatusPaused {
				t.Errorf("%s: NBL %d completed with %v, want PAUSED", when, i, st)
			}
		}
		if !r.peerEmpty() {
			t.Errorf("%s: a send reached the wire", when)
		}
	}
	check("before restart")
	r.restart()
	r.pause()
	check("after pause")
	if c := r.counters(); c.TxFrames != 0 {
		t.Errorf("TxFrames = %d while paused", c.TxFrames)
	}
	r.halt()
}

// With PollOnSend a small send brings up what waits in the receive ring
// (the reply to a ping) on the sender's goroutine, even with the interrupt
// line silent; a large send or a chain of three does not poll, and
// without PollOnSend nothing does.
func TestPollOnSend(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("PollOnSend=%v", on), func(t *testing.T) {
			r := newRig(t, rigOptions{silent: true, cfg: func(c *Config) { c.PollOnSend = on }})
			r.restart()
			r.setFilter(ndisshim.PacketTypeDirected)
			reply := frame(ourMAC, 98, 1)
			r.wire(reply)
			r.p.send(t, r.b, frame(peerMAC, 1000, 2)) // large: no poll
			r.p.send(t, r.b, frame(peerMAC, 60, 3), frame(peerMAC, 60, 4), frame(peerMAC, 60, 5))
			if c := r.counters(); c.RxPolls != 0 || r.p.frameCount() != 0 {
				t.Fatalf("a large send and a chain of 3 polled %d times, %d frames up", c.RxPolls, r.p.frameCount())
			}
			r.p.send(t, r.b, frame(peerMAC, 98, 6)) // the ping
			c := r.counters()
			if !on {
				if c.RxPolls != 0 || r.p.frameCount() != 0 {
					t.Fatalf("PollOnSend off: %d polls, %d frames up", c.RxPolls, r.p.frameCount())
				}
				r.readPeer(5)
				r.halt()
				return
			}
			if c.RxPolls != 1 || c.RxPollFrames != 1 {
				t.Fatalf("after a small send: %d polls found %d frames, want 1 and 1", c.RxPolls, c.RxPollFrames)
			}
			shimtest.EqualFrames(t, "indicated", r.p.allFrames(), [][]byte{reply})
			r.p.send(t, r.b, frame(peerMAC, 98, 7)) // nothing waiting: a poll that finds nothing
			if c := r.counters(); c.RxPolls != 2 || c.RxPollFrames != 1 {
				t.Fatalf("second small send: %d polls found %d frames, want 2 and 1", c.RxPolls, c.RxPollFrames)
			}
			// A run that reads a bulk stream (6 full-size frames, more than
			// ndisshim.BulkRun bytes) marks the ring: the next small send
			// (that stream's ACK) leaves the waiting frame to the DPC.
			for i := 0; i < 6; i++ {
				r.wire(frame(ourMAC, 1514, 10+i))
			}
			r.p.send(t, r.b, frame(peerMAC, 60, 8))
			if c := r.counters(); c.RxPolls != 3 || c.RxPollFrames != 7 {
				t.Fatalf("small send with a bulk run waiting: %d polls found %d frames, want 3 and 7", c.RxPolls, c.RxPollFrames)
			}
			r.wire(frame(ourMAC, 98, 20))
			r.p.send(t, r.b, frame(peerMAC, 60, 9))
			if c := r.counters(); c.RxPolls != 3 {
				t.Fatalf("small send after a bulk run polled (%d polls, want 3)", c.RxPolls)
			}
			r.readPeer(8)
			r.halt()
		})
	}
}

// downDev is the socketpair end whose link can be set down: WriteBatch
// then fails with tapdev.ErrLinkDown, as a TAP's write does with EIO.
type downDev struct {
	*tapdev.Dev
	down atomic.Bool
}

func (d *downDev) WriteBatch(bufs [][]byte, res []tapdev.TxResult) (int, error) {
	if d.down.Load() {
		if res != nil {
			clear(res[:len(bufs)]) // TxUnwritten
		}
		return 0, fmt.Errorf("tapdev %s: write: %w (EIO: the link is set down)", d.Name(), tapdev.ErrLinkDown)
	}
	return d.Dev.WriteBatch(bufs, res)
}

// A hardware link set down is a pulled cable, not a removal: sends
// complete with MEDIA_DISCONNECTED and are counted as link-down drops, the
// bindings get one LINK_STATE disconnected, the OIDs say disconnected, and
// once the link is up the next send goes through, the bindings get
// connected, and the adapter still pauses, restarts and halts cleanly.
// LinkChanged (the link watch) does the same without a send.
func TestSendWhileHardwareLinkDown(t *testing.T) {
	var dev *downDev
	r := newRig(t, rigOptions{wrap: func(d *tapdev.Dev) Device { dev = &downDev{Dev: d}; return dev }})
	r.restart()
	links := r.linkStates
	media := func() uint32 {
		req, st := r.query(ndisshim.OIDGenMediaConnectStatus, 4)
		if st != ndisshim.StatusSuccess {
			t.Fatalf("media connect status query: %v", st)
		}
		return req.AnswerUint32()
	}
	lastStatuses := func() []ndisshim.Status {
		cs := r.p.completions()
		return cs[len(cs)-1].statuses
	}

	dev.down.Store(true)
	for i := 0; i < 3; i++ {
		r.p.send(t, r.b, frame(peerMAC, 100, 2*i), frame(peerMAC, 100, 2*i+1))
		for j, st := range lastStatuses() {
			if st != ndisshim.StatusMediaDisconnected {
				t.Errorf("send %d while down: NBL %d completed with %v, want MEDIA_DISCONNECTED", i, j, st)
			}
		}
	}
	c := r.counters()
	if c.TxDropLinkDown != 6 || c.TxErrors != 0 || c.TxFrames != 0 {
		t.Errorf("while down: link-down drops %d, tx errors %d, tx frames %d; want 6, 0, 0", c.TxDropLinkDown, c.TxErrors, c.TxFrames)
	}
	if got := links(); !slices.Equal(got, []bool{false}) {
		t.Errorf("link state indications while down: %v; want one, disconnected", got)
	}
	if got := media(); got != ndisshim.MediaStateDisconnected {
		t.Errorf("OID_GEN_MEDIA_CONNECT_STATUS while down = %d, want disconnected", got)
	}
	if r.mp.removed.Load() {
		t.Fatal("a link set down was taken for a surprise removal")
	}
	if !r.peerEmpty() {
		t.Error("a frame reached the wire while the link was down")
	}

	dev.down.Store(false)
	r.p.send(t, r.b, frame(peerMAC, 100, 7))
	if st := lastStatuses(); len(st) != 1 || st[0] != ndisshim.StatusSuccess {
		t.Errorf("send once the link is up completed with %v, want SUCCESS", st)
	}
	if got := r.readPeer(1); len(got) != 1 || !bytes.Equal(got[0], frame(peerMAC, 100, 7)) {
		t.Errorf("the wire got %d frames once the link is up, want the one sent", len(got))
	}
	if got := links(); !slices.Equal(got, []bool{false, true}) {
		t.Errorf("link state indications after the link came back: %v; want disconnected, connected", got)
	}
	if got := media(); got != ndisshim.MediaStateConnected {
		t.Errorf("OID_GEN_MEDIA_CONNECT_STATUS once up = %d, want connected", got)
	}

	// The link watch (tapdev.WatchLink) reports a change before any send
	// finds it: the bindings and the OIDs know at once, and a change the
	// miniport already knows of is not reported twice.
	r.mp.LinkChanged(false)
	r.mp.LinkChanged(false)
	if got := links(); !slices.Equal(got, []bool{false, true, false}) {
		t.Errorf("link state indications after LinkChanged(false) twice: %v; want ..., disconnected once more", got)
	}
	if got := media(); got != ndisshim.MediaStateDisconnected {
		t.Errorf("OID_GEN_MEDIA_CONNECT_STATUS after LinkChanged(false) = %d, want disconnected", got)
	}
	r.mp.LinkChanged(true)
	if got := links(); !slices.Equal(got, []bool{false, true, false, true}) {
		t.Errorf("link state indications after LinkChanged(true): %v; want ..., connected", got)
	}
	if got := media(); got != ndisshim.MediaStateConnected {
		t.Errorf("OID_GEN_MEDIA_CONNECT_STATUS after LinkChanged(true) = %d, want connected", got)
	}
	if c := r.counters(); c.TxDropLinkDown != 6 {
		t.Errorf("link-down drops %d after the watch's changes, want still 6 (no send was made)", c.TxDropLinkDown)
	}
	r.pause()
	r.restart()
	r.pause()
	r.halt()
}

// refusingDev is the socketpair end whose WriteBatch refuses every frame
// refuse says it should, without an error (TxRefused), as a TAP refuses a
// frame with EINVAL (tapdev's WriteBatch goes on with the batch).
type refusingDev struct {
	*tapdev.Dev
	refuse func(frame []byte) bool
}

// refuseLen refuses the frames of n bytes.
func refuseLen(n int) func([]byte) bool { return func(b []byte) bool { return len(b) == n } }

func (d *refusingDev) WriteBatch(bufs [][]byte, res []tapdev.TxResult) (int, error) {
	n := 0
	for i, b := range bufs {
		var r [1]tapdev.TxResult
		if d.refuse(b) {
			r[0] = tapdev.TxRefused
		} else {
			w, err := d.Dev.WriteBatch([][]byte{b}, r[:])
			n += w
			if err != nil {
				if res != nil {
					clear(res[i:len(bufs)])
				}
				return n, err
			}
		}
		if res != nil {
			res[i] = r[0]
		}
	}
	return n, nil
}

// Frames the hardware drops without an error are counted where a user
// looks: a full device (no room: the socketpair's peer reads nothing) in
// TxDropNoRoom, a refused frame in TxErrors, both in the statistics OID's
// discards and errors, and every frame sent is written or counted once.
// Each NBL completes with its own frame's outcome, wherever it was in the
// batch: SUCCESS when written, RESOURCES for no room, FAILURE when
// refused; TxBytes counts the bytes written. (The adapter used to complete
// them all SUCCESS and count nothing; then it counted them, but WriteBatch
// said only how many frames were written, so statuses stayed SUCCESS and
// TxBytes counted the first n frames.)
func TestSendDropsByDeviceCounted(t *testing.T) {
	t.Run("no room", func(t *testing.T) {
		r := newRig(t, rigOptions{})
		r.restart()
		sent := 0
		for i := 0; i < 8 && r.counters().TxDropNoRoom == 0; i++ {
			frames := make([][]byte, 32)
			for j := range frames {
				frames[j] = frame(peerMAC, testMTU+14, sent)
				sent++
			}
			r.p.send(t, r.b, frames...)
		}
		c := r.counters()
		if c.TxDropNoRoom == 0 {
			t.Fatalf("%d frames of %d bytes sent to a peer that reads nothing, none counted as no room (tx frames %d, errors %d)", sent, testMTU+14, c.TxFrames, c.TxErrors)
		}
		if c.TxFrames+c.TxDropNoRoom != int64(sent) || c.TxErrors != 0 {
			t.Errorf("sent %d: tx frames %d + no room %d, errors %d; want every frame written or counted once, no errors", sent, c.TxFrames, c.TxDropNoRoom, c.TxErrors)
		}
		if c.TxBytes != c.TxFrames*(testMTU+14) {
			t.Errorf("TxBytes %d for %d frames of %d bytes written", c.TxBytes, c.TxFrames, testMTU+14)
		}
		if got := len(r.readPeer(int(c.TxFrames))); int64(got) != c.TxFrames {
			t.Errorf("the wire got %d frames, TxFrames says %d", got, c.TxFrames)
		}
		if s := r.statistics(); s.XmitDiscards != uint64(c.TxDropNoRoom) {
			t.Errorf("statistics XmitDiscards %d, want the %d frames without room", s.XmitDiscards, c.TxDropNoRoom)
		}
		var ok, noRoom int64
		for _, cs := range r.p.completions() {
			for _, st := range cs.statuses {
				switch st {
				case ndisshim.StatusSuccess:
					ok++
				case ndisshim.StatusResources:
					noRoom++
				default:
					t.Errorf("a send completed %v; want SUCCESS or RESOURCES", st)
				}
			}
		}
		if ok != c.TxFrames || noRoom != c.TxDropNoRoom {
			t.Errorf("completions: %d SUCCESS, %d RESOURCES; want the %d written and the %d without room", ok, noRoom, c.TxFrames, c.TxDropNoRoom)
		}
		r.halt()
	})
	t.Run("refused", func(t *testing.T) {
		r := newRig(t, rigOptions{wrap: func(d *tapdev.Dev) Device { return &refusingDev{Dev: d, refuse: refuseLen(99)} }})
		r.restart()
		r.p.send(t, r.b, frame(peerMAC, 100, 1), frame(peerMAC, 99, 2), frame(peerMAC, 100, 3), frame(peerMAC, 99, 4))
		r.p.send(t, r.b, frame(peerMAC, 99, 5), frame(peerMAC, 100, 6))
		c := r.counters()
		if c.TxFrames != 3 || c.TxErrors != 3 || c.TxDropNoRoom != 0 || c.TxBytes != 300 {
			t.Errorf("tx frames %d, errors %d, no room %d, bytes %d; want 3 written, 3 refused counted as errors, 0, 300", c.TxFrames, c.TxErrors, c.TxDropNoRoom, c.TxBytes)
		}
		ok, failed := ndisshim.StatusSuccess, ndisshim.StatusFailure
		cs := r.p.completions()
		if len(cs) != 2 || !slices.Equal(cs[0].statuses, []ndisshim.Status{ok, failed, ok, failed}) || !slices.Equal(cs[1].statuses, []ndisshim.Status{failed, ok}) {
			t.Errorf("completions %v; want [SUCCESS FAILURE SUCCESS FAILURE] and [FAILURE SUCCESS]: each NBL its own frame's outcome", cs)
		}
		shimtest.EqualFrames(t, "on the wire", r.readPeer(3), [][]byte{frame(peerMAC, 100, 1), frame(peerMAC, 100, 3), frame(peerMAC, 100, 6)})
		if q, st := r.query(ndisshim.OIDGenXmitError, 8); st != ndisshim.StatusSuccess || q.AnswerUint64() != 3 {
			t.Errorf("OID_GEN_XMIT_ERROR = %d (%v), want 3", q.AnswerUint64(), st)
		}
		r.halt()
	})
}

// An NBL of several NET_BUFFERs that the hardware takes only in part
// completes FAILURE, and only its frames written count: bytes, frames and
// the wire agree.
func TestSendMultiBufferNBLTakenInPart(t *testing.T) {
	r := newRig(t, rigOptions{wrap: func(d *tapdev.Dev) Device { return &refusingDev{Dev: d, refuse: refuseLen(99)} }})
	r.restart()
	r.p.sendNBs(t, r.b,
		[][]byte{frame(peerMAC, 100, 1), frame(peerMAC, 99, 2), frame(peerMAC, 120, 3)},
		[][]byte{frame(peerMAC, 140, 4), frame(peerMAC, 160, 5)})
	cs := r.p.completions()
	want := []ndisshim.Status{ndisshim.StatusFailure, ndisshim.StatusSuccess}
	if len(cs) != 1 || !slices.Equal(cs[0].statuses, want) {
		t.Errorf("completions %v; want one chain %v", cs, want)
	}
	c := r.counters()
	if c.TxFrames != 4 || c.TxBytes != 100+120+140+160 || c.TxErrors != 1 {
		t.Errorf("tx frames %d, bytes %d, errors %d; want 4, %d, 1", c.TxFrames, c.TxBytes, c.TxErrors, 100+120+140+160)
	}
	shimtest.EqualFrames(t, "on the wire", r.readPeer(4), [][]byte{frame(peerMAC, 100, 1), frame(peerMAC, 120, 3), frame(peerMAC, 140, 4), frame(peerMAC, 160, 5)})
	r.halt()
}

// With two queues a chain's NBLs interleave, and each queue completes only
// its own: when one queue's hardware refuses some of its frames, exactly
// those NBLs fail, the other queue's all succeed, and each queue counts
// its own frames and bytes.
func TestSendTakenInPartOnTwoQueues(t *testing.T) {
	refuseOdd := func(f []byte) bool { return binary.BigEndian.Uint16(f[14+20+2:])%2 == 1 } // by destination port
	r, _ := newTwoQueueRig(t, func(d *tapdev.Dev) Device { return &refusingDev{Dev: d, refuse: refuseOdd} })
	r.restart()
	a, b := [4]byte{198, 18, 0, 1}, [4]byte{198, 18, 0, 2}
	var frames [][]byte
	var want []ndisshim.Status
	var n0, n1, refused int
	for port := uint16(0); port < 64; port++ {
		f := udpFrame(peerMAC, b, a, 5201, 3000+port)
		frames = append(frames, f)
		switch {
		case flowHash(f)%2 == 0:
			n0++
			want = append(want, ndisshim.StatusSuccess)
		case port%2 == 1:
			refused++
			want = append(want, ndisshim.StatusFailure)
		default:
			n1++
			want = append(want, ndisshim.StatusSuccess)
		}
	}
	if n0 == 0 || n1 == 0 || refused == 0 {
		t.Fatalf("64 flows: %d on queue 0, %d written and %d refused on queue 1; want each", n0, n1, refused)
	}
	r.p.send(t, r.b, frames...)
	cs := r.p.completions()
	if len(cs) != 1 || !slices.Equal(cs[0].statuses, want) {
		t.Errorf("completions %v; want one chain %v", cs, want)
	}
	size := int64(len(frames[0]))
	qc := r.mp.QueueCounters()
	if qc[0].TxFrames != int64(n0) || qc[0].TxBytes != int64(n0)*size || qc[1].TxFrames != int64(n1) || qc[1].TxBytes != int64(n1)*size {
		t.Errorf("per-queue send counters %+v; want %d and %d frames of %d bytes", qc, n0, n1, size)
	}
	if c := r.counters(); c.TxErrors != int64(refused) {
		t.Errorf("TxErrors %d; want the %d refused", c.TxErrors, refused)
	}
	r.halt()
}

// A protocol may send from its status handler (a gratuitous ARP when the
// link comes up). When that send finds the link down again, the miniport
// records it and tells the bindings, in order, without deadlocking: the
// link state was indicated under the link lock, which the nested send's
// report then waited for on the same goroutine.
func TestSendFromLinkStatusHandler(t *testing.T) {
	var dev *downDev
	r := newRig(t, rigOptions{wrap: func(d *tapdev.Dev) Device { dev = &downDev{Dev: d}; return dev }})
	r.restart()
	r.p.mu.Lock()
	r.p.onStatus = func(b *ndisshim.Binding, s ndisshim.StatusIndication) {
		if ls, ok := s.Data.(ndisshim.LinkState); ok && ls.Connected {
			r.p.send(t, b, frame(peerMAC, 60, 1)) // the ARP
		}
	}
	r.p.mu.Unlock()
	r.mp.LinkChanged(false)
	dev.down.Store(true) // the link went down again before the watch said up
	done := make(chan struct{})
	go func() {
		r.mp.LinkChanged(true)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("LinkChanged(true) did not return in 5 s: the status handler's send deadlocked")
	}
	var got []bool
	r.p.mu.Lock()
	for _, s := range r.p.statuses {
		if ls, ok := s.Data.(ndisshim.LinkState); ok && s.Code == ndisshim.StatusLinkState {
			got = append(got, ls.Connected)
		}
	}
	r.p.onStatus = nil
	r.p.mu.Unlock()
	if !slices.Equal(got, []bool{false, true, false}) {
		t.Errorf("link state indications %v, want disconnected, connected, disconnected (the ARP found it down)", got)
	}
	if !r.mp.linkDown.Load() {
		t.Error("the miniport thinks the link is up after a send found it down")
	}
	if c := r.counters(); c.TxDropLinkDown != 1 {
		t.Errorf("link-down drops %d, want the ARP", c.TxDropLinkDown)
	}
	dev.down.Store(false)
	r.pause()
	r.halt()
}

// What a send learned of the link before a later change is stale: a send
// that found the link down, and reports it only after the watch said down
// and then up again, does not put the miniport back to down for good (the
// link is up and, on an idle link, nothing would correct it).
func TestStaleLinkObservationIgnored(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.restart()
	seq := r.mp.linkObs.Add(1) // the send takes it, then its write fails with EIO
	r.mp.LinkChanged(false)    // the watch: down
	r.mp.LinkChanged(true)     // the watch: up again
	r.mp.observeLink(seq)
	r.mp.sendSawLink(false, seq)
	if r.mp.linkDown.Load() {
		t.Error("a stale link-down observation marked the link down after the watch said up")
	}
	seq = r.mp.linkObs.Add(1)
	r.mp.observeLink(seq)
	r.mp.sendSawLink(false, seq) // a current one is taken
	if !r.mp.linkDown.Load() {
		t.Error("a current link-down observation was ignored")
	}
	r.mp.LinkChanged(true)
	r.pause()
	r.halt()
}

// A newer send that agreed with the state also makes an older one stale,
// though it changed nothing: with the link recorded down, send B's write
// goes through and B is preempted; the link is set down again and send A
// finds it down (no change to report); B's late "up" must not mark the
// link up while it is down. It did: only changes made a report stale.
func TestStaleLinkObservationAfterAgreeingOne(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.restart()
	r.mp.LinkChanged(false)
	seqB := r.mp.linkObs.Add(1) // B's write goes through
	seqA := r.mp.linkObs.Add(1) // A's write finds the link down: agrees
	r.mp.observeLink(seqA)
	r.mp.observeLink(seqB)
	r.mp.sendSawLink(true, seqB)
	if !r.mp.linkDown.Load() {
		t.Error("a send's stale link-up observation marked the link up after a newer send found it down")
	}
	r.mp.LinkChanged(true)
	r.pause()
	r.halt()
}

// After a surprise removal the shim has told the bindings the link is down:
// a send that wrote just before and reports the link up late tells them
// nothing. It used to indicate Connected after the removal's Disconnected.
func TestNoLinkUpAfterSurpriseRemoval(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.restart()
	r.mp.LinkChanged(false)
	seq := r.mp.linkObs.Add(1) // a send's write went through just before the removal
	r.a.NotifySurpriseRemoval()
	r.mp.observeLink(seq)
	r.mp.sendSawLink(true, seq)
	if got := r.linkStates(); len(got) == 0 || got[len(got)-1] {
		t.Errorf("link state indications %v: the bindings were told the link is up after the surprise removal", got)
	}
	r.pause()
	r.halt()
}

// cutDev is the socketpair end whose WriteBatch writes the first k frames
// of a batch and then fails with tapdev.ErrLinkDown (the link was set down
// in the middle of the batch).
type cutDev struct {
	*tapdev.Dev
	k int
}

func (d *cutDev) WriteBatch(bufs [][]byte, res []tapdev.TxResult) (int, error) {
	k := min(d.k, len(bufs))
	var head []tapdev.TxResult
	if res != nil {
		head = res[:k]
	}
	n, err := d.Dev.WriteBatch(bufs[:k], head)
	if res != nil {
		clear(res[k:len(bufs)]) // TxUnwritten
	}
	if err != nil || k == len(bufs) {
		return n, err
	}
	return n, fmt.Errorf("tapdev %s: write: %w (EIO: the link is set down)", d.Name(), tapdev.ErrLinkDown)
}

// A batch an error cuts short: the NBLs whose frames went out complete
// SUCCESS and count their bytes, only the ones not written get the
// error's status, and an NBL refused before the write keeps its
// INVALID_LENGTH. (Every NBL of the batch got MEDIA_DISCONNECTED, and no
// byte was counted for the frames written.)
func TestSendCutShortByLinkDown(t *testing.T) {
	r := newRig(t, rigOptions{wrap: func(d *tapdev.Dev) Device { return &cutDev{Dev: d, k: 2} }})
	r.restart()
	r.p.send(t, r.b, frame(peerMAC, 100, 1), frame(peerMAC, 200, 2), frame(peerMAC, 300, 3), frame(peerMAC, 13, 4))
	cs := r.p.completions()
	want := []ndisshim.Status{ndisshim.StatusSuccess, ndisshim.StatusSuccess, ndisshim.StatusMediaDisconnected, ndisshim.StatusInvalidLength}
	if len(cs) != 1 || !slices.Equal(cs[0].statuses, want) {
		t.Errorf("completions %v, want one chain %v", cs, want)
	}
	c := r.counters()
	if c.TxFrames != 2 || c.TxBytes != 300 || c.TxDropLinkDown != 1 || c.TxDropOversize != 1 {
		t.Errorf("tx frames %d, bytes %d, link-down %d, oversize %d; want 2, 300, 1, 1", c.TxFrames, c.TxBytes, c.TxDropLinkDown, c.TxDropOversize)
	}
	shimtest.EqualFrames(t, "on the wire", r.readPeer(2), [][]byte{frame(peerMAC, 100, 1), frame(peerMAC, 200, 2)})
	r.mp.LinkChanged(true)
	r.pause()
	r.halt()
}

// linkStates lists the LINK_STATE indications the binding got, in order:
// true for connected.
func (r *rig) linkStates() []bool {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	var out []bool
	for _, s := range r.p.statuses {
		if ls, ok := s.Data.(ndisshim.LinkState); ok && s.Code == ndisshim.StatusLinkState {
			out = append(out, ls.Connected)
		}
	}
	return out
}
