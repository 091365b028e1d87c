package adapter

// The control path (NetVMini's ctrlpath.c): OID queries and sets.

import (
	"encoding/binary"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/tapdev"
)

// supportedOIDs is the answer to OID_GEN_SUPPORTED_LIST.
var supportedOIDs = []ndisshim.OID{
	ndisshim.OIDGenSupportedList, ndisshim.OIDGenHardwareStatus, ndisshim.OIDGenMediaSupported,
	ndisshim.OIDGenMediaInUse, ndisshim.OIDGenMaximumLookahead, ndisshim.OIDGenMaximumFrameSize,
	ndisshim.OIDGenLinkSpeed, ndisshim.OIDGenTransmitBufferSpace, ndisshim.OIDGenReceiveBufferSpace,
	ndisshim.OIDGenVendorID, ndisshim.OIDGenVendorDescription, ndisshim.OIDGenCurrentPacketFilter,
	ndisshim.OIDGenCurrentLookahead, ndisshim.OIDGenDriverVersion, ndisshim.OIDGenMaximumTotalSize,
	ndisshim.OIDGenMediaConnectStatus, ndisshim.OIDGenVendorDriverVersion, ndisshim.OIDGenLinkState,
	ndisshim.OIDGenStatistics, ndisshim.OIDGenXmitOK, ndisshim.OIDGenRcvOK, ndisshim.OIDGenXmitError,
	ndisshim.OIDGenRcvError, ndisshim.OIDGenRcvNoBuffer, ndisshim.OID8023PermanentAddress,
	ndisshim.OID8023CurrentAddress, ndisshim.OID8023MulticastList, ndisshim.OID8023MaximumListSize,
	ndisshim.OIDTCPOffloadHardwareCaps, ndisshim.OIDTCPOffloadCurrentConfig,
}

// VendorDescription answers OID_GEN_VENDOR_DESCRIPTION.
const VendorDescription = "tapminiport NDIS-style TAP miniport"

const maxMulticast = 32

// OIDRequest is MiniportOidRequest.
func (m *Miniport) OIDRequest(req *ndisshim.OIDRequest) ndisshim.Status {
	if m.removed.Load() {
		return ndisshim.StatusNotAccepted
	}
	if req.Type == ndisshim.OIDSet {
		return m.set(req)
	}
	return m.query(req)
}

func (m *Miniport) query(req *ndisshim.OIDRequest) ndisshim.Status {
	c := m.ctr.snapshot()
	switch req.OID {
	case ndisshim.OIDGenSupportedList:
		b := make([]byte, 4*len(supportedOIDs))
		for i, o := range supportedOIDs {
			binary.LittleEndian.PutUint32(b[4*i:], uint32(o))
		}
		return req.WriteBytes(b)
	case ndisshim.OIDGenHardwareStatus:
		return req.WriteUint32(0) // NdisHardwareStatusReady
	case ndisshim.OIDGenMediaSupported, ndisshim.OIDGenMediaInUse:
		return req.WriteUint32(0) // NdisMedium802_3
	case ndisshim.OIDGenMaximumLookahead, ndisshim.OIDGenMaximumFrameSize:
		return req.WriteUint32(uint32(m.cfg.MTU))
	case ndisshim.OIDGenMaximumTotalSize:
		return req.WriteUint32(uint32(m.cfg.MTU + 14))
	case ndisshim.OIDGenLinkSpeed:
		return req.WriteUint32(uint32(m.cfg.LinkSpeedBps / 100)) // in units of 100 bit/s
	case ndisshim.OIDGenTransmitBufferSpace:
		return req.WriteUint32(uint32(256 * m.cfg.maxFrame()))
	case ndisshim.OIDGenReceiveBufferSpace:
		return req.WriteUint32(uint32(m.cfg.RxBuffers * m.cfg.maxFrame()))
	case ndisshim.OIDGenVendorID:
		return req.WriteUint32(uint32(m.mac[0])<<16 | uint32(m.mac[1])<<8 | uint32(m.mac[2]))
	case ndisshim.OIDGenVendorDescription:
		return req.WriteBytes(append([]byte(VendorDescription), 0))
	case ndisshim.OIDGenCurrentPacketFilter:
		return req.WriteUint32(m.filter.Load())
	case ndisshim.OIDGenCurrentLookahead:
		return req.WriteUint32(m.lookahead.Load())
	case ndisshim.OIDGenDriverVersion:
		return req.WriteUint32(0x0600) // NDIS 6.0
	case ndisshim.OIDGenVendorDriverVersion:
		return req.WriteUint32(0x00000100) // 0.1
	case ndisshim.OIDGenMediaConnectStatus:
		if m.removed.Load() || m.nicDown.Load() || m.linkDown.Load() {
			return req.WriteUint32(ndisshim.MediaStateDisconnected)
		}
		return req.WriteUint32(ndisshim.MediaStateConnected)
	case ndisshim.OIDGenLinkState:
		// MediaConnectState, MediaDuplexState (2 = full), XmitLinkSpeed, RcvLinkSpeed
		b := make([]byte, 24)
		state := ndisshim.MediaStateConnected
		if m.removed.Load() || m.nicDown.Load() || m.linkDown.Load() {
			state = ndisshim.MediaStateDisconnected
		}
		binary.LittleEndian.PutUint32(b[0:], state)
		binary.LittleEndian.PutUint32(b[4:], 2)
		binary.LittleEndian.PutUint64(b[8:], m.cfg.LinkSpeedBps)
		binary.LittleEndian.PutUint64(b[16:], m.cfg.LinkSpeedBps)
		return req.WriteBytes(b)
	case ndisshim.OIDGenStatistics:
		return req.WriteBytes(ndisshim.StatisticsInfo{
			RcvDiscards: uint64(c.RxDrops()), RcvError: uint64(c.RxDropRunt + c.RxDropOversize),
			DirectedFramesRcv: uint64(c.RxFrames), DirectedBytesRcv: uint64(c.RxBytes),
			XmitError: uint64(c.TxErrors), XmitDiscards: uint64(c.TxDropPaused + c.TxDropOversize + c.TxDropLinkDown + c.TxDropNoRoom),
			DirectedFramesXmit: uint64(c.TxFrames), DirectedBytesXmit: uint64(c.TxBytes),
			RcvNoBuffer: uint64(c.RxDropNoBuffer),
		}.Marshal())
	case ndisshim.OIDGenXmitOK:
		return req.WriteUint64(uint64(c.TxFrames))
	case ndisshim.OIDGenRcvOK:
		return req.WriteUint64(uint64(c.RxFrames))
	case ndisshim.OIDGenXmitError:
		return req.WriteUint64(uint64(c.TxErrors))
	case ndisshim.OIDGenRcvError:
		return req.WriteUint64(uint64(c.RxDropRunt + c.RxDropOversize))
	case ndisshim.OIDGenRcvNoBuffer:
		return req.WriteUint64(uint64(c.RxDropNoBuffer))
	case ndisshim.OID8023PermanentAddress:
		return req.WriteBytes(m.mac)
	case ndisshim.OID8023CurrentAddress:
		return req.WriteBytes(m.cur)
	case ndisshim.OID8023MulticastList:
		m.mcMu.Lock()
		b := make([]byte, 0, 6*len(m.multicast))
		for _, a := range m.multicast {
			b = append(b, a[:]...)
		}
		m.mcMu.Unlock()
		return req.WriteBytes(b)
	case ndisshim.OID8023MaximumListSize:
		return req.WriteUint32(maxMulticast)
	case ndisshim.OIDTCPOffloadHardwareCaps, ndisshim.OIDTCPOffloadCurrentConfig:
		return req.WriteBytes(m.offloadCaps())
	}
	return ndisshim.StatusNotSupported
}

func (m *Miniport) set(req *ndisshim.OIDRequest) ndisshim.Status {
	switch req.OID {
	case ndisshim.OIDGenCurrentPacketFilter:
		v, st := req.Uint32()
		if st != ndisshim.StatusSuccess {
			return st
		}
		const known = ndisshim.PacketTypeDirected | ndisshim.PacketTypeMulticast | ndisshim.PacketTypeAllMulticast |
			ndisshim.PacketTypeBroadcast | ndisshim.PacketTypePromiscuous
		if v&^known != 0 {
			return ndisshim.StatusNotSupported
		}
		m.filter.Store(v)
		return ndisshim.StatusSuccess
	case ndisshim.OIDGenCurrentLookahead:
		v, st := req.Uint32()
		if st != ndisshim.StatusSuccess {
			return st
		}
		if v > uint32(m.cfg.MTU) { // the maximum lookahead
			return ndisshim.StatusInvalidData
		}
		m.lookahead.Store(v)
		return ndisshim.StatusSuccess
	case ndisshim.OID8023MulticastList:
		b := req.InformationBuffer
		if len(b)%6 != 0 {
			return ndisshim.StatusInvalidLength
		}
		if len(b)/6 > maxMulticast {
			return ndisshim.StatusResources // NDIS_STATUS_MULTICAST_FULL in a real driver
		}
		list := make([][6]byte, len(b)/6)
		for i := range list {
			copy(list[i][:], b[6*i:])
		}
		m.mcMu.Lock()
		m.multicast = list
		m.mcMu.Unlock()
		req.BytesRead = len(b)
		return ndisshim.StatusSuccess
	}
	return ndisshim.StatusNotSupported
}

// Caps is what the miniport offers, from what the hardware TAP took.
func (m *Miniport) Caps() ndisshim.OffloadCaps {
	var c ndisshim.OffloadCaps
	if m.vnet == 0 {
		return c
	}
	f := m.hwOffloads
	size := func(bit uint) uint32 {
		if f&bit != 0 {
			return 65535
		}
		return 0
	}
	if f&tapdev.OffloadCsum != 0 {
		c.Checksum = 1
	}
	c.LSOv2IPv4, c.LSOv2IPv6 = size(tapdev.OffloadTSO4), size(tapdev.OffloadTSO6)
	c.USOIPv4, c.USOIPv6 = size(tapdev.OffloadUSO4), size(tapdev.OffloadUSO6)
	if c.LSOv2IPv4|c.LSOv2IPv6|c.USOIPv4|c.USOIPv6 != 0 {
		c.MinSegmentCount = 2
	}
	return c
}

func (m *Miniport) offloadCaps() []byte { return m.Caps().Marshal() }
