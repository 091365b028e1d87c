package adapter

import (
	"encoding/binary"
	"net"
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
	"github.com/tapminiport/tapminiport/tapdev"
)

// udpFrame is an Ethernet/IPv4/UDP frame from src:sport to dst:dport.
func udpFrame(dstMAC net.HardwareAddr, src, dst [4]byte, sport, dport uint16) []byte {
	f := make([]byte, 14+20+8+16)
	copy(f, dstMAC)
	copy(f[6:], peerMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(len(f)-14))
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	binary.BigEndian.PutUint16(ip[20:], sport)
	binary.BigEndian.PutUint16(ip[22:], dport)
	binary.BigEndian.PutUint16(ip[24:], 24)
	return f
}

// udp6Frame is an Ethernet/IPv6/UDP frame.
func udp6Frame(src, dst [16]byte, sport, dport uint16) []byte {
	f := make([]byte, 14+40+8)
	copy(f, ourMAC)
	copy(f[6:], peerMAC)
	binary.BigEndian.PutUint16(f[12:], 0x86dd)
	ip := f[14:]
	ip[0], ip[6], ip[7] = 0x60, 17, 64
	binary.BigEndian.PutUint16(ip[4:], 8)
	copy(ip[8:], src[:])
	copy(ip[24:], dst[:])
	binary.BigEndian.PutUint16(ip[40:], sport)
	binary.BigEndian.PutUint16(ip[42:], dport)
	return f
}

// The flow hash is the same both ways (a reply lands on its request's
// queue), differs between flows, and reads anything without panicking.
func TestFlowHash(t *testing.T) {
	a, b := [4]byte{198, 18, 0, 1}, [4]byte{198, 18, 0, 2}
	for port := uint16(1000); port < 1100; port++ {
		there, back := flowHash(udpFrame(ourMAC, a, b, port, 5201)), flowHash(udpFrame(ourMAC, b, a, 5201, port))
		if there != back || there == 0 {
			t.Fatalf("port %d: hash there %#x, back %#x; want equal and non-zero", port, there, back)
		}
	}
	a6, b6 := [16]byte{0x20, 0x01, 0, 2, 15: 1}, [16]byte{0x20, 0x01, 0, 2, 15: 2}
	if there, back := flowHash(udp6Frame(a6, b6, 40000, 5201)), flowHash(udp6Frame(b6, a6, 5201, 40000)); there != back || there == 0 {
		t.Errorf("IPv6: hash there %#x, back %#x; want equal and non-zero", there, back)
	}
	// 100 flows over 2 queues: both get some.
	var perQueue [2]int
	for port := uint16(0); port < 100; port++ {
		perQueue[flowHash(udpFrame(ourMAC, a, b, 40000+port, 5201))%2]++
	}
	if perQueue[0] < 20 || perQueue[1] < 20 {
		t.Errorf("100 flows over 2 queues: %v; want a spread", perQueue)
	}
	f := udpFrame(ourMAC, a, b, 1, 2)
	for n := 0; n <= len(f); n++ {
		flowHash(f[:n]) // no panic on truncation
	}
	if h := flowHash(frame(ourMAC, 60, 1)); h != 0 {
		t.Errorf("non-IP frame hashed to %#x, want 0 (queue 0)", h)
	}
}

// newTwoQueueRig is a rig whose adapter has two queues: queue 0 on the
// rig's socketpair, queue 1 on a second one, whose miniport end wrap (if
// not nil) wraps. It returns the rig and queue 1's wire end.
func newTwoQueueRig(t *testing.T, wrap func(*tapdev.Dev) Device) (*rig, *tapdev.Dev) {
	t.Helper()
	hw2, peer2, err := tapdev.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer2.Close(); hw2.Close() })
	var dev2 Device = hw2
	if wrap != nil {
		dev2 = wrap(hw2)
	}
	r := newRig(t, rigOptions{cfg: func(c *Config) {
		c.Queues = 2
		open := c.Open
		c.Open = func(name string, q int) (Device, bool, error) {
			if q == 1 {
				return dev2, false, nil
			}
			return open(name, q)
		}
	}})
	return r, peer2
}

// With two queues each queue's fd is read by its own DPC, every frame is
// indicated with its flow's hash, sends leave on the queue of their flow
// (a flow on one queue only, both queues used), pause refuses sends on
// every queue, and halt closes every queue.
func TestQueues(t *testing.T) {
	r, peer2 := newTwoQueueRig(t, nil)
	r.setFilter(ndisshim.PacketTypeDirected)
	r.restart()
	a, b := [4]byte{198, 18, 0, 1}, [4]byte{198, 18, 0, 2}
	// receive: 20 frames on each queue
	var want0, want1 [][]byte
	for i := 0; i < 20; i++ {
		want0 = append(want0, udpFrame(ourMAC, a, b, uint16(1000+i), 5201))
		want1 = append(want1, udpFrame(ourMAC, a, b, uint16(2000+i), 5201))
	}
	r.wire(want0...)
	if n, err := peer2.WriteBatch(want1, nil); err != nil || n != len(want1) {
		t.Fatalf("peer2 wrote %d: %v", n, err)
	}
	shimtest.WaitFor(t, "40 frames indicated", func() bool { return r.p.frameCount() == 40 })
	for _, ind := range r.p.indications() {
		for i, f := range ind.frames {
			if ind.infos[i].HashValue != flowHash(f) {
				t.Fatalf("indicated hash %#x, want the flow's %#x", ind.infos[i].HashValue, flowHash(f))
			}
		}
	}
	qc := r.mp.QueueCounters()
	if len(qc) != 2 || qc[0].RxFrames != 20 || qc[1].RxFrames != 20 {
		t.Errorf("per-queue receive counters %+v, want 20 and 20", qc)
	}

	// send: 64 flows in one chain, twice
	var frames [][]byte
	queueOf := map[uint16]int{}
	for port := uint16(0); port < 64; port++ {
		frames = append(frames, udpFrame(peerMAC, b, a, 5201, 3000+port))
	}
	r.p.send(t, r.b, frames...)
	r.p.send(t, r.b, frames...)
	count := func(peer *tapdev.Dev, q int) int {
		bufs, sizes := [][]byte{make([]byte, 2048)}, []int{0}
		n := 0
		for {
			k, err := peer.ReadBatch(bufs, sizes)
			if err != nil {
				t.Fatalf("peer %d read: %v", q, err)
			}
			if k == 0 {
				return n
			}
			port := binary.BigEndian.Uint16(bufs[0][14+20+2:])
			if prev, ok := queueOf[port]; ok && prev != q {
				t.Errorf("flow to port %d left on queues %d and %d", port, prev, q)
			}
			queueOf[port] = q
			// the reply hashes to the queue its request arrived on
			if want := int(flowHash(bufs[0][:sizes[0]]) % 2); want != q {
				t.Errorf("flow to port %d left on queue %d, its hash says %d", port, q, want)
			}
			n++
		}
	}
	var n0, n1 int
	shimtest.WaitFor(t, "128 frames on the wires", func() bool {
		n0 += count(r.peer, 0)
		n1 += count(peer2, 1)
		return n0+n1 == 2*len(frames)
	})
	if n0 == 0 || n1 == 0 {
		t.Errorf("sends per queue %d and %d; want both queues used", n0, n1)
	}
	qc = r.mp.QueueCounters()
	if qc[0].TxFrames != int64(n0) || qc[1].TxFrames != int64(n1) {
		t.Errorf("per-queue send counters %+v, want %d and %d", qc, n0, n1)
	}

	r.pause()
	r.p.send(t, r.b, frames[:8]...)
	cs := r.p.completions()
	for _, st := range cs[len(cs)-1].statuses {
		if st != ndisshim.StatusPaused {
			t.Fatalf("send while paused completed %v, want PAUSED", cs[len(cs)-1].statuses)
		}
	}
	r.halt()
	if _, err := peer2.ReadBatch([][]byte{make([]byte, 64)}, []int{0}); !isGone(err) {
		t.Errorf("queue 1 after halt: read on its peer = %v, want device gone (closed)", err)
	}
}

// Config.Queues out of range is refused, naming the field.
func TestQueuesValidate(t *testing.T) {
	c := Config{HardwareName: "x", MTU: 1500, RxBuffers: 64, Batch: 16, Queues: MaxQueues + 1}
	if err := c.Validate(); err == nil {
		t.Fatal("17 queues accepted")
	}
}
