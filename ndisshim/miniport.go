package ndisshim

import (
	"context"
	"errors"
)

// Errors the shim returns; they wrap with the adapter or binding they concern.
var (
	ErrIllegalState = errors.New("illegal in this adapter state")
	ErrHalted       = errors.New("adapter halted")
	ErrNotReady     = errors.New("adapter not ready (not Running or Pausing)")
	ErrPoolInUse    = errors.New("NBL pool still has NBLs allocated")
	ErrNoSuchPort   = errors.New("no such port")
	ErrDrainTimeout = errors.New("gave up waiting for NBLs to come back")
	ErrRemoved      = errors.New("adapter surprise-removed")
)

// HaltAction says why a miniport is halted (NDIS_HALT_ACTION).
type HaltAction int

// The halt actions.
const (
	HaltDeviceDisabled             HaltAction = iota // NdisHaltDeviceDisabled: an orderly stop
	HaltDeviceInstanceDeInit                         // NdisHaltDeviceInstanceDeInitialized
	HaltDevicePoweredDown                            // NdisHaltDevicePoweredDown
	HaltDeviceSurpriseRemoved                        // NdisHaltDeviceSurpriseRemoved: the hardware is gone
	HaltDeviceFailed                                 // NdisHaltDeviceFailed
	HaltDeviceInitializationFailed                   // NdisHaltDeviceInitializationFailed
	HaltDeviceStopped                                // NdisHaltDeviceStopped
)

func (a HaltAction) String() string {
	return [...]string{"device disabled", "instance deinitialized", "powered down", "surprise removed",
		"device failed", "initialization failed", "device stopped"}[a]
}

// ShutdownAction says why a miniport is shut down (NDIS_SHUTDOWN_ACTION).
type ShutdownAction int

// The shutdown actions.
const (
	ShutdownPowerOff ShutdownAction = iota // NdisShutdownPowerOff
	ShutdownBugCheck                       // NdisShutdownBugCheck: a forced exit
)

func (a ShutdownAction) String() string {
	if a == ShutdownBugCheck {
		return "bugcheck (forced exit)"
	}
	return "power off"
}

// PnPEvent is a device PnP event (NDIS_DEVICE_PNP_EVENT).
type PnPEvent int

// The device PnP events.
const (
	PnPSurpriseRemoved     PnPEvent = iota + 1 // NdisDevicePnPEventSurpriseRemoved
	PnPPowerProfileChanged                     // NdisDevicePnPEventPowerProfileChanged
)

func (e PnPEvent) String() string {
	switch e {
	case PnPSurpriseRemoved:
		return "surprise removed"
	case PnPPowerProfileChanged:
		return "power profile changed"
	}
	return "unknown PnP event"
}

// SendFlags are NDIS_SEND_FLAGS_*.
type SendFlags uint32

// Send flags.
const (
	SendFlagDispatchLevel    SendFlags = 1 << iota // NDIS_SEND_FLAGS_DISPATCH_LEVEL
	SendFlagCheckForLoopback                       // NDIS_SEND_FLAGS_CHECK_FOR_LOOPBACK
)

// SendCompleteFlags are NDIS_SEND_COMPLETE_FLAGS_*.
type SendCompleteFlags uint32

// ReceiveFlags are NDIS_RECEIVE_FLAGS_*.
type ReceiveFlags uint32

// Receive flags.
const (
	ReceiveFlagDispatchLevel   ReceiveFlags = 1 << iota // NDIS_RECEIVE_FLAGS_DISPATCH_LEVEL
	ReceiveFlagResources                                // NDIS_RECEIVE_FLAGS_RESOURCES: ownership back when the call returns
	ReceiveFlagSingleEtherType                          // NDIS_RECEIVE_FLAGS_SINGLE_ETHER_TYPE
	ReceiveFlagSingleQueue                              // NDIS_RECEIVE_FLAGS_SINGLE_QUEUE
)

// Has reports whether every bit of g is set in f.
func (f ReceiveFlags) Has(g ReceiveFlags) bool { return f&g == g }

// ReturnFlags are NDIS_RETURN_FLAGS_*.
type ReturnFlags uint32

// InitParameters is what the shim passes to InitializeEx
// (NDIS_MINIPORT_INIT_PARAMETERS): the adapter's name and the driver-specific
// configuration (the registry keywords, as a validated value).
type InitParameters struct {
	Name   string
	Config any
}

// Characteristics registers a miniport driver
// (NDIS_MINIPORT_DRIVER_CHARACTERISTICS). InitializeEx is the driver-level
// handler; the Miniport it returns carries the per-adapter handlers.
type Characteristics struct {
	Name    string
	Version string
	// InitializeEx is MiniportInitializeEx: set up the hardware and the
	// adapter's resources (through a's allocation methods) and return the
	// adapter context. On error it must have undone everything it did.
	InitializeEx func(a *Adapter, p InitParameters) (Miniport, error)
}

// Miniport is the per-adapter handler set of a miniport driver. The shim
// calls these; the miniport calls back through the *Adapter it was given.
//
// NDIS completes Pause, OID requests and the like with PENDING and a later
// completion call; in Go those handlers simply block until done.
type Miniport interface {
	// HaltEx (MiniportHaltEx) undoes InitializeEx in reverse. Called only in
	// Paused; after it returns no handler is called again.
	HaltEx(action HaltAction)
	// PauseEx (MiniportPause): stop indicating receives, complete every
	// pending send with StatusPaused. The shim then waits for every
	// indicated NBL to come back before the adapter is Paused.
	PauseEx(ctx context.Context) error
	// RestartEx (MiniportRestart): resume sends and receives.
	RestartEx(ctx context.Context) error
	// ShutdownEx (MiniportShutdownEx): put the hardware in its initial state
	// without freeing or waiting: the forced-exit path. It may be called in
	// any state but Halted, concurrently with anything but HaltEx: never
	// during or after it.
	ShutdownEx(action ShutdownAction)
	// SendNetBufferLists (MiniportSendNetBufferLists): the miniport owns the
	// chain until it completes every NBL through Adapter.SendComplete.
	SendNetBufferLists(nbls *NetBufferList, port PortNumber, flags SendFlags)
	// ReturnNetBufferLists (MiniportReturnNetBufferLists): the protocol hands
	// back NBLs the miniport indicated. The chain may mix NBLs of several
	// indications, in any order. Ownership passes to the miniport.
	ReturnNetBufferLists(nbls *NetBufferList, flags ReturnFlags)
	// CancelSend (MiniportCancelSend) cancels queued sends with this id.
	CancelSend(cancelID uintptr)
	// OIDRequest (MiniportOidRequest) answers a query or set.
	OIDRequest(req *OIDRequest) Status
	// DevicePnPEventNotify (MiniportDevicePnPEventNotify), e.g. surprise removal.
	DevicePnPEventNotify(ev PnPEvent)
}
