package adapter

import (
	"fmt"

	"github.com/tapminiport/tapminiport/tapdev"
)

// TAPOpener is the default Opener: queue q of the hardware TAP by name,
// created when missing (tapdev says whether it created it). queues > 1
// opens a multi-queue TAP (IFF_MULTI_QUEUE), one fd per queue. With
// offload every queue carries the virtio-net header and the TAP is offered
// WantOffloads (TUNSETOFFLOAD), without USO where the kernel refuses it, so
// the wire's kernel hands the miniport 64 KiB TCP (and UDP) frames and
// partial checksums.
func TAPOpener(offload bool, queues int) Opener {
	return func(name string, q int) (Device, bool, error) {
		d, created, err := tapdev.OpenTAP(name, tapdev.Options{VnetHdr: offload, MultiQueue: queues > 1})
		if err != nil {
			return nil, false, err
		}
		if offload {
			if _, err := d.NegotiateOffload(WantOffloads); err != nil {
				d.Close()
				return nil, false, fmt.Errorf("offloads on %s: %w", name, err)
			}
		}
		return d, created, nil
	}
}

// ConfigureTAP is the default Configure: MTU, bridge, link up, in the
// current namespace.
func ConfigureTAP(name string, mtu int, bridge string) error {
	return tapdev.ConfigureLink("", name, tapdev.LinkConfig{MTU: mtu, Up: true, Master: bridge})
}

// Offloads is what the hardware TAP takes, with VnetHdr, on any kernel:
// checksum, TSO4, TSO6. It is what the miniport assumes of a device that
// does not say (a socketpair in unit tests).
const Offloads = tapdev.OffloadCsum | tapdev.OffloadTSO4 | tapdev.OffloadTSO6

// WantOffloads is what TAPOpener asks for: Offloads and UDP segmentation
// (USO4, USO6: Linux 6.2 and later).
const WantOffloads = Offloads | tapdev.OffloadUSO4 | tapdev.OffloadUSO6

// offloader is a device that says which offloads it took.
type offloader interface{ Offloads() uint }

// deviceOffloads is what dev takes: its own word if it says, else Offloads.
func deviceOffloads(dev Device) uint {
	if o, ok := dev.(offloader); ok && o.Offloads() != 0 {
		return o.Offloads()
	}
	return Offloads
}
