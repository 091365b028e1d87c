package hoststack

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
	"github.com/tapminiport/tapminiport/tapdev"
)

// tcp4Frame is an Ethernet/IPv4/TCP frame with payload bytes, its TCP
// checksum left partial (the pseudo-header sum, as the kernel leaves it
// for CHECKSUM_PARTIAL).
func tcp4Frame(dst, src [4]byte, seq uint32, payload []byte) []byte {
	f := make([]byte, 14+20+20+len(payload))
	copy(f, nicMAC)
	copy(f[6:], wireMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], uint16(20+20+len(payload)))
	binary.BigEndian.PutUint16(ip[4:], 7)
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum(ip, 0)))
	tcp := f[34:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5201)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12], tcp[13] = 5<<4, 0x18 // PSH|ACK
	binary.BigEndian.PutUint16(tcp[14:], 512)
	copy(tcp[20:], payload)
	binary.BigEndian.PutUint16(tcp[16:], fold(pseudo4(ip, len(tcp))))
	return f
}

func pseudo4(ip []byte, l4len int) uint64 {
	acc := sum(ip[12:20], 0)
	return acc + uint64(ip[9]) + uint64(l4len)
}

func sum(b []byte, acc uint64) uint64 {
	for i := 0; i+1 < len(b); i += 2 {
		acc += uint64(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		acc += uint64(b[len(b)-1]) << 8
	}
	return acc
}

func fold(acc uint64) uint16 {
	for acc > 0xffff {
		acc = acc>>16 + acc&0xffff
	}
	return uint16(acc)
}

// checkTCP4 checks a segment's IPv4 header checksum and full TCP checksum
// and returns its sequence number and payload.
func checkTCP4(t *testing.T, f []byte) (uint32, []byte) {
	t.Helper()
	if len(f) < 54 || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
		t.Fatalf("segment of %d bytes is not IPv4", len(f))
	}
	ip := f[14:34]
	if int(binary.BigEndian.Uint16(ip[2:])) != len(f)-14 {
		t.Fatalf("IP total length %d, frame carries %d", binary.BigEndian.Uint16(ip[2:]), len(f)-14)
	}
	if fold(sum(ip, 0)) != 0xffff {
		t.Fatal("IPv4 header checksum does not verify")
	}
	tcp := f[34:]
	if fold(sum(tcp, pseudo4(ip, len(tcp)))) != 0xffff {
		t.Fatal("TCP checksum does not verify")
	}
	return binary.BigEndian.Uint32(tcp[4:]), tcp[20:]
}

// joinSegments checks every segment (checksums, consecutive sequence
// numbers from seq, at most the MTU) and returns their payloads joined.
func joinSegments(t *testing.T, segs [][]byte, seq uint32) []byte {
	t.Helper()
	var got []byte
	for i, f := range segs {
		if len(f) > 14+testMTU {
			t.Fatalf("segment %d is %d bytes, over the MTU", i, len(f))
		}
		s, p := checkTCP4(t, f)
		if s != seq+uint32(len(got)) {
			t.Fatalf("segment %d seq %d, want %d", i, s, seq+uint32(len(got)))
		}
		got = append(got, p...)
	}
	return got
}

func payloadOf(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + i/251)
	}
	return p
}

var lso = ndisshim.NBLInfo{
	Checksum: ndisshim.ChecksumInfo{NeedsChecksum: true, CsumStart: 34, CsumOffset: 16},
	LSO:      ndisshim.LSOInfo{MSS: 1000, HeaderLen: 54},
}

// A plain NIC TAP takes neither large frames nor partial checksums: a
// large receive the miniport indicates reaches the host as MSS-sized
// segments with every checksum right, and a frame with a partial checksum
// arrives finished.
func TestSoftwareOffloadToHost(t *testing.T) {
	nic := &fakeNIC{info: lso}
	r := newRigNIC(t, Config{}, nic)
	r.restart()
	a, b := [4]byte{198, 18, 0, 2}, [4]byte{198, 18, 0, 1}
	payload := payloadOf(20500)
	r.nic.indicate(t, 0, tcp4Frame(b, a, 1000, payload))
	if got := joinSegments(t, r.hostReadN(21), 1000); !bytes.Equal(got, payload) {
		t.Fatal("the segments' payloads differ from the large receive's")
	}
	nic.info = ndisshim.NBLInfo{Checksum: lso.Checksum}
	r.nic.indicate(t, 0, tcp4Frame(b, a, 5, payloadOf(333)))
	one := r.hostReadN(1)[0]
	if _, p := checkTCP4(t, one); !bytes.Equal(p, payloadOf(333)) {
		t.Fatal("checksummed frame's payload changed")
	}
	c := r.s.Counters()
	if c.SegmentedToHost != 1 || c.ChecksummedToHost != 1 || c.ToHostFrames != 22 || c.DropSegment != 0 {
		t.Errorf("counters %+v: want 1 segmented, 1 checksummed, 22 frames written, 0 dropped", c)
	}
	// The kernel's header length is only a hint (skb_headlen on a
	// forwarding path): a wrong one still cuts right.
	nic.info = lso
	nic.info.LSO.HeaderLen = 1514
	r.nic.indicate(t, 0, tcp4Frame(b, a, 1, payloadOf(3000)))
	if again := joinSegments(t, r.hostReadN(3), 1); !bytes.Equal(again, payloadOf(3000)) {
		t.Fatal("segments cut with a wrong header-length hint differ from the large receive")
	}
	// A large receive that is not TCP at all is dropped and counted, not
	// written.
	r.nic.indicate(t, 0, shimtest.Frame(nicMAC, wireMAC, 3000, 9))
	shimtest.WaitFor(t, "the bad large receive counted", func() bool { return r.s.Counters().DropSegment == 1 })
	if got := r.hostRead(4); len(got) != 0 {
		t.Errorf("a malformed large receive wrote %d frames to the host", len(got))
	}
}

// With offloads on the NIC TAP, a large send from the host goes down as it
// is when the miniport offers LSO, and is cut into checksummed segments
// (no out-of-band information left) when it does not.
func TestSoftwareOffloadToWire(t *testing.T) {
	a, b := [4]byte{198, 18, 0, 1}, [4]byte{198, 18, 0, 2}
	payload := payloadOf(9000)
	hdr := tapdev.VnetHdrFromNBLInfo(lso)
	vnetFrame := func() []byte {
		out := make([]byte, tapdev.VnetHdrLen)
		hdr.Encode(out)
		return append(out, tcp4Frame(b, a, 77, payload)...)
	}
	for _, tc := range []struct {
		name string
		caps ndisshim.OffloadCaps
		want int // NBLs sent
	}{
		{"miniport offers LSO", ndisshim.OffloadCaps{Checksum: 1, LSOv2IPv4: 65535, LSOv2IPv6: 65535, MinSegmentCount: 2}, 1},
		{"miniport offers nothing", ndisshim.OffloadCaps{}, 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			caps := tc.caps
			r := newRigNIC(t, Config{VnetHdr: true}, &fakeNIC{caps: &caps})
			r.restart()
			r.hostSend(vnetFrame())
			shimtest.WaitFor(t, "the send", func() bool { r.nic.mu.Lock(); defer r.nic.mu.Unlock(); return len(r.nic.sendInfos) >= tc.want })
			r.nic.mu.Lock()
			var frames [][]byte
			for _, s := range r.nic.sends {
				frames = append(frames, s...)
			}
			infos := append([]ndisshim.NBLInfo(nil), r.nic.sendInfos...)
			r.nic.mu.Unlock()
			if len(frames) != tc.want {
				t.Fatalf("%d NBLs sent, want %d", len(frames), tc.want)
			}
			c := r.s.Counters()
			if tc.want == 1 {
				if infos[0].LSO.MSS != 1000 || !infos[0].Checksum.NeedsChecksum {
					t.Errorf("large send went down with info %+v, want LSO MSS 1000 and a checksum request", infos[0])
				}
				if c.SegmentedToWire != 0 {
					t.Errorf("segmented %d in software though the miniport offers LSO", c.SegmentedToWire)
				}
				return
			}
			for i := range frames {
				if infos[i] != (ndisshim.NBLInfo{}) {
					t.Errorf("segment %d carries info %+v, want none", i, infos[i])
				}
			}
			if got := joinSegments(t, frames, 77); !bytes.Equal(got, payload) {
				t.Error("segments' payloads differ from the large send's")
			}
			if c.SegmentedToWire != 1 || c.ToWireFrames != 9 {
				t.Errorf("counters %+v: want 1 segmented, 9 frames to the wire", c)
			}
		})
	}
}

// A tiny MSS (Linux's smallest, 48 bytes, net.ipv4.tcp_min_snd_mss) makes
// 1334 segments of a 64000-byte large frame: more than the 1024 segments
// the binding builds at once and more than its 512 send NBLs. Both ways
// the frame is cut in parts, and every segment arrives, in order, with its
// checksums right. (It was dropped as a segmentation failure: such a flow
// stalled.)
func TestSoftwareOffloadTinyMSS(t *testing.T) {
	a, b := [4]byte{198, 18, 0, 1}, [4]byte{198, 18, 0, 2}
	payload := payloadOf(64000)
	tiny := lso
	tiny.LSO.MSS = 48
	const want = (64000 + 47) / 48
	t.Run("to the wire", func(t *testing.T) {
		r := newRigNIC(t, Config{VnetHdr: true}, &fakeNIC{caps: &ndisshim.OffloadCaps{}})
		r.restart()
		f := make([]byte, tapdev.VnetHdrLen)
		tapdev.VnetHdrFromNBLInfo(tiny).Encode(f)
		r.hostSend(append(f, tcp4Frame(b, a, 77, payload)...))
		frames := func() [][]byte {
			r.nic.mu.Lock()
			defer r.nic.mu.Unlock()
			var out [][]byte
			for _, s := range r.nic.sends {
				out = append(out, s...)
			}
			return out
		}
		shimtest.WaitFor(t, "the segments sent", func() bool {
			c := r.s.Counters()
			return len(frames()) >= want || c.DropSegment+c.DropNoSendBuffer > 0
		})
		got := frames()
		if c := r.s.Counters(); len(got) != want || c.SegmentedToWire != 1 || c.DropSegment != 0 || c.DropNoSendBuffer != 0 {
			t.Fatalf("%d segments sent, counters %+v; want %d, 1 segmented, nothing dropped", len(got), c, want)
		}
		if j := joinSegments(t, got, 77); !bytes.Equal(j, payload) {
			t.Error("the segments' payloads differ from the large send's")
		}
	})
	t.Run("to the host", func(t *testing.T) {
		nic := &fakeNIC{info: tiny}
		r := newRigNIC(t, Config{}, nic)
		r.dev.sinkMu.Lock()
		r.dev.sinkOn = true // 1334 frames at once: more than a socketpair holds
		r.dev.sinkMu.Unlock()
		r.restart()
		r.nic.indicate(t, 0, tcp4Frame(a, b, 1000, payload))
		shimtest.WaitFor(t, "the segments written", func() bool {
			return len(r.dev.sinkFrames()) >= want || r.s.Counters().DropSegment > 0
		})
		got := r.dev.sinkFrames()
		if c := r.s.Counters(); len(got) != want || c.SegmentedToHost != 1 || c.DropSegment != 0 || c.ToHostFrames != want {
			t.Fatalf("%d segments written, counters %+v; want %d, 1 segmented, nothing dropped", len(got), c, want)
		}
		if j := joinSegments(t, got, 1000); !bytes.Equal(j, payload) {
			t.Error("the segments' payloads differ from the large receive's")
		}
	})
}

// TestSoftwareOffloadPoolRunsDry: a large send cut into more segments than
// the send pool holds while the miniport keeps every send (none completes):
// the first segments go, the rest are lost to the empty pool, and the frame
// counts as dropped for want of a send buffer, not as segmented. It used to
// count as both.
func TestSoftwareOffloadPoolRunsDry(t *testing.T) {
	a, b := [4]byte{198, 18, 0, 1}, [4]byte{198, 18, 0, 2}
	tiny := lso
	tiny.LSO.MSS = 48
	const pool = 64
	nic := &fakeNIC{caps: &ndisshim.OffloadCaps{}, holdSends: true}
	r := newRigNIC(t, Config{VnetHdr: true, SendNBLs: pool}, nic)
	t.Cleanup(nic.releaseSends) // before the rig's cleanup pauses
	r.restart()
	f := make([]byte, tapdev.VnetHdrLen)
	tapdev.VnetHdrFromNBLInfo(tiny).Encode(f)
	r.hostSend(append(f, tcp4Frame(b, a, 77, payloadOf(64000))...))
	shimtest.WaitFor(t, "the pool to run dry", func() bool { return r.s.Counters().DropNoSendBuffer > 0 })
	nic.mu.Lock()
	sent := 0
	for _, s := range nic.sends {
		sent += len(s)
	}
	nic.mu.Unlock()
	// One of the pool's NBLs holds the large send itself.
	if c := r.s.Counters(); sent != pool-1 || c.DropNoSendBuffer != 1 || c.SegmentedToWire != 0 || c.DropSegment != 0 {
		t.Errorf("%d segments sent, counters %+v; want %d sent, 1 dropped for no send buffer, none segmented", sent, c, pool-1)
	}
}

// udp4Frame is an Ethernet/IPv4/UDP datagram with a full checksum.
func udp4Frame(src, dst [4]byte, sport uint16, payload []byte) []byte {
	f := make([]byte, 14+20+8+len(payload))
	copy(f, wireMAC)
	copy(f[6:], nicMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(len(f)-14))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum(ip, 0)))
	udp := f[34:]
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], 5201)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	binary.BigEndian.PutUint16(udp[6:], ^fold(sum(udp, pseudo4(ip, len(udp)))))
	return f
}

// With USO offered, consecutive same-size datagrams of one flow go down as
// one USO send that cuts back into exactly those datagrams (checksums
// right); another flow, a longer datagram, or a miniport without USO
// starts a new send.
func TestCoalesceUDP(t *testing.T) {
	a, b := [4]byte{198, 18, 0, 1}, [4]byte{198, 18, 0, 2}
	var host [][]byte
	for i := 0; i < 10; i++ {
		host = append(host, udp4Frame(a, b, 40000, payloadOf(64 + i)[i:])) // 64-byte payloads, different bytes
	}
	host = append(host, udp4Frame(a, b, 40000, payloadOf(20)))  // shorter: rides last
	host = append(host, udp4Frame(a, b, 40000, payloadOf(64)))  // after a short one: new send
	host = append(host, udp4Frame(a, b, 40001, payloadOf(64)))  // another flow: new send
	host = append(host, udp4Frame(a, b, 40001, payloadOf(100))) // longer: new send
	for _, tc := range []struct {
		name  string
		caps  ndisshim.OffloadCaps
		sends int
	}{
		{"USO offered", ndisshim.OffloadCaps{Checksum: 1, LSOv2IPv4: 65535, USOIPv4: 65535, USOIPv6: 65535}, 4},
		{"no USO", ndisshim.OffloadCaps{Checksum: 1, LSOv2IPv4: 65535}, len(host)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			caps := tc.caps
			r := newRigNIC(t, Config{CoalesceUDP: true, Batch: 64}, &fakeNIC{caps: &caps})
			r.restart()
			// Hold the reader so that all datagrams are read in one batch.
			parked := r.dev.reads.Close()
			r.hostSend(host...)
			<-parked
			r.dev.reads.Open()
			var frames [][]byte
			var infos []ndisshim.NBLInfo
			shimtest.WaitFor(t, "sends", func() bool {
				r.nic.mu.Lock()
				defer r.nic.mu.Unlock()
				frames, infos = nil, append([]ndisshim.NBLInfo(nil), r.nic.sendInfos...)
				for _, s := range r.nic.sends {
					frames = append(frames, s...)
				}
				return len(frames) >= tc.sends
			})
			if len(frames) != tc.sends {
				t.Fatalf("%d NBLs sent, want %d", len(frames), tc.sends)
			}
			// Cut every send as the wire's kernel would; the datagrams
			// must come back as the host sent them.
			var back [][]byte
			for i, f := range frames {
				if infos[i].LSO.MSS == 0 {
					back = append(back, f)
					continue
				}
				// The kernel seeds each segment's checksum with the partial
				// (pseudo-header, full UDP length) sum left in the field.
				udp := f[34:]
				if got, want := binary.BigEndian.Uint16(udp[6:]), fold(pseudo4(f[14:34], len(udp))); got != want ||
					int(binary.BigEndian.Uint16(udp[4:])) != len(udp) || fold(sum(f[14:34], 0)) != 0xffff {
					t.Fatalf("send %d: UDP check %#x (want partial %#x), UDP length %d of %d, or IPv4 header checksum wrong",
						i, got, want, binary.BigEndian.Uint16(udp[4:]), len(udp))
				}
				h := tapdev.VnetHdrFromNBLInfo(infos[i])
				out := make([][]byte, tapdev.SegmentCount(len(f), h))
				for j := range out {
					out[j] = make([]byte, 0, int(h.HdrLen)+int(h.GSOSize))
				}
				n, err := tapdev.GSOSplit(f, h, out, make([]int, len(out)))
				if err != nil {
					t.Fatalf("send %d does not cut: %v (info %+v)", i, err, infos[i])
				}
				for j := 0; j < n; j++ {
					back = append(back, out[j][:cap(out[j])][:len(host[len(back)])])
				}
			}
			if len(back) != len(host) {
				t.Fatalf("%d datagrams after cutting, want %d", len(back), len(host))
			}
			for i := range host {
				udp := back[i][34:]
				if fold(sum(udp, pseudo4(back[i][14:34], len(udp)))) != 0xffff {
					t.Errorf("datagram %d: UDP checksum does not verify", i)
				}
				if !bytes.Equal(udp[8:], host[i][42:]) || !bytes.Equal(udp[:4], host[i][34:38]) {
					t.Errorf("datagram %d differs from the host's", i)
				}
			}
			if c := r.s.Counters(); c.ToWireFrames != int64(len(host)) {
				t.Errorf("to-wire frames %d, want %d (every datagram)", c.ToWireFrames, len(host))
			}
		})
	}
}

// With two NIC queues every NBL of an indication is written on the queue
// its RSS hash names, in the chain's order on each queue, even when the
// flows are interleaved in one chain.
func TestQueuesWriterPerFlow(t *testing.T) {
	nic2, host2, err := tapdev.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host2.Close() })
	nic := &fakeNIC{hashes: []uint32{4, 7, 7, 2, 9, 6}} // queues 0 1 1 0 1 0
	r := newRigNIC(t, Config{Queues: 2, Open: func(string, int) (Device, bool, error) { return nic2, false, nil }}, nic)
	r.restart()
	var frames [][]byte
	for i := range nic.hashes {
		frames = append(frames, shimtest.Frame(nicMAC, wireMAC, 100, i))
	}
	r.nic.indicate(t, 0, frames...)
	shimtest.EqualFrames(t, "queue 0", r.hostReadN(3), [][]byte{frames[0], frames[3], frames[5]})
	bufs, sizes := [][]byte{make([]byte, 2048), make([]byte, 2048), make([]byte, 2048)}, make([]int, 3)
	var got [][]byte
	shimtest.WaitFor(t, "queue 1's frames", func() bool {
		k, err := host2.ReadBatch(bufs[:3-len(got)], sizes)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < k; i++ {
			got = append(got, bytes.Clone(bufs[i][:sizes[i]]))
		}
		return len(got) == 3
	})
	shimtest.EqualFrames(t, "queue 1", got, [][]byte{frames[1], frames[2], frames[4]})
}

// A USO send over IPv6 goes down whole to a miniport that offers USO for
// IPv6 only: the stack reads the IP version from the frame. (The
// virtio-net header says only "UDP L4", and it was taken for IPv4: such a
// miniport got it cut in software, one NBL per datagram.)
func TestUSOOverIPv6ToMiniportWithUSO6Only(t *testing.T) {
	caps := ndisshim.OffloadCaps{Checksum: 1, USOIPv6: 65535, MinSegmentCount: 2}
	r := newRigNIC(t, Config{VnetHdr: true, CoalesceUDP: false}, &fakeNIC{caps: &caps})
	r.restart()
	payload := payloadOf(3000)
	f := make([]byte, 14+40+8+len(payload))
	copy(f, wireMAC)
	copy(f[6:], nicMAC)
	binary.BigEndian.PutUint16(f[12:], 0x86dd)
	ip := f[14:54]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(8+len(payload)))
	ip[6], ip[7] = 17, 64
	ip[8], ip[23] = 0x20, 1 // 2001:2::1 → 2001:2::2
	ip[9], ip[11] = 0x01, 0x02
	ip[24], ip[25], ip[27], ip[39] = 0x20, 0x01, 0x02, 2
	udp := f[54:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 5201)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(udp[8:], payload)
	h := tapdev.VnetHdr{Flags: tapdev.VnetFlagNeedsCsum, GSOType: tapdev.VnetGSOUDPL4, HdrLen: 62, GSOSize: 1000, CsumStart: 54, CsumOffset: 6}
	vh := make([]byte, tapdev.VnetHdrLen)
	h.Encode(vh)
	r.hostSend(append(vh, f...))
	shimtest.WaitFor(t, "the send", func() bool { r.nic.mu.Lock(); defer r.nic.mu.Unlock(); return len(r.nic.sendInfos) >= 1 })
	r.nic.mu.Lock()
	infos := append([]ndisshim.NBLInfo(nil), r.nic.sendInfos...)
	r.nic.mu.Unlock()
	if c := r.s.Counters(); len(infos) != 1 || !infos[0].LSO.UDP || !infos[0].LSO.IPv6 || infos[0].LSO.MSS != 1000 || c.SegmentedToWire != 0 {
		t.Errorf("%d NBLs sent (first %+v), segmented in software %d; want one USO send marked IPv6, none cut", len(infos), infos[0].LSO, c.SegmentedToWire)
	}
}

// An empty frame that asks for a checksum is dropped and counted, not cut:
// cutting it in parts divided by its length (0) and took the DPC down.
func TestEmptyFrameNeedingChecksumDropped(t *testing.T) {
	nic := &fakeNIC{info: ndisshim.NBLInfo{Checksum: lso.Checksum}}
	r := newRigNIC(t, Config{}, nic)
	r.restart()
	r.nic.indicate(t, 0, []byte{})
	shimtest.WaitFor(t, "the empty frame counted", func() bool { return r.s.Counters().DropSegment == 1 })
	if got := r.hostRead(4); len(got) != 0 {
		t.Errorf("an empty frame wrote %d frames to the host", len(got))
	}
}
