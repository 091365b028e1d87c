package ndisshim

import (
	"encoding/binary"
	"fmt"
)

// OID is an NDIS object identifier. The values are NDIS's.
type OID uint32

// The OIDs the shim names. A miniport answers the mandatory general and
// 802.3 ones and may support the rest.
const (
	OIDGenSupportedList        OID = 0x00010101 // OID_GEN_SUPPORTED_LIST
	OIDGenHardwareStatus       OID = 0x00010102 // OID_GEN_HARDWARE_STATUS
	OIDGenMediaSupported       OID = 0x00010103 // OID_GEN_MEDIA_SUPPORTED
	OIDGenMediaInUse           OID = 0x00010104 // OID_GEN_MEDIA_IN_USE
	OIDGenMaximumLookahead     OID = 0x00010105 // OID_GEN_MAXIMUM_LOOKAHEAD
	OIDGenMaximumFrameSize     OID = 0x00010106 // OID_GEN_MAXIMUM_FRAME_SIZE
	OIDGenLinkSpeed            OID = 0x00010107 // OID_GEN_LINK_SPEED
	OIDGenTransmitBufferSpace  OID = 0x00010108 // OID_GEN_TRANSMIT_BUFFER_SPACE
	OIDGenReceiveBufferSpace   OID = 0x00010109 // OID_GEN_RECEIVE_BUFFER_SPACE
	OIDGenVendorID             OID = 0x0001010C // OID_GEN_VENDOR_ID
	OIDGenVendorDescription    OID = 0x0001010D // OID_GEN_VENDOR_DESCRIPTION
	OIDGenCurrentPacketFilter  OID = 0x0001010E // OID_GEN_CURRENT_PACKET_FILTER
	OIDGenCurrentLookahead     OID = 0x0001010F // OID_GEN_CURRENT_LOOKAHEAD
	OIDGenDriverVersion        OID = 0x00010110 // OID_GEN_DRIVER_VERSION
	OIDGenMaximumTotalSize     OID = 0x00010111 // OID_GEN_MAXIMUM_TOTAL_SIZE
	OIDGenMediaConnectStatus   OID = 0x00010114 // OID_GEN_MEDIA_CONNECT_STATUS
	OIDGenVendorDriverVersion  OID = 0x00010116 // OID_GEN_VENDOR_DRIVER_VERSION
	OIDGenLinkState            OID = 0x00010247 // OID_GEN_LINK_STATE
	OIDGenStatistics           OID = 0x00020106 // OID_GEN_STATISTICS
	OIDGenXmitOK               OID = 0x00020101 // OID_GEN_XMIT_OK
	OIDGenRcvOK                OID = 0x00020102 // OID_GEN_RCV_OK
	OIDGenXmitError            OID = 0x00020103 // OID_GEN_XMIT_ERROR
	OIDGenRcvError             OID = 0x00020104 // OID_GEN_RCV_ERROR
	OIDGenRcvNoBuffer          OID = 0x00020105 // OID_GEN_RCV_NO_BUFFER
	OID8023PermanentAddress    OID = 0x01010101 // OID_802_3_PERMANENT_ADDRESS
	OID8023CurrentAddress      OID = 0x01010102 // OID_802_3_CURRENT_ADDRESS
	OID8023MulticastList       OID = 0x01010103 // OID_802_3_MULTICAST_LIST
	OID8023MaximumListSize     OID = 0x01010104 // OID_802_3_MAXIMUM_LIST_SIZE
	OIDTCPOffloadHardwareCaps  OID = 0xFC01020F // OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES
	OIDTCPOffloadCurrentConfig OID = 0xFC01020B // OID_TCP_OFFLOAD_CURRENT_CONFIG
)

var oidNames = map[OID]string{
	OIDGenSupportedList: "OID_GEN_SUPPORTED_LIST", OIDGenHardwareStatus: "OID_GEN_HARDWARE_STATUS",
	OIDGenMediaSupported: "OID_GEN_MEDIA_SUPPORTED", OIDGenMediaInUse: "OID_GEN_MEDIA_IN_USE",
	OIDGenMaximumLookahead: "OID_GEN_MAXIMUM_LOOKAHEAD", OIDGenMaximumFrameSize: "OID_GEN_MAXIMUM_FRAME_SIZE",
	OIDGenLinkSpeed: "OID_GEN_LINK_SPEED", OIDGenTransmitBufferSpace: "OID_GEN_TRANSMIT_BUFFER_SPACE",
	OIDGenReceiveBufferSpace: "OID_GEN_RECEIVE_BUFFER_SPACE", OIDGenVendorID: "OID_GEN_VENDOR_ID",
	OIDGenVendorDescription: "OID_GEN_VENDOR_DESCRIPTION", OIDGenCurrentPacketFilter: "OID_GEN_CURRENT_PACKET_FILTER",
	OIDGenCurrentLookahead: "OID_GEN_CURRENT_LOOKAHEAD", OIDGenDriverVersion: "OID_GEN_DRIVER_VERSION",
	OIDGenMaximumTotalSize: "OID_GEN_MAXIMUM_TOTAL_SIZE", OIDGenMediaConnectStatus: "OID_GEN_MEDIA_CONNECT_STATUS",
	OIDGenVendorDriverVersion: "OID_GEN_VENDOR_DRIVER_VERSION", OIDGenLinkState: "OID_GEN_LINK_STATE",
	OIDGenStatistics: "OID_GEN_STATISTICS", OIDGenXmitOK: "OID_GEN_XMIT_OK", OIDGenRcvOK: "OID_GEN_RCV_OK",
	OIDGenXmitError: "OID_GEN_XMIT_ERROR", OIDGenRcvError: "OID_GEN_RCV_ERROR", OIDGenRcvNoBuffer: "OID_GEN_RCV_NO_BUFFER",
	OID8023PermanentAddress: "OID_802_3_PERMANENT_ADDRESS", OID8023CurrentAddress: "OID_802_3_CURRENT_ADDRESS",
	OID8023MulticastList: "OID_802_3_MULTICAST_LIST", OID8023MaximumListSize: "OID_802_3_MAXIMUM_LIST_SIZE",
	OIDTCPOffloadHardwareCaps: "OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES", OIDTCPOffloadCurrentConfig: "OID_TCP_OFFLOAD_CURRENT_CONFIG",
}

func (o OID) String() string {
	if n, ok := oidNames[o]; ok {
		return n
	}
	return fmt.Sprintf("OID(0x%08X)", uint32(o))
}

// Packet filter bits (NDIS_PACKET_TYPE_*).
const (
	PacketTypeDirected     uint32 = 0x01
	PacketTypeMulticast    uint32 = 0x02
	PacketTypeAllMulticast uint32 = 0x04
	PacketTypeBroadcast    uint32 = 0x08
	PacketTypePromiscuous  uint32 = 0x20
)

// MediaConnectState values (NdisMediaStateConnected / Disconnected).
const (
	MediaStateConnected    uint32 = 0
	MediaStateDisconnected uint32 = 1
)

// OIDRequestType is NDIS_REQUEST_TYPE.
type OIDRequestType int

// The request types.
const (
	OIDQuery OIDRequestType = iota // NdisRequestQueryInformation
	OIDSet                         // NdisRequestSetInformation
)

// OIDRequest is an NDIS_OID_REQUEST. For a query the miniport writes its
// answer into InformationBuffer and sets BytesWritten, or returns
// StatusBufferTooShort with BytesNeeded; for a set it reads InformationBuffer
// and sets BytesRead. Integers are little-endian, as on Windows.
type OIDRequest struct {
	Type              OIDRequestType
	OID               OID
	Port              PortNumber
	InformationBuffer []byte
	BytesWritten      int
	BytesRead         int
	BytesNeeded       int
}

// NewQuery makes a query for oid with an answer buffer of size bytes.
func NewQuery(oid OID, size int) *OIDRequest {
	return &OIDRequest{Type: OIDQuery, OID: oid, InformationBuffer: make([]byte, size)}
}

// NewSetUint32 makes a set of oid to v.
func NewSetUint32(oid OID, v uint32) *OIDRequest {
	r := &OIDRequest{Type: OIDSet, OID: oid, InformationBuffer: make([]byte, 4)}
	binary.LittleEndian.PutUint32(r.InformationBuffer, v)
	return r
}

// WriteBytes answers a query with b (or asks for more room).
func (r *OIDRequest) WriteBytes(b []byte) Status {
	if len(r.InformationBuffer) < len(b) {
		r.BytesNeeded = len(b)
		return StatusBufferTooShort
	}
	r.BytesWritten = copy(r.InformationBuffer, b)
	return StatusSuccess
}

// WriteUint32 answers a query with a ULONG.
func (r *OIDRequest) WriteUint32(v uint32) Status {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	return r.WriteBytes(b[:])
}

// WriteUint64 answers a query with a ULONG64.
func (r *OIDRequest) WriteUint64(v uint64) Status {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return r.WriteBytes(b[:])
}

// Uint32 reads the ULONG a set carries.
func (r *OIDRequest) Uint32() (uint32, Status) {
	if len(r.InformationBuffer) < 4 {
		r.BytesNeeded = 4
		return 0, StatusInvalidLength
	}
	r.BytesRead = 4
	return binary.LittleEndian.Uint32(r.InformationBuffer), StatusSuccess
}

// Answer returns the bytes a successful query wrote.
func (r *OIDRequest) Answer() []byte { return r.InformationBuffer[:r.BytesWritten] }

// AnswerUint32 reads back a ULONG answer.
func (r *OIDRequest) AnswerUint32() uint32 {
	if r.BytesWritten < 4 {
		return 0
	}
	return binary.LittleEndian.Uint32(r.InformationBuffer)
}

// AnswerUint64 reads back a ULONG64 answer (or a ULONG one, widened).
func (r *OIDRequest) AnswerUint64() uint64 {
	switch {
	case r.BytesWritten >= 8:
		return binary.LittleEndian.Uint64(r.InformationBuffer)
	case r.BytesWritten >= 4:
		return uint64(binary.LittleEndian.Uint32(r.InformationBuffer))
	}
	return 0
}

// StatisticsInfo is NDIS_STATISTICS_INFO's counters, in that order.
type StatisticsInfo struct {
	RcvDiscards, RcvError, DirectedFramesRcv, DirectedBytesRcv     uint64
	XmitError, XmitDiscards, DirectedFramesXmit, DirectedBytesXmit uint64
	RcvNoBuffer                                                    uint64
}

// Marshal encodes the statistics as 9 little-endian ULONG64s.
func (s StatisticsInfo) Marshal() []byte {
	v := []uint64{s.RcvDiscards, s.RcvError, s.DirectedFramesRcv, s.DirectedBytesRcv, s.XmitError, s.XmitDiscards,
		s.DirectedFramesXmit, s.DirectedBytesXmit, s.RcvNoBuffer}
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], x)
	}
	return b
}

// UnmarshalStatistics decodes what Marshal wrote.
func UnmarshalStatistics(b []byte) (StatisticsInfo, error) {
	if len(b) < 72 {
		return StatisticsInfo{}, fmt.Errorf("ndisshim: statistics of %d bytes, need 72", len(b))
	}
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	return StatisticsInfo{u(0), u(1), u(2), u(3), u(4), u(5), u(6), u(7), u(8)}, nil
}
