package tapdev

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// VnetHdr is struct virtio_net_hdr (with num_buffers: VnetHdrLen bytes),
// the prefix of every frame on a TAP opened with Options.VnetHdr. It says
// how the kernel left the frame: a partial checksum to finish
// (NEEDS_CSUM), a checksum already verified (DATA_VALID), and a large
// frame to cut into GsoSize pieces (GSO).
type VnetHdr struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
}

// virtio_net_hdr flags and GSO types.
const (
	VnetFlagNeedsCsum = 1    // VIRTIO_NET_HDR_F_NEEDS_CSUM
	VnetFlagDataValid = 2    // VIRTIO_NET_HDR_F_DATA_VALID
	VnetGSONone       = 0    // VIRTIO_NET_HDR_GSO_NONE
	VnetGSOTCPv4      = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	VnetGSOUDP        = 3    // VIRTIO_NET_HDR_GSO_UDP (UFO, obsolete)
	VnetGSOTCPv6      = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	VnetGSOUDPL4      = 5    // VIRTIO_NET_HDR_GSO_UDP_L4 (USO)
	VnetGSOECN        = 0x80 // VIRTIO_NET_HDR_GSO_ECN
)

// ErrBadVnetHdr is wrapped by DecodeVnetHdr's errors: a malformed header
// is a frame to count and drop, never to pass on.
var ErrBadVnetHdr = errors.New("bad virtio-net header")

// DecodeVnetHdr reads the header in b[:VnetHdrLen] and checks it against
// the frameLen bytes of frame that follow: a known GSO type with a
// non-zero segment size and a header length inside the frame, and a
// checksum location inside the frame.
func DecodeVnetHdr(b []byte, frameLen int) (VnetHdr, error) {
	if len(b) < VnetHdrLen {
		return VnetHdr{}, fmt.Errorf("%w: %d bytes, need %d", ErrBadVnetHdr, len(b), VnetHdrLen)
	}
	h := VnetHdr{
		Flags: b[0], GSOType: b[1],
		HdrLen:     binary.LittleEndian.Uint16(b[2:]),
		GSOSize:    binary.LittleEndian.Uint16(b[4:]),
		CsumStart:  binary.LittleEndian.Uint16(b[6:]),
		CsumOffset: binary.LittleEndian.Uint16(b[8:]),
	}
	switch h.GSOType &^ VnetGSOECN {
	case VnetGSONone:
		if h.GSOType&VnetGSOECN != 0 {
			return h, fmt.Errorf("%w: ECN without GSO", ErrBadVnetHdr)
		}
	case VnetGSOTCPv4, VnetGSOTCPv6, VnetGSOUDPL4:
		if h.GSOSize == 0 {
			return h, fmt.Errorf("%w: GSO type %d with segment size 0", ErrBadVnetHdr, h.GSOType)
		}
		if int(h.HdrLen) > frameLen {
			return h, fmt.Errorf("%w: header length %d beyond the %d-byte frame", ErrBadVnetHdr, h.HdrLen, frameLen)
		}
	default:
		return h, fmt.Errorf("%w: unknown GSO type %d", ErrBadVnetHdr, h.GSOType)
	}
	if h.Flags&VnetFlagNeedsCsum != 0 && int(h.CsumStart)+int(h.CsumOffset)+2 > frameLen {
		return h, fmt.Errorf("%w: checksum at %d+%d beyond the %d-byte frame", ErrBadVnetHdr, h.CsumStart, h.CsumOffset, frameLen)
	}
	if h.Flags&^(VnetFlagNeedsCsum|VnetFlagDataValid) != 0 {
		return h, fmt.Errorf("%w: unknown flags 0x%02x", ErrBadVnetHdr, h.Flags)
	}
	return h, nil
}

// Encode writes the header into b[:VnetHdrLen] (num_buffers 0).
func (h VnetHdr) Encode(b []byte) {
	_ = b[VnetHdrLen-1]
	b[0], b[1] = h.Flags, h.GSOType
	binary.LittleEndian.PutUint16(b[2:], h.HdrLen)
	binary.LittleEndian.PutUint16(b[4:], h.GSOSize)
	binary.LittleEndian.PutUint16(b[6:], h.CsumStart)
	binary.LittleEndian.PutUint16(b[8:], h.CsumOffset)
	binary.LittleEndian.PutUint16(b[10:], 0)
}

// NBLInfo maps the header to NDIS out-of-band information: NEEDS_CSUM is
// a checksum offload request (NDIS_TCP_IP_CHECKSUM_NET_BUFFER_LIST_INFO),
// DATA_VALID a verified receive checksum, GSO a large send
// (NDIS_TCP_LARGE_SEND_OFFLOAD_NET_BUFFER_LIST_INFO v2).
//
// The GSO type says the IP version for TCP only: a UDP segmentation (USO)
// header is the same for IPv4 and IPv6, and NBLInfo, which does not see
// the frame, marks it IPv4. Use NBLInfoFor when the frame is at hand.
func (h VnetHdr) NBLInfo() ndisshim.NBLInfo {
	return h.NBLInfoFor(nil)
}

// NBLInfoFor is NBLInfo for the Ethernet frame that follows the header:
// a USO send is IPv6 when the frame is (EtherType 0x86DD, untagged or
// behind one 802.1Q tag), so that OffloadCaps.Takes checks USOIPv6 for
// it, not USOIPv4. frame is only read; nil reads as IPv4.
func (h VnetHdr) NBLInfoFor(frame []byte) ndisshim.NBLInfo {
	var in ndisshim.NBLInfo
	if h.Flags&VnetFlagNeedsCsum != 0 {
		in.Checksum = ndisshim.ChecksumInfo{NeedsChecksum: true, CsumStart: h.CsumStart, CsumOffset: h.CsumOffset}
	}
	in.Checksum.ChecksumValid = h.Flags&VnetFlagDataValid != 0
	switch h.GSOType &^ VnetGSOECN {
	case VnetGSOTCPv4, VnetGSOTCPv6, VnetGSOUDPL4:
		udp := h.GSOType&^VnetGSOECN == VnetGSOUDPL4
		in.LSO = ndisshim.LSOInfo{MSS: h.GSOSize, HeaderLen: h.HdrLen,
			IPv6: h.GSOType&^VnetGSOECN == VnetGSOTCPv6 || udp && isIPv6Frame(frame),
			UDP:  udp, ECN: h.GSOType&VnetGSOECN != 0}
	}
	return in
}

// isIPv6Frame reports whether an Ethernet frame carries IPv6, untagged or
// behind one 802.1Q tag (as GSOSplit parses it).
func isIPv6Frame(f []byte) bool {
	if len(f) >= gsoEthLen+gsoVLANLen && binary.BigEndian.Uint16(f[12:]) == gsoTypeVLAN {
		return binary.BigEndian.Uint16(f[16:]) == gsoTypeIPv6
	}
	return len(f) >= gsoEthLen && binary.BigEndian.Uint16(f[12:]) == gsoTypeIPv6
}

// VnetHdrFromNBLInfo is the inverse of NBLInfo and NBLInfoFor, for a frame going out on a
// TAP opened with Options.VnetHdr.
func VnetHdrFromNBLInfo(in ndisshim.NBLInfo) VnetHdr {
	var h VnetHdr
	if in.Checksum.NeedsChecksum {
		h.Flags |= VnetFlagNeedsCsum
		h.CsumStart, h.CsumOffset = in.Checksum.CsumStart, in.Checksum.CsumOffset
	}
	if in.Checksum.ChecksumValid {
		h.Flags |= VnetFlagDataValid
	}
	if in.LSO.MSS > 0 {
		switch {
		case in.LSO.UDP:
			h.GSOType = VnetGSOUDPL4
		case in.LSO.IPv6:
			h.GSOType = VnetGSOTCPv6
		default:
			h.GSOType = VnetGSOTCPv4
		}
		if in.LSO.ECN {
			h.GSOType |= VnetGSOECN
		}
		h.GSOSize, h.HdrLen = in.LSO.MSS, in.LSO.HeaderLen
	}
	return h
}
