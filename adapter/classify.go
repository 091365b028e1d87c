package adapter

// The receive DPC's per-frame decision as a pure function: validation
// (runt, oversize) and the NDIS packet filter, with no adapter state, so it
// can be table-tested and fuzzed on its own (FuzzClassify).
//
// indicate() in datapath.go calls it for every frame that passed the
// virtio-net header check; FuzzReceiveDPC feeds frames to the real DPC
// over a socketpair and checks that the counter that moved is the one
// classify names.

import "github.com/tapminiport/tapminiport/ndisshim"

// verdict is what the receive DPC does with one frame read from the hardware.
type verdict uint8

const (
	verdictIndicate verdict = iota // good: chained into the indication
	verdictRunt                    // shorter than an Ethernet header: Counters.RxDropRunt
	verdictOversize                // longer than the largest frame: Counters.RxDropOversize
	verdictFiltered                // the packet filter rejects its destination: Counters.RxDropFiltered
)

func (v verdict) String() string {
	switch v {
	case verdictIndicate:
		return "indicate"
	case verdictRunt:
		return "runt"
	case verdictOversize:
		return "oversize"
	case verdictFiltered:
		return "filtered"
	}
	return "verdict(?)"
}

// classify decides what happens to frame, the bytes the hardware delivered
// (a frame's destination MAC is its first 6 bytes): shorter than 14 bytes
// is a runt; longer than maxFrame (MTU + header + VLAN tag) is oversize;
// otherwise the packet filter (NDIS_PACKET_TYPE_* bits) decides, with mac
// the NIC's current address (6 bytes) and multicast its multicast list.
// The checks run in that order, as in the DPC, so a frame is counted under
// the first cause that applies. It reads frame and multicast and keeps
// neither.
func classify(frame []byte, mac []byte, filter uint32, maxFrame int, multicast [][6]byte) verdict {
	switch {
	case len(frame) < 14:
		return verdictRunt
	case len(frame) > maxFrame:
		return verdictOversize
	case !filterAccepts(frame[:6], mac, filter, multicast):
		return verdictFiltered
	}
	return verdictIndicate
}

// filterAccepts applies the NDIS packet filter to a destination MAC: the
// decision of Miniport.accept, without the adapter.
func filterAccepts(dst, mac []byte, filter uint32, multicast [][6]byte) bool {
	if filter&ndisshim.PacketTypePromiscuous != 0 {
		return true
	}
	if dst[0]&1 == 0 { // unicast
		return filter&ndisshim.PacketTypeDirected != 0 && string(dst) == string(mac)
	}
	if string(dst) == "\xff\xff\xff\xff\xff\xff" {
		return filter&ndisshim.PacketTypeBroadcast != 0
	}
	if filter&ndisshim.PacketTypeAllMulticast != 0 {
		return true
	}
	if filter&ndisshim.PacketTypeMulticast == 0 {
		return false
	}
	for _, a := range multicast {
		if string(a[:]) == string(dst) {
			return true
		}
	}
	return false
}
