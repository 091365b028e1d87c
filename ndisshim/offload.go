package ndisshim

import "encoding/binary"

// OffloadCaps is what OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES and
// OID_TCP_OFFLOAD_CURRENT_CONFIG answer: a reduced NDIS_OFFLOAD, six
// little-endian ULONGs: checksum offload (1 = TCP/UDP over IPv4 and IPv6,
// both directions), LSOv2 IPv4 maximum size, LSOv2 IPv6 maximum size,
// LSOv2 minimum segment count, USO IPv4 maximum size, USO IPv6 maximum
// size (NDIS_UDP_SEGMENTATION_OFFLOAD). A size of 0 means not offered.
type OffloadCaps struct {
	Checksum             uint32
	LSOv2IPv4, LSOv2IPv6 uint32
	MinSegmentCount      uint32
	USOIPv4, USOIPv6     uint32
}

// OffloadCapsLen is the size of an OffloadCaps answer.
const OffloadCapsLen = 24

// Marshal encodes the caps as the OIDs answer them.
func (c OffloadCaps) Marshal() []byte {
	b := make([]byte, OffloadCapsLen)
	for i, v := range []uint32{c.Checksum, c.LSOv2IPv4, c.LSOv2IPv6, c.MinSegmentCount, c.USOIPv4, c.USOIPv6} {
		binary.LittleEndian.PutUint32(b[4*i:], v)
	}
	return b
}

// UnmarshalOffloadCaps decodes an answer; a shorter (older) answer leaves
// the later fields 0.
func UnmarshalOffloadCaps(b []byte) OffloadCaps {
	var v [6]uint32
	for i := range v {
		if len(b) >= 4*i+4 {
			v[i] = binary.LittleEndian.Uint32(b[4*i:])
		}
	}
	return OffloadCaps{Checksum: v[0], LSOv2IPv4: v[1], LSOv2IPv6: v[2], MinSegmentCount: v[3], USOIPv4: v[4], USOIPv6: v[5]}
}

// Takes reports whether a miniport with these caps takes an NBL with this
// out-of-band information as it is: its large send (TCP over IPv4 or IPv6,
// or UDP) and its checksum request are offered. A protocol segments or
// checksums in software what it does not take.
func (c OffloadCaps) Takes(in NBLInfo) bool {
	if in.Checksum.NeedsChecksum && c.Checksum == 0 {
		return false
	}
	if in.LSO.MSS == 0 {
		return true
	}
	switch {
	case in.LSO.UDP && in.LSO.IPv6:
		return c.USOIPv6 > 0
	case in.LSO.UDP:
		return c.USOIPv4 > 0
	case in.LSO.IPv6:
		return c.LSOv2IPv6 > 0
	default:
		return c.LSOv2IPv4 > 0
	}
}
