package tapdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// ErrSegment is wrapped by GSOSplit's errors about the frame itself or the
// buffers it was given: a frame too short or not TCP/UDP over IPv4/IPv6,
// IPv6 extension headers, or too few or too small output buffers. Errors
// about the virtio-net header wrap ErrBadVnetHdr instead.
var ErrSegment = errors.New("cannot segment frame")

// Frame layout constants used by GSOSplit and ChecksumFrame.
const (
	gsoEthLen     = 14
	gsoVLANLen    = 4
	gsoTypeVLAN   = 0x8100
	gsoTypeIPv4   = 0x0800
	gsoTypeIPv6   = 0x86dd
	gsoIPv6HdrLen = 40
	gsoUDPHdrLen  = 8
	gsoTCPMinLen  = 20
	gsoProtoTCP   = 6
	// IPv6 extension headers GSOSplit carries into every segment
	gsoIPv6HopByHop = 0
	gsoIPv6DestOpts = 60
	gsoProtoUDP     = 17
	gsoTCPCsumOff   = 16
	gsoUDPCsumOff   = 6
	gsoTCPFlagsOff  = 13
	gsoTCPFlagFIN   = 0x01
	gsoTCPFlagPSH   = 0x08
	gsoTCPFlagCWR   = 0x80
	gsoMaxIPLen     = 0xffff
)

// ChecksumFrame finishes a partial checksum in place, the way the kernel's
// skb_checksum_help does. When h.Flags has VnetFlagNeedsCsum, the field at
// frame[h.CsumStart+h.CsumOffset:] holds the folded pseudo-header sum; the
// one's-complement sum of frame[h.CsumStart:] (that field included) is
// folded, complemented and stored there in network byte order. A result of
// 0 is stored as 0xffff, which means the same to a TCP receiver and is
// required for UDP, where 0 means "no checksum". Without the flag it does
// nothing. Offsets outside the frame are an error wrapping ErrBadVnetHdr.
func ChecksumFrame(frame []byte, h VnetHdr) error {
	if h.Flags&VnetFlagNeedsCsum == 0 {
		return nil
	}
	start := int(h.CsumStart)
	at := start + int(h.CsumOffset)
	if at+2 > len(frame) {
		return fmt.Errorf("%w: checksum at %d+%d beyond the %d-byte frame", ErrBadVnetHdr, h.CsumStart, h.CsumOffset, len(frame))
	}
	c := ^gsoFold(gsoSum(frame[start:], 0))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(frame[at:], c)
	return nil
}

// SegmentCount returns how many segments GSOSplit makes of a frameLen-byte
// frame with header h, so callers can size out and sizes: 1 for a frame
// without GSO, otherwise the payload after h.HdrLen divided by h.GSOSize,
// rounded up (1 if there is no payload). It returns 0 when GSOSplit is
// bound to fail: an unknown GSO type, a segment size of 0, or a header
// length beyond the frame.
func SegmentCount(frameLen int, h VnetHdr) int {
	switch h.GSOType &^ VnetGSOECN {
	case VnetGSONone:
		if h.GSOType&VnetGSOECN != 0 {
			return 0
		}
		return 1
	case VnetGSOTCPv4, VnetGSOTCPv6, VnetGSOUDPL4:
	default:
		return 0
	}
	if h.GSOSize == 0 || int(h.HdrLen) > frameLen {
		return 0
	}
	payload := frameLen - int(h.HdrLen)
	if payload == 0 {
		return 1
	}
	return (payload + int(h.GSOSize) - 1) / int(h.GSOSize)
}

// gsoLayout is where the headers of a frame to segment start and end.
type gsoLayout struct {
	l3, l4, hdrLen int
	v6, udp        bool
}

// NormalizeGSO returns h with HdrLen set to where the frame's TCP header
// (by its data offset) or UDP header ends. The kernel's hdr_len is only a
// hint: virtio_net_hdr_from_skb sets it to skb_headlen, which for a GRO'd
// packet on a forwarding path can be a whole segment (wireguard-go does
// not trust it either). Call it before SegmentCount and GSOSplit on a
// header that came from a kernel. A frame without GSO, or one that does
// not parse, gives h back unchanged (GSOSplit then says what is wrong).
func NormalizeGSO(frame []byte, h VnetHdr) VnetHdr {
	if h.GSOType&^VnetGSOECN == VnetGSONone {
		return h
	}
	l, err := parseGSOHeaders(frame, h)
	if err != nil {
		return h
	}
	h.HdrLen = uint16(l.hdrLen)
	return h
}

// parseGSOFrame checks frame against h and finds its IP and TCP/UDP
// headers. The L4 header start comes from the IP header; h.HdrLen must be
// where the TCP header (data offset) or UDP header ends.
func parseGSOFrame(frame []byte, h VnetHdr) (gsoLayout, error) {
	l, err := parseGSOHeaders(frame, h)
	if err != nil {
		return l, err
	}
	if int(h.HdrLen) != l.hdrLen {
		return l, fmt.Errorf("%w: header length %d, but the headers end at %d", ErrBadVnetHdr, h.HdrLen, l.hdrLen)
	}
	// The largest segment must fit the 16-bit IP and UDP length fields.
	seg := min(int(h.GSOSize), len(frame)-l.hdrLen)
	ipMax := l.hdrLen - l.l3 + seg
	if l.v6 {
		ipMax -= gsoIPv6HdrLen
	}
	if ipMax > gsoMaxIPLen {
		return l, fmt.Errorf("%w: segment size %d makes %d-byte IP packets", ErrBadVnetHdr, h.GSOSize, ipMax)
	}
	return l, nil
}

// parseGSOHeaders finds the frame's IP and TCP/UDP headers and checks them
// against h's GSO type and size (not its HdrLen).
func parseGSOHeaders(frame []byte, h VnetHdr) (gsoLayout, error) {
	var l gsoLayout
	gsoType := h.GSOType &^ VnetGSOECN
	switch gsoType {
	case VnetGSOTCPv4, VnetGSOTCPv6, VnetGSOUDPL4:
	default:
		return l, fmt.Errorf("%w: GSO type %d cannot be segmented", ErrBadVnetHdr, h.GSOType)
	}
	if h.GSOSize == 0 {
		return l, fmt.Errorf("%w: GSO type %d with segment size 0", ErrBadVnetHdr, h.GSOType)
	}
	if len(frame) < gsoEthLen {
		return l, fmt.Errorf("%w: %d-byte frame is shorter than an Ethernet header", ErrSegment, len(frame))
	}
	l.l3 = gsoEthLen
	etherType := binary.BigEndian.Uint16(frame[12:])
	if etherType == gsoTypeVLAN {
		if len(frame) < gsoEthLen+gsoVLANLen {
			return l, fmt.Errorf("%w: %d-byte frame is shorter than a VLAN-tagged Ethernet header", ErrSegment, len(frame))
		}
		l.l3 += gsoVLANLen
		etherType = binary.BigEndian.Uint16(frame[16:])
	}
	ipLen := len(frame) - l.l3
	var proto uint8
	switch etherType {
	case gsoTypeIPv4:
		if ipLen < 20 || frame[l.l3]>>4 != 4 {
			return l, fmt.Errorf("%w: bad IPv4 header", ErrSegment)
		}
		ihl := int(frame[l.l3]&0x0f) * 4
		if ihl < 20 || ihl > ipLen {
			return l, fmt.Errorf("%w: IPv4 header length %d in a %d-byte packet", ErrSegment, ihl, ipLen)
		}
		totLen := int(binary.BigEndian.Uint16(frame[l.l3+2:]))
		// A total length of 0 is how BIG TCP marks IPv4 packets over 64 KiB.
		if totLen != ipLen && !(totLen == 0 && ipLen > gsoMaxIPLen) {
			return l, fmt.Errorf("%w: IPv4 total length %d, but %d bytes follow the Ethernet header", ErrSegment, totLen, ipLen)
		}
		if frag := binary.BigEndian.Uint16(frame[l.l3+6:]); frag&0x3fff != 0 {
			return l, fmt.Errorf("%w: IPv4 fragment", ErrSegment)
		}
		proto = frame[l.l3+9]
		l.l4 = l.l3 + ihl
	case gsoTypeIPv6:
		if ipLen < gsoIPv6HdrLen || frame[l.l3]>>4 != 6 {
			return l, fmt.Errorf("%w: bad IPv6 header", ErrSegment)
		}
		if pl := int(binary.BigEndian.Uint16(frame[l.l3+4:])); pl != ipLen-gsoIPv6HdrLen {
			return l, fmt.Errorf("%w: IPv6 payload length %d, but %d bytes follow the IPv6 header", ErrSegment, pl, ipLen-gsoIPv6HdrLen)
		}
		proto = frame[l.l3+6]
		l.l4 = l.l3 + gsoIPv6HdrLen
		// Hop-by-hop and destination options headers (a kernel may send
		// them with TSO6) go into every segment with the other headers;
		// the payload length covers them, the pseudo-header does not. A
		// routing header would change the pseudo-header's destination,
		// and a fragment cannot be segmented. Each is at least 8 bytes,
		// so the walk ends.
		for proto == gsoIPv6HopByHop || proto == gsoIPv6DestOpts {
			if l.l4+8 > len(frame) {
				return l, fmt.Errorf("%w: truncated IPv6 extension header", ErrSegment)
			}
			n := (int(frame[l.l4+1]) + 1) * 8
			if l.l4+n > len(frame) {
				return l, fmt.Errorf("%w: %d-byte IPv6 extension header in a %d-byte packet", ErrSegment, n, ipLen)
			}
			proto, l.l4 = frame[l.l4], l.l4+n
		}
		if proto != gsoProtoTCP && proto != gsoProtoUDP {
			return l, fmt.Errorf("%w: IPv6 next header %d (of the extension headers only hop-by-hop and destination options are supported)", ErrSegment, proto)
		}
		l.v6 = true
	default:
		return l, fmt.Errorf("%w: EtherType 0x%04x is neither IPv4 nor IPv6", ErrSegment, etherType)
	}
	switch gsoType {
	case VnetGSOTCPv4, VnetGSOTCPv6:
		if l.v6 != (gsoType == VnetGSOTCPv6) {
			return l, fmt.Errorf("%w: GSO type %d does not match the IP version", ErrBadVnetHdr, h.GSOType)
		}
		if proto != gsoProtoTCP {
			return l, fmt.Errorf("%w: GSO type %d on IP protocol %d", ErrBadVnetHdr, h.GSOType, proto)
		}
		if l.l4+gsoTCPMinLen > len(frame) {
			return l, fmt.Errorf("%w: truncated TCP header", ErrSegment)
		}
		doff := int(frame[l.l4+12]>>4) * 4
		if doff < gsoTCPMinLen || l.l4+doff > len(frame) {
			return l, fmt.Errorf("%w: TCP data offset %d in a %d-byte segment", ErrSegment, doff, len(frame)-l.l4)
		}
		l.hdrLen = l.l4 + doff
	case VnetGSOUDPL4:
		if proto != gsoProtoUDP {
			return l, fmt.Errorf("%w: GSO type %d on IP protocol %d", ErrBadVnetHdr, h.GSOType, proto)
		}
		if l.l4+gsoUDPHdrLen > len(frame) {
			return l, fmt.Errorf("%w: truncated UDP header", ErrSegment)
		}
		l.udp = true
		l.hdrLen = l.l4 + gsoUDPHdrLen
	}
	return l, nil
}

// GSOSplit cuts frame, an Ethernet frame that the kernel handed over with
// virtio-net header h, into segments of at most h.GSOSize payload bytes.
// Segment i is written as a complete Ethernet frame into out[i][:sizes[i]];
// the out slices themselves are not changed, so each needs the capacity
// (not length) for its segment, h.HdrLen+h.GSOSize bytes at most. frame is
// not modified. It returns the number of segments, SegmentCount(len(frame), h).
//
// h.GSOType must be VnetGSOTCPv4, VnetGSOTCPv6 or VnetGSOUDPL4, optionally
// with VnetGSOECN, over Ethernet with at most one 802.1Q tag. The TCP or UDP
// header is found from the IP header (of IPv6 extension headers,
// hop-by-hop and destination options are carried into every segment;
// others are refused); h.HdrLen must equal the end of that header. h.CsumStart and
// h.CsumOffset are not used: every segment gets a new IPv4 header checksum,
// IP length, IPv4 ID (the first segment's plus i, for TCP and UDP alike, as
// the kernel does), and a full TCP or UDP checksum including the pseudo
// header, so it needs no offload afterwards. TCP segments get the sequence
// number advanced by the payload before them, FIN and PSH only on the last
// segment and CWR only on the first; UDP segments get their length set.
//
// With VnetGSONone the frame is copied into out[0] and its checksum
// finished as ChecksumFrame does, and GSOSplit returns 1.
//
// Errors wrap ErrBadVnetHdr (header inconsistent with the frame) or
// ErrSegment (malformed frame, or out or sizes too short or too small);
// on error nothing has been written. GSOSplit does not allocate.
func GSOSplit(frame []byte, h VnetHdr, out [][]byte, sizes []int) (int, error) {
	if h.GSOType != VnetGSONone {
		if n := SegmentCount(len(frame), h); len(out) < n || len(sizes) < n {
			return 0, fmt.Errorf("%w: %d segments, but %d output buffers and %d sizes", ErrSegment, n, len(out), len(sizes))
		}
	}
	return GSOSplitFrom(frame, h, 0, out, sizes)
}

// GSOSplitFrom is GSOSplit for part of the segments: it writes segment
// first+j into out[j][:sizes[j]], for as many segments from first on as
// out and sizes hold (the segments after them are left for another
// call), and returns how many it wrote. A caller whose buffers cannot hold
// every segment of a frame at once (a tiny MSS makes more than a thousand
// of a 64 KiB frame) cuts it in parts: GSOSplitFrom(frame, h, 0, ...),
// then from the first segment not yet written, until SegmentCount. The
// segments are the same as GSOSplit's, whatever the parts. With
// VnetGSONone first must be 0. It does not allocate.
func GSOSplitFrom(frame []byte, h VnetHdr, first int, out [][]byte, sizes []int) (int, error) {
	if h.GSOType == VnetGSONone {
		if first != 0 {
			return 0, fmt.Errorf("%w: segment %d of a frame without GSO", ErrSegment, first)
		}
		if len(out) < 1 || len(sizes) < 1 {
			return 0, fmt.Errorf("%w: no output buffer", ErrSegment)
		}
		if cap(out[0]) < len(frame) {
			return 0, fmt.Errorf("%w: output buffer holds %d bytes, frame has %d", ErrSegment, cap(out[0]), len(frame))
		}
		if h.Flags&VnetFlagNeedsCsum != 0 && int(h.CsumStart)+int(h.CsumOffset)+2 > len(frame) {
			return 0, fmt.Errorf("%w: checksum at %d+%d beyond the %d-byte frame", ErrBadVnetHdr, h.CsumStart, h.CsumOffset, len(frame))
		}
		b := out[0][:len(frame)]
		copy(b, frame)
		if err := ChecksumFrame(b, h); err != nil {
			return 0, err
		}
		sizes[0] = len(frame)
		return 1, nil
	}
	l, err := parseGSOFrame(frame, h)
	if err != nil {
		return 0, err
	}
	n := SegmentCount(len(frame), h)
	if first < 0 || first >= n {
		return 0, fmt.Errorf("%w: segment %d of %d", ErrSegment, first, n)
	}
	end := min(n, first+min(len(out), len(sizes)))
	if end == first {
		return 0, fmt.Errorf("%w: no output buffer", ErrSegment)
	}
	mss := int(h.GSOSize)
	hdrLen := l.hdrLen
	payload := frame[hdrLen:]
	for i := first; i < end; i++ {
		seg := min(mss, len(payload)-i*mss)
		if cap(out[i-first]) < hdrLen+seg {
			return 0, fmt.Errorf("%w: output buffer %d holds %d bytes, segment has %d", ErrSegment, i-first, cap(out[i-first]), hdrLen+seg)
		}
	}

	l3, l4 := l.l3, l.l4
	addrAt, addrLen := l3+12, 4
	proto := uint64(gsoProtoTCP)
	csumAt := l4 + gsoTCPCsumOff
	if l.v6 {
		addrAt, addrLen = l3+8, 16
	}
	if l.udp {
		proto = gsoProtoUDP
		csumAt = l4 + gsoUDPCsumOff
	}
	// The pseudo-header sum without the length, the same for every segment.
	pseudo := gsoSum(frame[addrAt:addrAt+2*addrLen], proto)
	id := binary.BigEndian.Uint16(frame[l3+4:])
	seq := binary.BigEndian.Uint32(frame[l4+4:])
	tcpFlags := frame[l4+gsoTCPFlagsOff]

	for i := first; i < end; i++ {
		data := payload[i*mss:]
		data = data[:min(mss, len(data))]
		size := hdrLen + len(data)
		b := out[i-first][:size]
		copy(b, frame[:hdrLen])
		copy(b[hdrLen:], data)

		if l.v6 {
			binary.BigEndian.PutUint16(b[l3+4:], uint16(size-l3-gsoIPv6HdrLen))
		} else {
			binary.BigEndian.PutUint16(b[l3+2:], uint16(size-l3))
			binary.BigEndian.PutUint16(b[l3+4:], id+uint16(i))
			b[l3+10], b[l3+11] = 0, 0
			binary.BigEndian.PutUint16(b[l3+10:], ^gsoFold(gsoSum(b[l3:l4], 0)))
		}

		l4Len := size - l4
		if l.udp {
			binary.BigEndian.PutUint16(b[l4+4:], uint16(l4Len))
		} else {
			binary.BigEndian.PutUint32(b[l4+4:], seq+uint32(i)*uint32(mss))
			f := tcpFlags
			if i != n-1 {
				f &^= gsoTCPFlagFIN | gsoTCPFlagPSH
			}
			if i != 0 {
				f &^= gsoTCPFlagCWR
			}
			b[l4+gsoTCPFlagsOff] = f
		}

		b[csumAt], b[csumAt+1] = 0, 0
		c := ^gsoFold(gsoSum(b[l4:size], pseudo+uint64(l4Len)))
		if c == 0 && l.udp {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(b[csumAt:], c)
		sizes[i-first] = size
	}
	return end - first, nil
}

// gsoSum adds b, read as big-endian 16-bit words (an odd last byte padded
// with a zero), to the one's-complement accumulator acc. The result is only
// meaningful after gsoFold. It works on 64-bit words with end-around carry,
// which folds to the same 16-bit sum.
func gsoSum(b []byte, acc uint64) uint64 {
	var carries, c uint64
	for len(b) >= 32 {
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b), 0)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[8:]), c)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[16:]), c)
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b[24:]), c)
		carries += c
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, c = bits.Add64(acc, binary.BigEndian.Uint64(b), 0)
		carries += c
		b = b[8:]
	}
	var tail uint64
	if len(b) >= 4 {
		tail += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		tail += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		tail += uint64(b[0]) << 8
	}
	acc, c = bits.Add64(acc, carries+tail, 0)
	return acc + c
}

// ChecksumAdd adds b to acc as big-endian 16-bit words: the Internet
// checksum's one's-complement sum (RFC 1071), not yet folded. Start a
// pseudo-header sum with acc = protocol + length.
func ChecksumAdd(b []byte, acc uint64) uint64 { return gsoSum(b, acc) }

// ChecksumFold folds a ChecksumAdd sum to 16 bits (not complemented: that
// is the partial checksum a CHECKSUM_PARTIAL header carries).
func ChecksumFold(acc uint64) uint16 { return gsoFold(acc) }

// gsoFold folds a gsoSum accumulator to 16 bits.
func gsoFold(acc uint64) uint16 {
	acc = acc>>32 + acc&0xffffffff
	for acc > 0xffff {
		acc = acc>>16 + acc&0xffff
	}
	return uint16(acc)
}
