package tapdev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// gsoSpec describes a frame for gsoBuild.
type gsoSpec struct {
	vlan    bool
	v6      bool
	udp     bool
	payload int
	mss     int
	tcpOpts int   // bytes of TCP options, a multiple of 4
	ipOpts  int   // bytes of IPv4 options, a multiple of 4
	v6Ext   []int // IPv6 extension headers after the fixed header: 0 hop-by-hop, 60 destination options, 43 routing (each 16 bytes)
	flags   uint8 // TCP flags
	ecn     bool  // VnetGSOECN in the header
	seq     uint32
	id      uint16
}

// gsoSum16 is the plain RFC 1071 sum of b as 16-bit big-endian words,
// unfolded; the test's own arithmetic, independent of gsoSum.
func gsoSum16(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func gsoFold16(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// gsoPseudo is the unfolded pseudo-header sum for an L4 segment of l4Len
// bytes.
func gsoPseudo(src, dst []byte, proto uint8, l4Len int) uint32 {
	return gsoSum16(src) + gsoSum16(dst) + uint32(proto) + uint32(l4Len>>16) + uint32(l4Len&0xffff)
}

// gsoPayload returns n bytes of deterministic noise.
func gsoPayload(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// gsoBuild makes an Ethernet frame as the kernel hands it to a TAP with
// IFF_VNET_HDR: the L4 checksum field holds the folded pseudo-header sum
// (the whole L4 length), the header asks for GSO and NEEDS_CSUM. It returns
// the frame, its header, the payload and the offsets of the IP and L4
// headers.
func gsoBuild(s gsoSpec) (frame []byte, h VnetHdr, payload []byte, l3, l4 int) {
	payload = gsoPayload(s.payload, uint64(s.payload)*31+uint64(s.mss))
	l3 = 14
	if s.vlan {
		l3 = 18
	}
	ipHdr := 20 + s.ipOpts
	if s.v6 {
		ipHdr = 40 + 16*len(s.v6Ext)
	}
	l4 = l3 + ipHdr
	l4Hdr := 20 + s.tcpOpts
	if s.udp {
		l4Hdr = 8
	}
	hdrLen := l4 + l4Hdr
	frame = make([]byte, hdrLen+len(payload))
	copy(frame, []byte{0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1})
	et := 12
	if s.vlan {
		binary.BigEndian.PutUint16(frame[12:], 0x8100)
		binary.BigEndian.PutUint16(frame[14:], 0x2064) // PCP 1, VID 100
		et = 16
	}
	proto := uint8(6)
	if s.udp {
		proto = 17
	}
	ip := frame[l3:]
	var src, dst []byte
	if s.v6 {
		binary.BigEndian.PutUint16(frame[et:], 0x86dd)
		binary.BigEndian.PutUint32(ip, 6<<28|0x12<<20|0xabcde)
		binary.BigEndian.PutUint16(ip[4:], uint16(len(frame)-l3-40))
		ip[6], ip[7] = proto, 64
		if len(s.v6Ext) > 0 {
			ip[6] = byte(s.v6Ext[0])
		}
		for i, kind := range s.v6Ext {
			x := ip[40+16*i:]
			next := proto
			if i+1 < len(s.v6Ext) {
				next = byte(s.v6Ext[i+1])
			}
			x[0], x[1] = next, 1 // 16 bytes
			if kind == 43 {
				x[2], x[3] = 4, 0 // routing type 4 (segment routing), 0 segments left
			} else {
				x[2], x[3] = 1, 12 // PadN over the rest
			}
		}
		copy(ip[8:], []byte{0x20, 0x01, 0x0d, 0xb8, 15: 1})
		copy(ip[24:], []byte{0x20, 0x01, 0x0d, 0xb8, 15: 2})
		src, dst = ip[8:24], ip[24:40]
	} else {
		binary.BigEndian.PutUint16(frame[et:], 0x0800)
		ip[0] = 0x40 | byte(ipHdr/4)
		ip[1] = 0x02 // ECT(0)
		binary.BigEndian.PutUint16(ip[2:], uint16(len(frame)-l3))
		binary.BigEndian.PutUint16(ip[4:], s.id)
		binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
		ip[8], ip[9] = 64, proto
		copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
		for i := 20; i < ipHdr; i++ {
			ip[i] = 1 // NOP options
		}
		binary.BigEndian.PutUint16(ip[10:], ^gsoFold16(gsoSum16(ip[:ipHdr])))
		src, dst = ip[12:16], ip[16:20]
	}
	t := frame[l4:]
	binary.BigEndian.PutUint16(t, 40000)
	binary.BigEndian.PutUint16(t[2:], 443)
	csumOff := uint16(16)
	if s.udp {
		binary.BigEndian.PutUint16(t[4:], uint16(len(frame)-l4))
		csumOff = 6
	} else {
		binary.BigEndian.PutUint32(t[4:], s.seq)
		binary.BigEndian.PutUint32(t[8:], 0x01020304)
		t[12] = byte(l4Hdr/4) << 4
		t[13] = s.flags
		binary.BigEndian.PutUint16(t[14:], 502)
		for i := 20; i < l4Hdr; i++ {
			t[i] = 1 // NOP
		}
		if s.tcpOpts >= 12 {
			// NOP NOP timestamps, to be copied verbatim into every segment.
			copy(t[20:], []byte{1, 1, 8, 10, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x23, 0x45, 0x67})
		}
	}
	copy(frame[hdrLen:], payload)
	binary.BigEndian.PutUint16(frame[l4+int(csumOff):], gsoFold16(gsoPseudo(src, dst, proto, len(frame)-l4)))

	h = VnetHdr{Flags: VnetFlagNeedsCsum, HdrLen: uint16(hdrLen), GSOSize: uint16(s.mss), CsumStart: uint16(l4), CsumOffset: csumOff}
	switch {
	case s.udp:
		h.GSOType = VnetGSOUDPL4
	case s.v6:
		h.GSOType = VnetGSOTCPv6
	default:
		h.GSOType = VnetGSOTCPv4
	}
	if s.ecn {
		h.GSOType |= VnetGSOECN
	}
	return frame, h, payload, l3, l4
}

// gsoOut makes n output buffers of capacity size each.
func gsoOut(n, size int) ([][]byte, []int) {
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, 0, size)
	}
	sizes := make([]int, n)
	for i := range sizes {
		sizes[i] = -1
	}
	return out, sizes
}

// gsoVerifySums parses seg by hand and reports whether its IPv4 header
// checksum (if IPv4) and its TCP or UDP checksum, pseudo header included,
// verify: the sum over the checked bytes folds to 0xffff. It returns the
// offset of the payload too.
func gsoVerifySums(seg []byte) (ok bool, why string, payloadAt int) {
	if len(seg) < 14 {
		return false, "short", 0
	}
	l3, et := 14, binary.BigEndian.Uint16(seg[12:])
	if et == 0x8100 {
		l3, et = 18, binary.BigEndian.Uint16(seg[16:])
	}
	var src, dst []byte
	var proto uint8
	var l4 int
	switch et {
	case 0x0800:
		ihl := int(seg[l3]&15) * 4
		if gsoFold16(gsoSum16(seg[l3:l3+ihl])) != 0xffff {
			return false, "IPv4 header checksum", 0
		}
		if int(binary.BigEndian.Uint16(seg[l3+2:])) != len(seg)-l3 {
			return false, "IPv4 total length", 0
		}
		src, dst, proto, l4 = seg[l3+12:l3+16], seg[l3+16:l3+20], seg[l3+9], l3+ihl
	case 0x86dd:
		if int(binary.BigEndian.Uint16(seg[l3+4:])) != len(seg)-l3-40 {
			return false, "IPv6 payload length", 0
		}
		src, dst, proto, l4 = seg[l3+8:l3+24], seg[l3+24:l3+40], seg[l3+6], l3+40
		for proto == 0 || proto == 60 || proto == 43 {
			proto, l4 = seg[l4], l4+(int(seg[l4+1])+1)*8
		}
	default:
		return false, "ethertype", 0
	}
	switch proto {
	case 6:
		payloadAt = l4 + int(seg[l4+12]>>4)*4
	case 17:
		payloadAt = l4 + 8
		if int(binary.BigEndian.Uint16(seg[l4+4:])) != len(seg)-l4 {
			return false, "UDP length", 0
		}
		if binary.BigEndian.Uint16(seg[l4+6:]) == 0 {
			return false, "UDP checksum 0", 0
		}
	}
	if gsoFold16(gsoPseudo(src, dst, proto, len(seg)-l4)+gsoSum16(seg[l4:])) != 0xffff {
		return false, "L4 checksum", 0
	}
	return true, "", payloadAt
}

// gsoCheckSplit checks the n segments GSOSplit made of frame (built from s).
func gsoCheckSplit(t *testing.T, s gsoSpec, frame, payload []byte, l3, l4 int, out [][]byte, sizes []int, n int) {
	t.Helper()
	hdrLen := len(frame) - len(payload)
	var joined []byte
	for i := range n {
		seg := out[i][:sizes[i]]
		ok, why, at := gsoVerifySums(seg)
		if !ok {
			t.Fatalf("segment %d: %s does not verify", i, why)
		}
		if at != hdrLen {
			t.Fatalf("segment %d: payload at %d, want %d", i, at, hdrLen)
		}
		if i < n-1 && len(seg)-hdrLen != s.mss {
			t.Fatalf("segment %d: %d payload bytes, want %d", i, len(seg)-hdrLen, s.mss)
		}
		if !bytes.Equal(seg[:l3], frame[:l3]) {
			t.Fatalf("segment %d: Ethernet header changed", i)
		}
		joined = append(joined, seg[hdrLen:]...)

		p := gopacket.NewPacket(seg, layers.LayerTypeEthernet, gopacket.Default)
		if el := p.ErrorLayer(); el != nil {
			t.Fatalf("segment %d: gopacket: %v", i, el.Error())
		}
		var netLayer gopacket.NetworkLayer
		if s.v6 {
			ip6 := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
			if int(ip6.Length) != len(seg)-l3-40 || ip6.HopLimit != 64 || ip6.FlowLabel != 0xabcde {
				t.Fatalf("segment %d: IPv6 %+v", i, ip6)
			}
			netLayer = ip6
		} else {
			ip4 := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			if int(ip4.Length) != len(seg)-l3 || ip4.Id != s.id+uint16(i) || ip4.Flags != layers.IPv4DontFragment || ip4.TTL != 64 {
				t.Fatalf("segment %d: IPv4 length %d id %d flags %v, want %d, %d", i, ip4.Length, ip4.Id, ip4.Flags, len(seg)-l3, s.id+uint16(i))
			}
			if err, r := ip4.VerifyChecksum(); err != nil || !r.Valid {
				t.Fatalf("segment %d: gopacket IPv4 checksum %+v %v", i, r, err)
			}
			netLayer = ip4
		}
		if s.udp {
			u := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if int(u.Length) != len(seg)-l4 || u.SrcPort != 40000 || u.DstPort != 443 {
				t.Fatalf("segment %d: UDP %+v", i, u)
			}
			if err := u.SetNetworkLayerForChecksum(netLayer); err != nil {
				t.Fatal(err)
			}
			if err, r := u.VerifyChecksum(); err != nil || !r.Valid {
				t.Fatalf("segment %d: gopacket UDP checksum %+v %v", i, r, err)
			}
			continue
		}
		tc := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if want := s.seq + uint32(i)*uint32(s.mss); tc.Seq != want {
			t.Fatalf("segment %d: seq %d, want %d", i, tc.Seq, want)
		}
		last := i == n-1
		if tc.FIN != (last && s.flags&0x01 != 0) || tc.PSH != (last && s.flags&0x08 != 0) {
			t.Fatalf("segment %d of %d: FIN %v PSH %v", i, n, tc.FIN, tc.PSH)
		}
		if tc.CWR != (i == 0 && s.flags&0x80 != 0) {
			t.Fatalf("segment %d: CWR %v", i, tc.CWR)
		}
		if tc.ACK != (s.flags&0x10 != 0) || tc.ECE != (s.flags&0x40 != 0) || tc.Ack != 0x01020304 || tc.Window != 502 {
			t.Fatalf("segment %d: TCP %+v", i, tc)
		}
		if !bytes.Equal(seg[l4+20:hdrLen], frame[l4+20:hdrLen]) {
			t.Fatalf("segment %d: TCP options changed", i)
		}
		if err := tc.SetNetworkLayerForChecksum(netLayer); err != nil {
			t.Fatal(err)
		}
		if err, r := tc.VerifyChecksum(); err != nil || !r.Valid {
			t.Fatalf("segment %d: gopacket TCP checksum %+v %v", i, r, err)
		}
	}
	if !bytes.Equal(joined, payload) {
		t.Fatalf("joined payloads (%d bytes) differ from the original (%d bytes)", len(joined), len(payload))
	}
}

func TestGSOSplit(t *testing.T) {
	const ackPshFin, cwr, ece = 0x10 | 0x08 | 0x01, 0x80, 0x40
	for _, tc := range []struct {
		name string
		s    gsoSpec
		want int
	}{
		{"TCPv4 64000/1448", gsoSpec{payload: 64000, mss: 1448, tcpOpts: 12, flags: ackPshFin | cwr | ece, ecn: true, seq: 1000, id: 77}, 45},
		{"TCPv4 seq and ID wrap", gsoSpec{payload: 64000, mss: 1448, tcpOpts: 12, flags: ackPshFin, seq: 0xffffd000, id: 0xfff8}, 45},
		{"TCPv6 64000/1428", gsoSpec{v6: true, payload: 64000, mss: 1428, tcpOpts: 12, flags: ackPshFin | cwr, seq: 5}, 45},
		{"UDPv4 USO", gsoSpec{udp: true, payload: 20000, mss: 1472, id: 9}, 14},
		{"UDPv6 USO", gsoSpec{v6: true, udp: true, payload: 30000, mss: 1452}, 21},
		{"VLAN TCPv4", gsoSpec{vlan: true, payload: 10000, mss: 1444, tcpOpts: 12, flags: 0x18, seq: 1}, 7},
		{"VLAN TCPv6", gsoSpec{vlan: true, v6: true, payload: 10000, mss: 1424, flags: 0x18}, 8},
		{"VLAN UDPv6", gsoSpec{vlan: true, v6: true, udp: true, payload: 5000, mss: 1000}, 5},
		{"exact multiple of MSS", gsoSpec{payload: 1448 * 10, mss: 1448, tcpOpts: 12, flags: ackPshFin}, 10},
		{"smaller than MSS", gsoSpec{payload: 100, mss: 1448, flags: ackPshFin | cwr}, 1},
		{"no payload", gsoSpec{payload: 0, mss: 1448, flags: ackPshFin}, 1},
		{"UDP smaller than MSS", gsoSpec{udp: true, payload: 7, mss: 1472}, 1},
		{"odd MSS", gsoSpec{payload: 9999, mss: 1001, flags: 0x18, tcpOpts: 40}, 10},
		{"odd MSS UDP", gsoSpec{udp: true, payload: 9999, mss: 1001}, 10},
		{"IPv4 options", gsoSpec{ipOpts: 8, payload: 5000, mss: 1400, flags: 0x18}, 4},
		{"MSS 1", gsoSpec{payload: 50, mss: 1, flags: ackPshFin | cwr}, 50},
		{"TCPv6 destination options", gsoSpec{v6: true, v6Ext: []int{60}, payload: 20000, mss: 1412, tcpOpts: 12, flags: ackPshFin, seq: 9}, 15},
		{"TCPv6 hop-by-hop then destination options", gsoSpec{v6: true, v6Ext: []int{0, 60}, payload: 20000, mss: 1396, flags: 0x18}, 15},
		{"UDPv6 hop-by-hop", gsoSpec{v6: true, udp: true, v6Ext: []int{0}, payload: 9000, mss: 1436}, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frame, h, payload, l3, l4 := gsoBuild(tc.s)
			orig := bytes.Clone(frame)
			if n := SegmentCount(len(frame), h); n != tc.want {
				t.Fatalf("SegmentCount = %d, want %d", n, tc.want)
			}
			out, sizes := gsoOut(tc.want, int(h.HdrLen)+int(h.GSOSize))
			n, err := GSOSplit(frame, h, out, sizes)
			if err != nil {
				t.Fatal(err)
			}
			if n != tc.want {
				t.Fatalf("GSOSplit made %d segments, want %d", n, tc.want)
			}
			if !bytes.Equal(frame, orig) {
				t.Fatal("GSOSplit changed its input")
			}
			gsoCheckSplit(t, tc.s, frame, payload, l3, l4, out, sizes, n)

			// In parts (GSOSplitFrom), the same segments, whatever the
			// part size.
			for _, part := range []int{1, 3, 7} {
				pout, psizes := gsoOut(part, int(h.HdrLen)+int(h.GSOSize))
				for first := 0; first < n; first += part {
					m, err := GSOSplitFrom(frame, h, first, pout, psizes)
					if want := min(part, n-first); err != nil || m != want {
						t.Fatalf("parts of %d: GSOSplitFrom(first %d) = %d, %v; want %d", part, first, m, err, want)
					}
					for j := range m {
						if i := first + j; !bytes.Equal(pout[j][:psizes[j]], out[i][:sizes[i]]) {
							t.Fatalf("parts of %d: segment %d differs from GSOSplit's", part, i)
						}
					}
				}
			}
			if _, err := GSOSplitFrom(frame, h, n, out, sizes); !errors.Is(err, ErrSegment) {
				t.Errorf("GSOSplitFrom past the last segment: %v, want ErrSegment", err)
			}
		})
	}
}

// BIG TCP: an IPv4 packet over 64 KiB has total length 0.
func TestGSOSplitBigTCP(t *testing.T) {
	s := gsoSpec{payload: 100000, mss: 1448, tcpOpts: 12, flags: 0x18, id: 1}
	frame, h, payload, l3, l4 := gsoBuild(s)
	binary.BigEndian.PutUint16(frame[l3+2:], 0)
	frame[l3+10], frame[l3+11] = 0, 0
	binary.BigEndian.PutUint16(frame[l3+10:], ^gsoFold16(gsoSum16(frame[l3:l4])))
	n := SegmentCount(len(frame), h)
	out, sizes := gsoOut(n, int(h.HdrLen)+int(h.GSOSize))
	got, err := GSOSplit(frame, h, out, sizes)
	if err != nil || got != 70 || n != 70 {
		t.Fatalf("GSOSplit = %d, %v; SegmentCount %d; want 70", got, err, n)
	}
	gsoCheckSplit(t, s, frame, payload, l3, l4, out, sizes, got)

	// A segment size that would make IP packets over 64 KiB is refused.
	h.GSOSize = 65535
	if _, err := GSOSplit(frame, h, out, sizes); !errors.Is(err, ErrBadVnetHdr) {
		t.Fatalf("GSOSplit with 64 KiB segments: %v, want ErrBadVnetHdr", err)
	}
}

func TestGSOSplitNone(t *testing.T) {
	for _, udp := range []bool{false, true} {
		frame, h, _, _, l4 := gsoBuild(gsoSpec{udp: udp, payload: 333, mss: 1448, flags: 0x18})
		h.GSOType, h.GSOSize, h.HdrLen = VnetGSONone, 0, 0
		orig := bytes.Clone(frame)
		out, sizes := gsoOut(1, len(frame))
		n, err := GSOSplit(frame, h, out, sizes)
		if err != nil || n != 1 || sizes[0] != len(frame) {
			t.Fatalf("udp=%v: GSOSplit = %d, %v, size %d", udp, n, err, sizes[0])
		}
		if !bytes.Equal(frame, orig) {
			t.Fatal("GSOSplit changed its input")
		}
		if ok, why, _ := gsoVerifySums(out[0][:sizes[0]]); !ok {
			t.Fatalf("udp=%v: %s does not verify", udp, why)
		}
		want := bytes.Clone(frame)
		if err := ChecksumFrame(want, h); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out[0][:sizes[0]], want) {
			t.Fatal("GSOSplit with GSONone differs from copy plus ChecksumFrame")
		}

		// Without NEEDS_CSUM it is a plain copy.
		h.Flags = 0
		if n, err := GSOSplit(frame, h, out, sizes); err != nil || n != 1 || !bytes.Equal(out[0][:sizes[0]], frame) {
			t.Fatalf("udp=%v: plain copy: %d, %v", udp, n, err)
		}

		// Errors.
		short, _ := gsoOut(1, len(frame)-1)
		if _, err := GSOSplit(frame, h, short, sizes); !errors.Is(err, ErrSegment) {
			t.Fatalf("small buffer: %v, want ErrSegment", err)
		}
		if _, err := GSOSplit(frame, h, nil, sizes); !errors.Is(err, ErrSegment) {
			t.Fatalf("no buffer: %v, want ErrSegment", err)
		}
		h.Flags, h.CsumStart = VnetFlagNeedsCsum, uint16(len(frame))
		if _, err := GSOSplit(frame, h, out, sizes); !errors.Is(err, ErrBadVnetHdr) {
			t.Fatalf("checksum outside the frame: %v, want ErrBadVnetHdr", err)
		}
		h.CsumStart = uint16(l4)
		h.GSOType = VnetGSOECN
		if _, err := GSOSplit(frame, h, out, sizes); !errors.Is(err, ErrBadVnetHdr) {
			t.Fatalf("ECN without GSO: %v, want ErrBadVnetHdr", err)
		}
	}
}

// gsoTrunc4 cuts an untagged IPv4 frame to n bytes and fixes the IPv4
// total length, so that only the cut L4 header is wrong.
func gsoTrunc4(f []byte, n int) []byte {
	binary.BigEndian.PutUint16(f[16:], uint16(n-14))
	return f[:n]
}

func TestGSOSplitMalformed(t *testing.T) {
	base := gsoSpec{payload: 5000, mss: 1448, tcpOpts: 12, flags: 0x18}
	type mod func(f []byte, h *VnetHdr) []byte
	for _, tc := range []struct {
		name string
		s    gsoSpec
		mod  mod
		out  int // output buffers, 0: as many as needed
		cap  int // their capacity, 0: HdrLen+GSOSize
		want error
	}{
		{"empty frame", base, func(f []byte, h *VnetHdr) []byte { return nil }, 0, 0, ErrSegment},
		{"truncated Ethernet header", base, func(f []byte, h *VnetHdr) []byte { return f[:10] }, 0, 0, ErrSegment},
		{"truncated VLAN tag", gsoSpec{vlan: true, payload: 10, mss: 100}, func(f []byte, h *VnetHdr) []byte { return f[:16] }, 0, 0, ErrSegment},
		{"truncated IPv4 header", base, func(f []byte, h *VnetHdr) []byte { return f[:25] }, 0, 0, ErrSegment},
		{"truncated IPv6 header", gsoSpec{v6: true, payload: 10, mss: 100}, func(f []byte, h *VnetHdr) []byte { return f[:40] }, 0, 0, ErrSegment},
		{"truncated TCP header", base, func(f []byte, h *VnetHdr) []byte { return gsoTrunc4(f, 40) }, 0, 0, ErrSegment},
		{"truncated TCP options", base, func(f []byte, h *VnetHdr) []byte { return gsoTrunc4(f, 60) }, 0, 0, ErrSegment},
		{"truncated UDP header", gsoSpec{udp: true, payload: 10, mss: 100}, func(f []byte, h *VnetHdr) []byte { return gsoTrunc4(f, 38) }, 0, 0, ErrSegment},
		{"truncated payload", base, func(f []byte, h *VnetHdr) []byte { return f[:len(f)-1] }, 0, 0, ErrSegment},
		{"IPv6 payload length mismatch", gsoSpec{v6: true, payload: 3000, mss: 1400}, func(f []byte, h *VnetHdr) []byte { return f[:len(f)-100] }, 0, 0, ErrSegment},
		{"HdrLen one more", base, func(f []byte, h *VnetHdr) []byte { h.HdrLen++; return f }, 0, 0, ErrBadVnetHdr},
		{"HdrLen one less", base, func(f []byte, h *VnetHdr) []byte { h.HdrLen--; return f }, 0, 0, ErrBadVnetHdr},
		{"HdrLen without options", base, func(f []byte, h *VnetHdr) []byte { h.HdrLen -= 12; return f }, 0, 0, ErrBadVnetHdr},
		{"HdrLen beyond the frame", base, func(f []byte, h *VnetHdr) []byte { h.HdrLen = 60000; return f }, 0, 0, ErrBadVnetHdr},
		{"UDP HdrLen mismatch", gsoSpec{udp: true, payload: 3000, mss: 1400}, func(f []byte, h *VnetHdr) []byte { h.HdrLen += 4; return f }, 0, 0, ErrBadVnetHdr},
		{"out too short", base, nil, 3, 0, ErrSegment},
		{"out empty", base, nil, -1, 0, ErrSegment},
		{"out buffer too small", base, nil, 0, 1000, ErrSegment},
		// A routing header changes the pseudo-header's destination: refused.
		{"IPv6 routing header", gsoSpec{v6: true, v6Ext: []int{43}, payload: 3000, mss: 1400}, nil, 0, 0, ErrSegment},
		{"IPv6 extension header longer than the frame", gsoSpec{v6: true, v6Ext: []int{60}, payload: 10, mss: 100}, func(f []byte, h *VnetHdr) []byte {
			f[14+40+1] = 255 // 2048 bytes
			return f
		}, 0, 0, ErrSegment},
		{"IPv6 fragment header", gsoSpec{v6: true, payload: 3000, mss: 1400}, func(f []byte, h *VnetHdr) []byte { f[14+6] = 44; return f }, 0, 0, ErrSegment},
		{"TCPv4 on an IPv6 frame", gsoSpec{v6: true, payload: 3000, mss: 1400}, func(f []byte, h *VnetHdr) []byte { h.GSOType = VnetGSOTCPv4; return f }, 0, 0, ErrBadVnetHdr},
		{"TCPv6 on an IPv4 frame", base, func(f []byte, h *VnetHdr) []byte { h.GSOType = VnetGSOTCPv6; return f }, 0, 0, ErrBadVnetHdr},
		{"USO on a TCP frame", base, func(f []byte, h *VnetHdr) []byte { h.GSOType = VnetGSOUDPL4; return f }, 0, 0, ErrBadVnetHdr},
		{"TSO on a UDP frame", gsoSpec{udp: true, payload: 3000, mss: 1400}, func(f []byte, h *VnetHdr) []byte { h.GSOType = VnetGSOTCPv4; return f }, 0, 0, ErrBadVnetHdr},
		{"UFO", gsoSpec{udp: true, payload: 3000, mss: 1400}, func(f []byte, h *VnetHdr) []byte { h.GSOType = VnetGSOUDP; return f }, 0, 0, ErrBadVnetHdr},
		{"unknown GSO type", base, func(f []byte, h *VnetHdr) []byte { h.GSOType = 0x42; return f }, 0, 0, ErrBadVnetHdr},
		{"segment size 0", base, func(f []byte, h *VnetHdr) []byte { h.GSOSize = 0; return f }, 0, 1500, ErrBadVnetHdr},
		{"ARP ethertype", base, func(f []byte, h *VnetHdr) []byte { f[12], f[13] = 0x08, 0x06; return f }, 0, 0, ErrSegment},
		{"IPv4 version 6 in IPv4 ethertype", base, func(f []byte, h *VnetHdr) []byte { f[14] = 0x65; return f }, 0, 0, ErrSegment},
		{"IPv4 IHL 4", base, func(f []byte, h *VnetHdr) []byte { f[14] = 0x44; return f }, 0, 0, ErrSegment},
		{"IPv4 IHL beyond the frame", gsoSpec{payload: 0, mss: 100}, func(f []byte, h *VnetHdr) []byte { f[14] = 0x4f; return f }, 0, 0, ErrSegment},
		{"IPv4 fragment", base, func(f []byte, h *VnetHdr) []byte { f[14+6] |= 0x20; return f }, 0, 0, ErrSegment},
		{"IPv4 fragment offset", base, func(f []byte, h *VnetHdr) []byte { f[14+7] = 1; return f }, 0, 0, ErrSegment},
		{"TCP data offset 4", base, func(f []byte, h *VnetHdr) []byte { f[34+12] = 0x40; return f }, 0, 0, ErrSegment},
		{"TCP data offset beyond the frame", gsoSpec{payload: 0, mss: 100}, func(f []byte, h *VnetHdr) []byte { f[34+12] = 0xf0; return f }, 0, 0, ErrSegment},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frame, h, _, _, _ := gsoBuild(tc.s)
			if tc.mod != nil {
				frame = tc.mod(frame, &h)
			}
			n := tc.out
			switch {
			case n == 0:
				n = max(SegmentCount(len(frame), h), 1)
			case n < 0:
				n = 0
			}
			size := tc.cap
			if size == 0 {
				size = int(h.HdrLen) + int(h.GSOSize)
			}
			out, sizes := gsoOut(n, size)
			got, err := GSOSplit(frame, h, out, sizes)
			if !errors.Is(err, tc.want) {
				t.Fatalf("GSOSplit = %d, %v; want %v", got, err, tc.want)
			}
			if got != 0 {
				t.Fatalf("GSOSplit returned %d segments with an error", got)
			}
			for i := range sizes {
				if sizes[i] != -1 || len(out[i]) != 0 || !bytes.Equal(out[i][:size], make([]byte, size)) {
					t.Fatalf("output %d written despite the error", i)
				}
			}
		})
	}
}

func TestSegmentCount(t *testing.T) {
	tso := VnetHdr{GSOType: VnetGSOTCPv4, HdrLen: 54, GSOSize: 1448}
	for _, tc := range []struct {
		name     string
		frameLen int
		h        VnetHdr
		want     int
	}{
		{"no GSO", 1514, VnetHdr{}, 1},
		{"no GSO, empty frame", 0, VnetHdr{}, 1},
		{"ECN without GSO", 1514, VnetHdr{GSOType: VnetGSOECN}, 0},
		{"one byte over", 54 + 1449, tso, 2},
		{"exact", 54 + 1448*3, tso, 3},
		{"one byte", 55, tso, 1},
		{"no payload", 54, tso, 1},
		{"64000", 54 + 64000, tso, 45},
		{"ECN", 54 + 64000, VnetHdr{GSOType: VnetGSOTCPv6 | VnetGSOECN, HdrLen: 54, GSOSize: 1448}, 45},
		{"USO", 42 + 20000, VnetHdr{GSOType: VnetGSOUDPL4, HdrLen: 42, GSOSize: 1472}, 14},
		{"header beyond the frame", 53, tso, 0},
		{"segment size 0", 1000, VnetHdr{GSOType: VnetGSOTCPv4, HdrLen: 54}, 0},
		{"UFO", 1000, VnetHdr{GSOType: VnetGSOUDP, HdrLen: 42, GSOSize: 100}, 0},
		{"unknown", 1000, VnetHdr{GSOType: 9, HdrLen: 42, GSOSize: 100}, 0},
		{"MSS 1", 54 + 65000, VnetHdr{GSOType: VnetGSOTCPv4, HdrLen: 54, GSOSize: 1}, 65000},
	} {
		if got := SegmentCount(tc.frameLen, tc.h); got != tc.want {
			t.Errorf("%s: SegmentCount(%d, %+v) = %d, want %d", tc.name, tc.frameLen, tc.h, got, tc.want)
		}
	}
}

func TestChecksumFrame(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    gsoSpec
	}{
		{"TCPv4", gsoSpec{payload: 1000, flags: 0x18, tcpOpts: 12}},
		{"TCPv4 odd length", gsoSpec{payload: 999, flags: 0x18}},
		{"TCPv4 no payload", gsoSpec{payload: 0, flags: 0x10}},
		{"TCPv6", gsoSpec{v6: true, payload: 1201, flags: 0x18}},
		{"UDPv4", gsoSpec{udp: true, payload: 513}},
		{"UDPv6 VLAN", gsoSpec{vlan: true, v6: true, udp: true, payload: 1400}},
		{"UDPv4 empty", gsoSpec{udp: true, payload: 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frame, h, _, _, l4 := gsoBuild(tc.s)
			h.GSOType, h.GSOSize, h.HdrLen = VnetGSONone, 0, 0
			at := l4 + int(h.CsumOffset)
			// The expected value, computed the textbook way: the field
			// zeroed, the pseudo header summed separately.
			if ok, _, _ := gsoVerifySums(frame); ok {
				t.Fatal("the partial checksum already verifies; the test frame is wrong")
			}
			g := bytes.Clone(frame)
			g[at], g[at+1] = 0, 0
			if err := ChecksumFrame(frame, h); err != nil {
				t.Fatal(err)
			}
			if ok, why, _ := gsoVerifySums(frame); !ok {
				t.Fatalf("%s does not verify after ChecksumFrame", why)
			}
			var src, dst []byte
			l3 := l4 - 20
			if tc.s.v6 {
				l3 = l4 - 40
				src, dst = g[l3+8:l3+24], g[l3+24:l3+40]
			} else {
				src, dst = g[l3+12:l3+16], g[l3+16:l3+20]
			}
			proto := uint8(6)
			if tc.s.udp {
				proto = 17
			}
			want := ^gsoFold16(gsoPseudo(src, dst, proto, len(g)-l4) + gsoSum16(g[l4:]))
			if want == 0 {
				want = 0xffff
			}
			if got := binary.BigEndian.Uint16(frame[at:]); got != want {
				t.Fatalf("checksum %#04x, want %#04x", got, want)
			}
			g[at], g[at+1] = frame[at], frame[at+1]
			if !bytes.Equal(g, frame) {
				t.Fatal("ChecksumFrame changed more than the checksum field")
			}
		})
	}
}

// A UDP checksum that comes out as 0 must be sent as 0xffff: 0 means no
// checksum.
func TestChecksumFrameUDPZero(t *testing.T) {
	frame, h, _, _, l4 := gsoBuild(gsoSpec{udp: true, payload: 100})
	h.GSOType, h.GSOSize, h.HdrLen = VnetGSONone, 0, 0
	// Choose the last two payload bytes so that the sum over the partial
	// frame is 0xffff, which complements to 0.
	n := len(frame)
	frame[n-2], frame[n-1] = 0, 0
	fix := ^gsoFold16(gsoSum16(frame[l4:]))
	binary.BigEndian.PutUint16(frame[n-2:], fix)
	if gsoFold16(gsoSum16(frame[l4:])) != 0xffff {
		t.Fatal("test setup: sum is not 0xffff")
	}
	if err := ChecksumFrame(frame, h); err != nil {
		t.Fatal(err)
	}
	if got := binary.BigEndian.Uint16(frame[l4+6:]); got != 0xffff {
		t.Fatalf("UDP checksum %#04x, want 0xffff", got)
	}
	if ok, why, _ := gsoVerifySums(frame); !ok {
		t.Fatalf("%s does not verify", why)
	}

	// GSOSplit must do the same for a UDP segment whose checksum is 0.
	frame, h, _, _, l4 = gsoBuild(gsoSpec{udp: true, payload: 100, mss: 1000})
	n = len(frame)
	frame[n-2], frame[n-1] = 0, 0
	frame[l4+6], frame[l4+7] = 0, 0
	pseudo := gsoPseudo(frame[l4-8:l4-4], frame[l4-4:l4], 17, n-l4)
	binary.BigEndian.PutUint16(frame[n-2:], ^gsoFold16(pseudo+gsoSum16(frame[l4:])))
	out, sizes := gsoOut(1, n)
	if c, err := GSOSplit(frame, h, out, sizes); c != 1 || err != nil {
		t.Fatal(c, err)
	}
	if got := binary.BigEndian.Uint16(out[0][:sizes[0]][l4+6:]); got != 0xffff {
		t.Fatalf("GSOSplit UDP checksum %#04x, want 0xffff", got)
	}
}

func TestChecksumFrameFlagsAndBounds(t *testing.T) {
	frame, h, _, _, l4 := gsoBuild(gsoSpec{payload: 100, flags: 0x18})
	orig := bytes.Clone(frame)
	h.Flags = VnetFlagDataValid
	if err := ChecksumFrame(frame, h); err != nil || !bytes.Equal(frame, orig) {
		t.Fatalf("without NEEDS_CSUM: %v, changed %v", err, !bytes.Equal(frame, orig))
	}
	h.Flags = VnetFlagNeedsCsum
	for _, bad := range []struct{ start, off uint16 }{
		{uint16(len(frame)), 0},
		{uint16(len(frame) - 1), 0},
		{uint16(l4), uint16(len(frame) - l4 - 1)},
		{0xffff, 0xffff},
	} {
		h.CsumStart, h.CsumOffset = bad.start, bad.off
		if err := ChecksumFrame(frame, h); !errors.Is(err, ErrBadVnetHdr) {
			t.Fatalf("checksum at %d+%d: %v, want ErrBadVnetHdr", bad.start, bad.off, err)
		}
		if !bytes.Equal(frame, orig) {
			t.Fatal("frame changed on error")
		}
	}
	// The field may be the last two bytes of the frame. Its old value is
	// part of the sum (it is taken to be the pseudo-header sum).
	h.CsumStart, h.CsumOffset = uint16(l4), uint16(len(frame)-l4-2)
	want := ^gsoFold16(gsoSum16(frame[l4:]))
	if err := ChecksumFrame(frame, h); err != nil {
		t.Fatal(err)
	}
	if got := binary.BigEndian.Uint16(frame[len(frame)-2:]); got != want {
		t.Fatalf("checksum in the last two bytes %#04x, want %#04x", got, want)
	}
}

// gsoSum must agree with the plain 16-bit sum for every length and
// starting value.
func TestChecksumSumMatchesPlain(t *testing.T) {
	b := gsoPayload(300, 1)
	for i := range 64 {
		b[i] = 0xff // runs of ones to provoke carries
	}
	for start := range 4 {
		for n := 0; start+n <= len(b); n++ {
			for _, acc := range []uint64{0, 0xffff, 0x12345, 0xffffffff} {
				got := gsoFold(gsoSum(b[start:start+n], acc))
				want := gsoFold16(gsoSum16(b[start:start+n]) + uint32(acc&0xffff) + uint32(acc>>16))
				// 0 and 0xffff are the same number in one's complement.
				if got != want && !(got|want == 0xffff && got&want == 0) {
					t.Fatalf("start %d len %d acc %#x: %#04x, want %#04x", start, n, acc, got, want)
				}
			}
		}
	}
	ones := bytes.Repeat([]byte{0xff}, 70000)
	if got := gsoFold(gsoSum(ones, 0)); got != 0xffff {
		t.Fatalf("all ones: %#04x", got)
	}
}

func TestGSOSplitNoAllocs(t *testing.T) {
	frame, h, _, _, _ := gsoBuild(gsoSpec{payload: 64000, mss: 1448, tcpOpts: 12, flags: 0x18})
	out, sizes := gsoOut(SegmentCount(len(frame), h), int(h.HdrLen)+int(h.GSOSize))
	if a := testing.AllocsPerRun(50, func() {
		if _, err := GSOSplit(frame, h, out, sizes); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Fatalf("GSOSplit: %v allocations per call", a)
	}
	none := h
	none.GSOType, none.GSOSize, none.HdrLen = VnetGSONone, 0, 0
	big, bigSizes := gsoOut(1, len(frame))
	if a := testing.AllocsPerRun(50, func() {
		if _, err := GSOSplit(frame, none, big, bigSizes); err != nil {
			t.Fatal(err)
		}
		if err := ChecksumFrame(frame, none); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Fatalf("GSOSplit without GSO and ChecksumFrame: %v allocations per call", a)
	}
}

func BenchmarkGSOSplit(b *testing.B) {
	s := gsoSpec{mss: 1448, tcpOpts: 12, flags: 0x18}
	s.payload = 64<<10 - (14 + 20 + 32) // a 64 KiB frame
	frame, h, _, _, _ := gsoBuild(s)
	out, sizes := gsoOut(SegmentCount(len(frame), h), int(h.HdrLen)+int(h.GSOSize))
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := GSOSplit(frame, h, out, sizes); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzGSOSplit feeds arbitrary frames and headers to GSOSplit, SegmentCount
// and ChecksumFrame: they must not panic, GSOSplit must not touch its input,
// its errors must wrap ErrSegment or ErrBadVnetHdr, and whatever it
// accepts must come out as verifiable segments that add up to the payload.
// The seed frames are small on purpose: the fuzzer's minimizer is
// quadratic in the input size.
func FuzzGSOSplit(f *testing.F) {
	add := func(frame []byte, h VnetHdr) {
		f.Add(frame, h.Flags, h.GSOType, h.HdrLen, h.GSOSize, h.CsumStart, h.CsumOffset)
	}
	for _, s := range []gsoSpec{
		{payload: 300, mss: 100, tcpOpts: 12, flags: 0x99, ecn: true},
		{v6: true, payload: 250, mss: 64, flags: 0x19},
		{udp: true, payload: 201, mss: 50},
		{v6: true, udp: true, vlan: true, payload: 120, mss: 33},
		{vlan: true, payload: 40, mss: 7, ipOpts: 4},
		{payload: 0, mss: 1},
	} {
		frame, h, _, _, _ := gsoBuild(s)
		add(frame, h)
		add(frame[:len(frame)/2], h)
		none := h
		none.GSOType = VnetGSONone
		add(frame, none)
		bad := h
		bad.HdrLen += 4
		add(frame, bad)
	}
	add([]byte{}, VnetHdr{GSOType: VnetGSOTCPv4, GSOSize: 1})
	add(make([]byte, 60), VnetHdr{Flags: VnetFlagNeedsCsum, CsumStart: 30, CsumOffset: 28})

	// Output buffers are carved out of one backing array, allocated once:
	// the fuzz function runs one input at a time in each worker process.
	const backingLen = 8 << 20
	backing := make([]byte, backingLen)
	const maxOut = 1 << 17
	outs := make([][]byte, maxOut)
	allSizes := make([]int, maxOut)
	// GSOSplitFrom's parts, at most 5 segments of at most 2x64 KiB
	partBacking := make([]byte, 5<<17)
	partOuts, partSizes := make([][]byte, 5), make([]int, 5)

	f.Fuzz(func(t *testing.T, frame []byte, flags, gsoType uint8, hdrLen, gsoSize, csumStart, csumOffset uint16) {
		h := VnetHdr{Flags: flags, GSOType: gsoType, HdrLen: hdrLen, GSOSize: gsoSize, CsumStart: csumStart, CsumOffset: csumOffset}
		orig := bytes.Clone(frame)
		want := SegmentCount(len(frame), h)

		size := int(hdrLen) + int(gsoSize)
		if gsoType == VnetGSONone {
			size = len(frame)
		}
		// Bound the memory: with too many segments GSOSplit must fail.
		nOut := want
		if nOut*size > backingLen {
			nOut = backingLen / max(size, 1)
		}
		nOut = min(nOut, maxOut)
		out := outs[:nOut]
		for i := range out {
			out[i] = backing[i*size : i*size : (i+1)*size]
		}
		sizes := allSizes[:nOut]
		n, err := GSOSplit(frame, h, out, sizes)
		if !bytes.Equal(frame, orig) {
			t.Fatal("GSOSplit changed its input")
		}
		if err != nil {
			if n != 0 {
				t.Fatalf("%d segments with error %v", n, err)
			}
			if !errors.Is(err, ErrSegment) && !errors.Is(err, ErrBadVnetHdr) {
				t.Fatalf("error %v wraps neither ErrSegment nor ErrBadVnetHdr", err)
			}
		} else {
			if n != want {
				t.Fatalf("GSOSplit made %d segments, SegmentCount said %d", n, want)
			}
			if gsoType == VnetGSONone {
				c := bytes.Clone(frame)
				if e := ChecksumFrame(c, h); e != nil || !bytes.Equal(c, out[0][:sizes[0]]) {
					t.Fatalf("GSONone output differs from ChecksumFrame: %v", e)
				}
			} else {
				var joined []byte
				for i := range n {
					if sizes[i] > cap(out[i]) || sizes[i] < int(hdrLen) {
						t.Fatalf("segment %d: size %d, capacity %d", i, sizes[i], cap(out[i]))
					}
					seg := out[i][:sizes[i]]
					ok, why, at := gsoVerifySums(seg)
					if !ok || at != int(hdrLen) {
						t.Fatalf("segment %d: %s does not verify (payload at %d)", i, why, at)
					}
					if i < n-1 && len(seg)-int(hdrLen) != int(gsoSize) {
						t.Fatalf("segment %d: short", i)
					}
					joined = append(joined, seg[hdrLen:]...)
				}
				if !bytes.Equal(joined, frame[hdrLen:]) {
					t.Fatal("joined payloads differ")
				}
				// The same segments in parts (GSOSplitFrom), of a
				// size the input picks.
				part := 1 + int(gsoSize)%5
				for i := range part {
					partOuts[i] = partBacking[i*size : i*size : (i+1)*size]
				}
				for first := 0; first < n; first += part {
					m, err := GSOSplitFrom(frame, h, first, partOuts[:part], partSizes[:part])
					if err != nil || m != min(part, n-first) {
						t.Fatalf("GSOSplitFrom(first %d, part %d) = %d, %v", first, part, m, err)
					}
					for j := range m {
						if !bytes.Equal(partOuts[j][:partSizes[j]], out[first+j][:sizes[first+j]]) {
							t.Fatalf("segment %d in parts of %d differs from GSOSplit's", first+j, part)
						}
					}
				}
			}
		}

		c := bytes.Clone(frame)
		if err := ChecksumFrame(c, h); err != nil && !errors.Is(err, ErrBadVnetHdr) {
			t.Fatalf("ChecksumFrame error %v does not wrap ErrBadVnetHdr", err)
		}
	})
}

// The kernel's hdr_len is a hint: whatever it says, NormalizeGSO finds the
// real end of the headers, and the split is the one the true header gives.
// Without GSO, or on a frame that does not parse, h comes back unchanged.
func TestNormalizeGSO(t *testing.T) {
	for _, s := range []gsoSpec{
		{payload: 20000, mss: 1448, tcpOpts: 12},
		{v6: true, payload: 9000, mss: 1000},
		{udp: true, payload: 3000, mss: 1400},
		{vlan: true, payload: 5000, mss: 700, ipOpts: 8},
	} {
		frame, h, _, _, _ := gsoBuild(s)
		want, wantSizes := gsoOut(SegmentCount(len(frame), h), int(h.HdrLen)+int(h.GSOSize))
		n, err := GSOSplit(frame, h, want, wantSizes)
		if err != nil {
			t.Fatalf("%+v: %v", s, err)
		}
		for _, hint := range []uint16{0, h.HdrLen - 1, h.HdrLen + 1, h.HdrLen + uint16(h.GSOSize), uint16(len(frame))} {
			bad := h
			bad.HdrLen = hint
			fixed := NormalizeGSO(frame, bad)
			if fixed != h {
				t.Fatalf("%+v: NormalizeGSO with hdr_len %d = %+v, want %+v", s, hint, fixed, h)
			}
			out, sizes := gsoOut(SegmentCount(len(frame), fixed), int(fixed.HdrLen)+int(fixed.GSOSize))
			if m, err := GSOSplit(frame, fixed, out, sizes); err != nil || m != n {
				t.Fatalf("%+v: split after NormalizeGSO: %d, %v; want %d", s, m, err, n)
			}
			for i := 0; i < n; i++ {
				if !bytes.Equal(out[i][:sizes[i]], want[i][:wantSizes[i]]) {
					t.Fatalf("%+v hdr_len %d: segment %d differs", s, hint, i)
				}
			}
		}
	}
	none := VnetHdr{Flags: VnetFlagNeedsCsum, HdrLen: 7, CsumStart: 34, CsumOffset: 16}
	if got := NormalizeGSO(make([]byte, 80), none); got != none {
		t.Errorf("no GSO: %+v, want it unchanged", got)
	}
	garbage := VnetHdr{GSOType: VnetGSOTCPv4, HdrLen: 9, GSOSize: 100}
	if got := NormalizeGSO([]byte{1, 2, 3}, garbage); got != garbage {
		t.Errorf("unparsable frame: %+v, want h unchanged", got)
	}
}
