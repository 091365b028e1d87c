package adapter

import (
	"bytes"
	"net"
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

// Frames the link partner writes arrive as indications, bytes intact and
// in order, each indication a chain of at least one frame and at most a
// batch, and every NBL comes back to the pool.
func TestReceiveFramesIndicated(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.restart()
	r.setFilter(ndisshim.PacketTypeDirected)

	var want [][]byte
	for i := 0; i < 50; i++ {
		want = append(want, frame(ourMAC, 60+i*20, i))
	}
	for _, f := range want {
		r.wire(f)
	}
	shimtest.WaitFor(t, "50 frames indicated", func() bool { return r.p.frameCount() == len(want) })
	shimtest.EqualFrames(t, "indicated", r.p.allFrames(), want)

	inds := r.p.indications()
	for i, ind := range inds {
		if len(ind.frames) < 1 || len(ind.frames) > r.cfg.Batch {
			t.Errorf("indication %d carries %d frames, want 1..%d", i, len(ind.frames), r.cfg.Batch)
		}
		if ind.count != len(ind.frames) {
			t.Errorf("indication %d: count %d but the chain has %d NBLs", i, ind.count, len(ind.frames))
		}
		if ind.flags.Has(ndisshim.ReceiveFlagResources) {
			t.Errorf("indication %d with RESOURCES while the pool is nearly empty of use", i)
		}
	}
	c := r.counters()
	if c.RxFrames != int64(len(want)) || c.Indications != int64(len(inds)) {
		t.Errorf("counters: %d frames in %d indications, want %d in %d", c.RxFrames, c.Indications, len(want), len(inds))
	}
	var bytesWant int64
	for _, f := range want {
		bytesWant += int64(len(f))
	}
	if c.RxBytes != bytesWant {
		t.Errorf("RxBytes = %d, want %d", c.RxBytes, bytesWant)
	}
	if s := r.a.Stats(); s.HeldNow != 0 {
		t.Errorf("shim says %d NBLs held after every one was returned", s.HeldNow)
	}
	if c.PoolInUse != 0 {
		t.Errorf("PoolInUse = %d after every NBL came back", c.PoolInUse)
	}
	r.halt()
}

// Frames queued on the wire before the DPC runs go up as ONE indication.
// The hardware's ReadBatch is gated: the DPC parks in it, the test queues
// ten frames behind a runt that woke it, then lets it read.
func TestReceiveOneIndicationPerBatch(t *testing.T) {
	r := newRig(t, rigOptions{gated: true})
	r.restart()
	r.setFilter(ndisshim.PacketTypeDirected)

	parked := r.gate.reads.Close()
	r.wire(frame(ourMAC, 10, 0)) // a runt wakes the interrupt; the DPC parks in ReadBatch
	shimtest.Recv(t, "the DPC parked in ReadBatch", parked)
	var want [][]byte
	for i := 1; i <= 10; i++ {
		want = append(want, frame(ourMAC, 100+i, i))
	}
	r.wire(want...)
	r.gate.reads.Open()

	shimtest.WaitFor(t, "10 frames indicated", func() bool { return r.p.frameCount() == 10 })
	inds := r.p.indications()
	if len(inds) != 1 {
		t.Fatalf("%d indications for one batch of 10 frames, want 1", len(inds))
	}
	if inds[0].count != 10 {
		t.Errorf("indication count %d, want 10", inds[0].count)
	}
	shimtest.EqualFrames(t, "batch", inds[0].frames, want)
	c := r.counters()
	if c.Indications != 1 || c.RxDropRunt != 1 {
		t.Errorf("Indications = %d, RxDropRunt = %d; want 1 and 1", c.Indications, c.RxDropRunt)
	}
	r.halt()
}

// Nothing is indicated until a protocol sets OID_GEN_CURRENT_PACKET_FILTER;
// then each filter bit lets exactly its frames through.
func TestReceivePacketFilter(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.restart()

	// step writes one frame and waits until the DPC has either indicated it
	// or counted it as filtered, then says which.
	seq := 0
	step := func(dst net.HardwareAddr) (accepted bool) {
		t.Helper()
		before := r.p.frameCount() + int(r.counters().RxDropFiltered)
		seq++
		f := frame(dst, 64, seq)
		r.wire(f)
		shimtest.WaitFor(t, "frame to "+dst.String()+" handled", func() bool {
			return r.p.frameCount()+int(r.counters().RxDropFiltered) == before+1
		})
		fs := r.p.allFrames()
		if len(fs) > 0 && bytes.Equal(fs[len(fs)-1], f) {
			return true
		}
		return false
	}

	if step(ourMAC) || step(bcastMAC) {
		t.Fatal("a frame was indicated before any packet filter was set")
	}
	if q, st := r.query(ndisshim.OIDGenCurrentPacketFilter, 4); st != ndisshim.StatusSuccess || q.AnswerUint32() != 0 {
		t.Fatalf("initial packet filter = %#x (%v), want 0", q.AnswerUint32(), st)
	}

	const (
		dir   = ndisshim.PacketTypeDirected
		mc    = ndisshim.PacketTypeMulticast
		allMC = ndisshim.PacketTypeAllMulticast
		bc    = ndisshim.PacketTypeBroadcast
		promi = ndisshim.PacketTypePromiscuous
	)
	cases := []struct {
		name   string
		filter uint32
		mcList []net.HardwareAddr
		dst    net.HardwareAddr
		want   bool
	}{
		{"directed: to us", dir, nil, ourMAC, true},
		{"directed: other unicast", dir, nil, otherMAC, false},
		{"directed: broadcast", dir, nil, bcastMAC, false},
		{"directed: multicast", dir, nil, mcastA, false},
		{"broadcast: broadcast", dir | bc, nil, bcastMAC, true},
		{"broadcast: other unicast", dir | bc, nil, otherMAC, false},
		{"multicast: listed", mc, []net.HardwareAddr{mcastA}, mcastA, true},
		{"multicast: not listed", mc, []net.HardwareAddr{mcastA}, mcastB, false},
		{"multicast: to us without directed", mc, []net.HardwareAddr{mcastA}, ourMAC, false},
		{"multicast: broadcast without broadcast bit", mc, []net.HardwareAddr{mcastA}, bcastMAC, false},
		{"list without multicast bit", dir, []net.HardwareAddr{mcastA}, mcastA, false},
		{"all-multicast: not listed", allMC, nil, mcastB, true},
		{"all-multicast: listed", allMC, []net.HardwareAddr{mcastA}, mcastA, true},
		{"all-multicast: broadcast is not multicast", allMC, nil, bcastMAC, false},
		{"all-multicast: other unicast", allMC, nil, otherMAC, false},
		{"promiscuous: other unicast", promi, nil, otherMAC, true},
		{"promiscuous: unlisted multicast", promi, nil, mcastB, true},
		{"promiscuous: broadcast", promi, nil, bcastMAC, true},
		{"promiscuous: to us", promi, nil, ourMAC, true},
		{"none again: to us", 0, nil, ourMAC, false},
	}
	for _, c := range cases {
		r.setMulticast(c.mcList...)
		r.setFilter(c.filter)
		if got := step(c.dst); got != c.want {
			t.Errorf("%s (filter %#x, dst %s): accepted = %v, want %v", c.name, c.filter, c.dst, got, c.want)
		}
	}
	r.halt()
}

// Runts (< 14 bytes) and oversize frames (> MTU+18) are counted and
// dropped; good traffic around them, up to exactly MTU+18, goes on.
func TestReceiveRuntAndOversize(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.restart()
	r.setFilter(ndisshim.PacketTypeDirected)

	good := [][]byte{
		frame(ourMAC, 14, 1),            // a bare header is not a runt
		frame(ourMAC, 200, 2),           //
		frame(ourMAC, testMTU+18, 3),    // the largest frame: MTU + header + VLAN tag
		frame(ourMAC, 60, 4),            //
		frame(ourMAC, testMTU+14, 5),    //
		frame(ourMAC, testMTU/2, 6),     //
		frame(ourMAC, 64, 7),            //
		frame(ourMAC, testMTU+18-1, 8),  //
		frame(ourMAC, 100, 9),           //
		frame(ourMAC, 15, 10),           //
		frame(ourMAC, testMTU+18-2, 11), //
	}
	bad := []struct {
		f        []byte
		oversize bool
	}{
		{frame(ourMAC, 1, 20), false},
		{frame(ourMAC, 13, 21), false},
		{frame(ourMAC, testMTU+19, 22), true},
		{frame(ourMAC, 4000, 23), true}, // longer than the receive buffer: dropped by tapdev (RxOversize), counted as oversize
		{frame(ourMAC, 6, 24), false},
	}
	// Interleave: good, bad, good, bad, ...
	for i, g := range good {
		r.wire(g)
		if i < len(bad) {
			r.wire(bad[i].f)
		}
	}
	shimtest.WaitFor(t, "good frames indicated and bad ones counted", func() bool {
		c := r.counters()
		return r.p.frameCount() == len(good) && c.RxDropRunt+c.RxDropOversize == int64(len(bad))
	})
	shimtest.EqualFrames(t, "good frames", r.p.allFrames(), good)
	c := r.counters()
	if c.RxDropRunt != 3 || c.RxDropOversize != 2 {
		t.Errorf("RxDropRunt = %d, RxDropOversize = %d; want 3 and 2", c.RxDropRunt, c.RxDropOversize)
	}
	if c.RxFrames != int64(len(good)) {
		t.Errorf("RxFrames = %d, want %d", c.RxFrames, len(good))
	}
	if c.PoolInUse != 0 {
		t.Errorf("PoolInUse = %d: a dropped frame's block was not recycled", c.PoolInUse)
	}
	r.halt()
}

// When the pool runs low the miniport indicates with RESOURCES: the
// protocol must copy, the blocks are recycled when the call returns, and
// MiniportReturnNetBufferLists is never called for them.
func TestReceiveResourcesWhenPoolLow(t *testing.T) {
	// 8 blocks, low water 4, one frame per DPC round: while the protocol
	// holds h blocks a frame leaves 8-h-1 free, so frames 1..3 go up
	// normally and every one after them with RESOURCES.
	r := newRig(t, rigOptions{hold: true, cfg: func(c *Config) {
		c.RxBuffers, c.LowWater, c.Batch = 8, 4, 1
	}})
	r.restart()
	r.setFilter(ndisshim.PacketTypeDirected)

	var want [][]byte
	for i := 0; i < 6; i++ {
		want = append(want, frame(ourMAC, 80+i, i))
	}
	r.wire(want...)
	shimtest.WaitFor(t, "6 frames indicated", func() bool { return r.p.frameCount() == 6 })
	shimtest.EqualFrames(t, "frames (copied during the indication)", r.p.allFrames(), want)

	inds := r.p.indications()
	if len(inds) != 6 {
		t.Fatalf("%d indications with Batch 1, want 6", len(inds))
	}
	for i, ind := range inds {
		if got, wantRes := ind.flags.Has(ndisshim.ReceiveFlagResources), i >= 3; got != wantRes {
			t.Errorf("indication %d: RESOURCES = %v, want %v (protocol holds %d of 8, low water 4)", i, got, wantRes, min(i, 3))
		}
	}
	c := r.counters()
	if c.ResourcesIndications != 3 || c.Indications != 6 {
		t.Errorf("ResourcesIndications = %d of %d indications, want 3 of 6", c.ResourcesIndications, c.Indications)
	}
	if c.PoolInUse != 3 || r.p.heldCount() != 3 || r.a.Stats().HeldNow != 3 {
		t.Errorf("PoolInUse = %d, protocol holds %d, shim says %d held; want 3 each", c.PoolInUse, r.p.heldCount(), r.a.Stats().HeldNow)
	}
	ps := r.mp.pool.Stats()
	if ps.Returned != 0 {
		t.Errorf("pool saw %d returns: the return handler ran for RESOURCES NBLs", ps.Returned)
	}
	if ps.Recycled < 3 {
		t.Errorf("pool recycled %d blocks, want at least the 3 RESOURCES ones", ps.Recycled)
	}

	// The three held come back through the return handler, and with the
	// pool full again the next frame goes up normally.
	r.p.returnHeld(r.b, 3)
	if ps := r.mp.pool.Stats(); ps.Returned != 3 {
		t.Errorf("pool saw %d returns after the protocol returned 3", ps.Returned)
	}
	r.wire(frame(ourMAC, 99, 99))
	shimtest.WaitFor(t, "7th frame", func() bool { return r.p.frameCount() == 7 })
	if inds := r.p.indications(); inds[6].flags.Has(ndisshim.ReceiveFlagResources) {
		t.Error("indication with RESOURCES although the pool is full again")
	}
	r.p.returnHeld(r.b, 1)
	if f := r.mp.pool.Stats().DoubleReturns; f != 0 {
		t.Errorf("%d double returns in the pool", f)
	}
	r.halt()
}

// With no free receive block the DPC takes the frame off the wire, counts
// RxDropNoBuffer and goes on: it never blocks on the stack. (With the
// RESOURCES rule a protocol cannot hold the last blocks, so the test takes
// them itself: the pool allows several takers.)
func TestReceivePoolExhaustion(t *testing.T) {
	r := newRig(t, rigOptions{cfg: func(c *Config) { c.RxBuffers = 16 }})
	r.restart()
	r.setFilter(ndisshim.PacketTypeDirected)

	blocks := make([]*ndisshim.NetBufferList, 16)
	if k := r.mp.pool.Get(blocks); k != 16 {
		t.Fatalf("took %d of 16 blocks", k)
	}
	for i := 0; i < 5; i++ {
		r.wire(frame(ourMAC, 100, i))
	}
	shimtest.WaitFor(t, "5 drops for no buffer", func() bool { return r.counters().RxDropNoBuffer == 5 })
	if n := r.p.frameCount(); n != 0 {
		t.Errorf("%d frames indicated without a buffer", n)
	}
	if c := r.counters(); c.PoolExhaustions == 0 {
		t.Error("PoolExhaustions = 0 after the pool ran dry")
	}
	if q, st := r.query(ndisshim.OIDGenRcvNoBuffer, 8); st != ndisshim.StatusSuccess || q.AnswerUint64() != 5 {
		t.Errorf("OID_GEN_RCV_NO_BUFFER = %d (%v), want 5", q.AnswerUint64(), st)
	}

	r.mp.pool.Recycle(ndisshim.Chain(blocks...))
	f := frame(ourMAC, 100, 42)
	r.wire(f)
	shimtest.WaitFor(t, "traffic after the pool refilled", func() bool { return r.p.frameCount() == 1 })
	shimtest.EqualFrames(t, "after refill", r.p.allFrames(), [][]byte{f})
	r.halt()
}

// Frames that arrive while the adapter is Paused are dropped and counted,
// never indicated.
func TestReceiveWhilePausedDropped(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.setFilter(ndisshim.PacketTypeDirected)
	r.wire(frame(ourMAC, 100, 1), frame(ourMAC, 100, 2))
	shimtest.WaitFor(t, "2 not-ready drops", func() bool { return r.counters().RxDropNotReady == 2 })
	if n := r.p.frameCount(); n != 0 {
		t.Fatalf("%d frames indicated while Paused", n)
	}
	r.restart()
	f := frame(ourMAC, 100, 3)
	r.wire(f)
	shimtest.WaitFor(t, "frame after restart", func() bool { return r.p.frameCount() == 1 })
	shimtest.EqualFrames(t, "after restart", r.p.allFrames(), [][]byte{f})
	r.halt()
}
