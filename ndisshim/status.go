package ndisshim

import "fmt"

// Status is an NDIS_STATUS code. The zero value is StatusSuccess.
type Status uint32

// The status codes the shim and its drivers use; the values are the NDIS ones.
const (
	StatusSuccess            Status = 0x00000000 // NDIS_STATUS_SUCCESS
	StatusPending            Status = 0x00000103 // NDIS_STATUS_PENDING
	StatusPaused             Status = 0xC023002A // NDIS_STATUS_PAUSED
	StatusResetInProgress    Status = 0xC001000D // NDIS_STATUS_RESET_IN_PROGRESS
	StatusNotAccepted        Status = 0x00010003 // NDIS_STATUS_NOT_ACCEPTED
	StatusResources          Status = 0xC000009A // NDIS_STATUS_RESOURCES
	StatusFailure            Status = 0xC0000001 // NDIS_STATUS_FAILURE
	StatusNotSupported       Status = 0xC00000BB // NDIS_STATUS_NOT_SUPPORTED
	StatusInvalidLength      Status = 0xC0010014 // NDIS_STATUS_INVALID_LENGTH
	StatusInvalidData        Status = 0xC0010015 // NDIS_STATUS_INVALID_DATA
	StatusBufferTooShort     Status = 0xC0010016 // NDIS_STATUS_BUFFER_TOO_SHORT
	StatusInvalidOID         Status = 0xC0010017 // NDIS_STATUS_INVALID_OID
	StatusAdapterNotReady    Status = 0xC0010011 // NDIS_STATUS_ADAPTER_NOT_READY
	StatusRequestAborted     Status = 0xC001000C // NDIS_STATUS_REQUEST_ABORTED
	StatusMediaDisconnected  Status = 0xC001001F // NDIS_STATUS_MEDIA_DISCONNECTED
	StatusLinkState          Status = 0x40010017 // NDIS_STATUS_LINK_STATE (a status indication)
	StatusInvalidParameter   Status = 0xC000000D // NDIS_STATUS_INVALID_PARAMETER
	StatusDeviceRemoved      Status = 0xC0010030 // NDIS_STATUS_ADAPTER_REMOVED
	StatusLowResources       Status = 0x40010025 // NDIS_STATUS_LOW_RESOURCES
	StatusBadVersion         Status = 0xC0010004 // NDIS_STATUS_BAD_VERSION
	StatusAdapterRemovedMask Status = StatusDeviceRemoved
)

var statusNames = map[Status]string{
	StatusSuccess:           "SUCCESS",
	StatusPending:           "PENDING",
	StatusPaused:            "PAUSED",
	StatusResetInProgress:   "RESET_IN_PROGRESS",
	StatusNotAccepted:       "NOT_ACCEPTED",
	StatusResources:         "RESOURCES",
	StatusFailure:           "FAILURE",
	StatusNotSupported:      "NOT_SUPPORTED",
	StatusInvalidLength:     "INVALID_LENGTH",
	StatusInvalidData:       "INVALID_DATA",
	StatusBufferTooShort:    "BUFFER_TOO_SHORT",
	StatusInvalidOID:        "INVALID_OID",
	StatusAdapterNotReady:   "ADAPTER_NOT_READY",
	StatusRequestAborted:    "REQUEST_ABORTED",
	StatusMediaDisconnected: "MEDIA_DISCONNECTED",
	StatusLinkState:         "LINK_STATE",
	StatusInvalidParameter:  "INVALID_PARAMETER",
	StatusDeviceRemoved:     "ADAPTER_REMOVED",
	StatusLowResources:      "LOW_RESOURCES",
	StatusBadVersion:        "BAD_VERSION",
}

// String returns the NDIS name without the NDIS_STATUS_ prefix.
func (s Status) String() string {
	if n, ok := statusNames[s]; ok {
		return n
	}
	return fmt.Sprintf("STATUS(0x%08X)", uint32(s))
}

// Error makes a non-success Status usable as an error.
func (s Status) Error() string { return "ndis status " + s.String() }

// Err returns nil for StatusSuccess and the Status itself otherwise.
func (s Status) Err() error {
	if s == StatusSuccess {
		return nil
	}
	return s
}
