package hoststack

// UDP send coalescing: the host's kernel hands the NIC TAP one datagram
// per read, and each write of one to the hardware TAP costs a syscall and
// a pass through the wire's kernel. When the miniport offers UDP
// segmentation (USO) and checksum offload, consecutive datagrams of one
// flow with the same payload size (the last may be shorter) are copied
// behind the first into one large send, which the miniport hands to the
// wire as one frame and the wire's kernel cuts back into the same
// datagrams (udp_rcv_segment). This is wireguard-go's UDP GRO for TUN
// writes, done where tcpip.sys would build a USO send.

import (
	"encoding/binary"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/tapdev"
)

// maxCoalesce bounds the datagrams in one coalesced send (the kernel's
// UDP_MAX_SEGMENTS is 128).
const maxCoalesce = 64

// udpInfo locates an untagged Ethernet/IPv4 (no options, not a fragment)
// or IPv6 (no extension header) UDP datagram: the UDP header's offset and
// the payload's length. ok is false for anything else.
func udpInfo(f []byte) (l4 int, payload int, v6 bool, ok bool) {
	if len(f) < 14+20+8 {
		return 0, 0, false, false
	}
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0800:
		ip := f[14:]
		if ip[0] != 0x45 || ip[9] != 17 || binary.BigEndian.Uint16(ip[6:])&^0x4000 != 0 {
			return 0, 0, false, false
		}
		l4 = 34
		if int(binary.BigEndian.Uint16(ip[2:])) != len(f)-14 {
			return 0, 0, false, false
		}
	case 0x86dd:
		if len(f) < 14+40+8 {
			return 0, 0, false, false
		}
		ip := f[14:]
		if ip[0]>>4 != 6 || ip[6] != 17 || int(binary.BigEndian.Uint16(ip[4:])) != len(f)-54 {
			return 0, 0, false, false
		}
		l4, v6 = 54, true
	default:
		return 0, 0, false, false
	}
	if int(binary.BigEndian.Uint16(f[l4+4:])) != len(f)-l4 {
		return 0, 0, false, false
	}
	return l4, len(f) - l4 - 8, v6, true
}

// sameFlow reports whether b can ride behind a in one USO send: the same
// Ethernet header, the same IP header but for its length, ID and
// checksum, and the same UDP ports.
func sameFlow(a, b []byte, l4 int, v6 bool) bool {
	if string(a[:14]) != string(b[:14]) || string(a[l4:l4+4]) != string(b[l4:l4+4]) {
		return false
	}
	if v6 {
		return string(a[14:18]) == string(b[14:18]) && string(a[20:54]) == string(b[20:54])
	}
	return a[15] == b[15] && string(a[20:24]) == string(b[20:24]) && string(a[26:34]) == string(b[26:34])
}

// coalescer builds one USO send out of datagrams (one per send chain).
type coalescer struct {
	head  *ndisshim.NetBufferList // the datagram the others ride behind; nil: none open
	l4    int
	v6    bool
	mss   int // the first datagram's payload length: every segment's but the last
	segs  int
	short bool // a datagram shorter than mss was added: it must be the last
}

// reset closes the open send (it goes as it is).
func (c *coalescer) reset() { *c = coalescer{} }

// offer adds nbl to the open send and reports true (nbl is then the
// caller's to free), or opens a new send with nbl and reports false.
// caps says whether the miniport takes USO for IPv4 and IPv6.
func (c *coalescer) offer(nbl *ndisshim.NetBufferList, uso4, uso6 bool) bool {
	f := nbl.FirstNB.Bytes()
	l4, payload, v6, ok := udpInfo(f)
	if !ok || nbl.Info.LSO.MSS != 0 || (v6 && !uso6) || (!v6 && !uso4) || payload == 0 {
		c.reset()
		return false
	}
	if c.head != nil && c.l4 == l4 && c.v6 == v6 && !c.short && payload <= c.mss && c.segs < maxCoalesce {
		hf := c.head.FirstNB
		total := hf.Length + payload
		if total-14 <= 65535 && hf.Offset+total <= len(hf.Data) && sameFlow(hf.Bytes(), f, l4, v6) {
			copy(hf.Data[hf.Offset+hf.Length:], f[l4+8:])
			hf.SetBytes(hf.Offset, total)
			c.segs++
			c.short = payload < c.mss
			c.finish()
			return true
		}
	}
	c.head, c.l4, c.v6, c.mss, c.segs, c.short = nbl, l4, v6, payload, 1, false
	return false
}

// finish rewrites the open send's headers for its new length: IP length
// (and IPv4 header checksum), UDP length, the UDP checksum left partial
// (the pseudo-header sum, which the wire's kernel completes per segment),
// and the NBL's USO and checksum information.
func (c *coalescer) finish() {
	f := c.head.FirstNB.Bytes()
	udpLen := len(f) - c.l4
	var pseudo uint64
	if c.v6 {
		binary.BigEndian.PutUint16(f[18:], uint16(udpLen))
		pseudo = tapdev.ChecksumAdd(f[22:54], 17+uint64(udpLen))
	} else {
		binary.BigEndian.PutUint16(f[16:], uint16(len(f)-14))
		binary.BigEndian.PutUint16(f[24:], 0)
		binary.BigEndian.PutUint16(f[24:], ^tapdev.ChecksumFold(tapdev.ChecksumAdd(f[14:34], 0)))
		pseudo = tapdev.ChecksumAdd(f[26:34], 17+uint64(udpLen))
	}
	binary.BigEndian.PutUint16(f[c.l4+4:], uint16(udpLen))
	binary.BigEndian.PutUint16(f[c.l4+6:], tapdev.ChecksumFold(pseudo))
	c.head.Info = ndisshim.NBLInfo{
		Checksum: ndisshim.ChecksumInfo{NeedsChecksum: true, CsumStart: uint16(c.l4), CsumOffset: 6},
		LSO:      ndisshim.LSOInfo{MSS: uint16(c.mss), HeaderLen: uint16(c.l4 + 8), IPv6: c.v6, UDP: true},
	}
}
