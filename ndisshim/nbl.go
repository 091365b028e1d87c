package ndisshim

import (
	"sync/atomic"
)

// NetBuffer is an NDIS NET_BUFFER: a view of Length bytes starting at Offset
// in Data (the MDL chain collapsed to one slice). Data is the whole backing
// buffer, so a layer can prepend a header into the space before Offset
// (NdisRetreatNetBufferDataStart) or drop one (NdisAdvanceNetBufferDataStart).
type NetBuffer struct {
	Next   *NetBuffer // NET_BUFFER_NEXT_NB
	Data   []byte     // the backing buffer (MDL)
	Offset int        // NET_BUFFER_DATA_OFFSET
	Length int        // NET_BUFFER_DATA_LENGTH
}

// Bytes returns the buffer's data: Data[Offset:Offset+Length]. It does not copy.
func (nb *NetBuffer) Bytes() []byte { return nb.Data[nb.Offset : nb.Offset+nb.Length] }

// SetBytes points the view at n bytes starting at off in Data.
func (nb *NetBuffer) SetBytes(off, n int) { nb.Offset, nb.Length = off, n }

// ChecksumInfo is the TCP/IP checksum out-of-band information
// (NDIS_TCP_IP_CHECKSUM_NET_BUFFER_LIST_INFO), both directions in one value.
type ChecksumInfo struct {
	// Transmit: the protocol asks the miniport to compute checksums.
	// CsumStart/CsumOffset are in virtio-net's terms (where checksumming
	// starts, where to store it relative to start).
	NeedsChecksum bool
	CsumStart     uint16
	CsumOffset    uint16
	// Receive: the miniport says what it verified.
	ChecksumValid bool // the hardware (or the kernel on the TAP) validated the transport checksum
}

// LSOInfo is the large-send-offload out-of-band information
// (NDIS_TCP_LARGE_SEND_OFFLOAD_NET_BUFFER_LIST_INFO, v2): the frame is larger
// than the MTU and the miniport segments it into MSS-sized pieces.
type LSOInfo struct {
	MSS        uint16 // 0: no large send
	HeaderLen  uint16 // bytes of Ethernet+IP+TCP/UDP headers
	IPv6       bool
	UDP        bool // UDP segmentation offload (USO) instead of TCP
	ECN        bool
	SegmentOut uint32 // miniport writes back the bytes sent (TcpPayload on completion)
}

// NBLInfo is the NET_BUFFER_LIST_INFO out-of-band area the shim carries.
type NBLInfo struct {
	Checksum ChecksumInfo
	LSO      LSOInfo
	// HashValue is the RSS hash of the frame's flow
	// (NET_BUFFER_LIST_HASH_VALUE), set by a miniport with several receive
	// queues; a protocol keeps a flow on one processor by it.
	HashValue uint32
}

// NetBufferList is an NDIS NET_BUFFER_LIST. It carries one or more NetBuffers
// (one on receive here) and links to the next NBL of a chain through Next.
//
// Ownership: an NBL has exactly one owner at a time. The shim's ledger tracks
// it (see ownership.go): allocated from a pool it belongs to the allocating
// driver; indicated without RESOURCES it belongs to the protocol until
// ReturnNetBufferLists; sent it belongs to the miniport until
// SendNetBufferListsComplete. Touch an NBL only while you own it.
type NetBufferList struct {
	Next    *NetBufferList // NET_BUFFER_LIST_NEXT_NBL
	FirstNB *NetBuffer     // NET_BUFFER_LIST_FIRST_NB
	// SourceHandle is set by the shim: the binding that sent the NBL
	// (NdisSendNetBufferLists) or the adapter that indicated it.
	SourceHandle any
	Status       Status // NET_BUFFER_LIST_STATUS, set on completion
	Info         NBLInfo
	// Per-layer scratch, owned by whoever owns the NBL for the moment:
	// integers only (indices, flags), so the GC never sees a hidden pointer.
	MiniportReserved [2]uintptr
	ProtocolReserved [4]uintptr

	nb    NetBuffer // the NetBuffer allocated with the NBL (pool with NB)
	pool  *NBLPool
	index int32

	// ledger state; see ownership.go
	state      atomic.Uint32
	heldSince  atomic.Int64 // nanotime of the indication or send, for the watchdog
	bindingIdx atomic.Int32 // which binding holds it while indicated
}

// Pool returns the pool the NBL was allocated from.
func (n *NetBufferList) Pool() *NBLPool { return n.pool }

// Index returns the NBL's index in its pool: 0 <= Index < Pool().Size().
// rxpool uses it as the back-pointer from an NBL to its receive block.
func (n *NetBufferList) Index() int { return int(n.index) }

// Bytes returns the first NetBuffer's data, or nil when the NBL has none.
func (n *NetBufferList) Bytes() []byte {
	if n.FirstNB == nil {
		return nil
	}
	return n.FirstNB.Bytes()
}

// ChainLen counts the NBLs of the chain that starts at n.
func ChainLen(n *NetBufferList) int {
	c := 0
	for ; n != nil; n = n.Next {
		c++
	}
	return c
}

// SmallExchange reports whether the chain is at most 2 NBLs whose first
// NET_BUFFERs are at most 256 bytes each: the shape of a ping, an ACK, a
// SYN or a DNS query, a frame whose answer someone is waiting for. It
// looks at 3 NBLs at most. The miniport's receive poll after a send and
// the binding's NIC TAP poll after a receive both go by it.
func SmallExchange(nbls *NetBufferList) bool {
	const maxNBLs, maxLen = 2, 256
	count := 0
	for n := nbls; n != nil; n = n.Next {
		count++
		if count > maxNBLs || n.FirstNB == nil || n.FirstNB.Length > maxLen {
			return false
		}
	}
	return count > 0
}

// Chain links nbls in order and returns the head; a nil slice gives nil.
func Chain(nbls ...*NetBufferList) *NetBufferList {
	var head, tail *NetBufferList
	for _, n := range nbls {
		n.Next = nil
		if head == nil {
			head = n
		} else {
			tail.Next = n
		}
		tail = n
	}
	return head
}
