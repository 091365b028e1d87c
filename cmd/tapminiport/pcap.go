package main

// --pcap FILE: the sniffer wraps the hardware TAP's device, so every frame
// that crosses the miniport, both directions, lands in a pcap file
// (pcap as a wrapper around the endpoint, as gVisor's link/sniffer).

import (
	"fmt"

	"github.com/tapminiport/tapminiport/adapter"
	"github.com/tapminiport/tapminiport/adapter/sniffer"
)

// capture is the running capture (a *sniffer.Writer).
type capture interface {
	Wrap(adapter.Device) adapter.Device
	WrapPrefixed(adapter.Device, int) adapter.Device
	Stats() (frames, bytes, skipped int64)
	Close() error
}

var _ capture = (*sniffer.Writer)(nil)

// openCapture creates the pcap file (and writes its header) before
// anything else starts; max 0 means no cap.
func openCapture(path string, max int64) (capture, error) {
	w, err := sniffer.Create(path, max)
	if err != nil {
		return nil, fmt.Errorf("--pcap %s: %w", path, err)
	}
	return w, nil
}

func (m *machine) pcapStats() pcapStats {
	if m.capture == nil {
		return pcapStats{}
	}
	f, b, s := m.capture.Stats()
	return pcapStats{on: true, path: m.o.pcap, frames: f, bytes: b, skipped: s}
}

// closeCapture flushes and closes the pcap file (once), after the halt
// closed the device it wraps.
func (m *machine) closeCapture() {
	m.closeCaptureOnce.Do(func() {
		if m.capture != nil {
			m.captureErr = m.capture.Close()
		}
	})
}
