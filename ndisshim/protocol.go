package ndisshim

// NetPnPEvent is a NET_PNP_EVENT_CODE the shim sends to a binding.
type NetPnPEvent int

// The binding PnP events.
const (
	NetEventPause   NetPnPEvent = iota + 1 // NetEventPause: stop sending; receives still come back
	NetEventRestart                        // NetEventRestart: the adapter is Running again
)

func (e NetPnPEvent) String() string {
	switch e {
	case NetEventPause:
		return "pause"
	case NetEventRestart:
		return "restart"
	}
	return "unknown net PnP event"
}

// StatusIndication is an NDIS_STATUS_INDICATION from the miniport
// (NdisMIndicateStatusEx), e.g. StatusLinkState with a LinkState.
type StatusIndication struct {
	Code Status
	Port PortNumber
	Data any
}

// LinkState is NDIS_LINK_STATE.
type LinkState struct {
	Connected bool
	SpeedBps  uint64 // XmitLinkSpeed == RcvLinkSpeed here
	Duplex    string // "full"
}

// Protocol is a protocol driver's handler set (NDIS_PROTOCOL_DRIVER_CHARACTERISTICS)
// for one binding. The shim calls these; the protocol calls back through the
// *Binding.
type Protocol interface {
	// ReceiveNetBufferLists (ProtocolReceiveNetBufferLists). Without
	// ReceiveFlagResources the protocol owns the chain until it gives every
	// NBL back with Binding.ReturnNetBufferLists (in any order and any mix of
	// chains). With ReceiveFlagResources ownership returns to the miniport
	// when this call returns: copy what you keep and never return them.
	ReceiveNetBufferLists(b *Binding, nbls *NetBufferList, port PortNumber, count int, flags ReceiveFlags)
	// SendNetBufferListsComplete (ProtocolSendNetBufferListsComplete): the
	// protocol owns the chain again; each NBL's Status says how it went.
	SendNetBufferListsComplete(b *Binding, nbls *NetBufferList, flags SendCompleteFlags)
	// StatusEx (ProtocolStatusEx): a status indication from the miniport.
	StatusEx(b *Binding, s StatusIndication)
	// NetPnPEvent (ProtocolNetPnPEvent): pause and restart of the binding.
	// On pause the protocol stops sending; the shim itself waits for its
	// outstanding sends and for the NBLs it holds.
	NetPnPEvent(b *Binding, ev NetPnPEvent) error
}
