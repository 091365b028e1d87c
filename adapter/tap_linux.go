package adapter

import "github.com/tapminiport/tapminiport/tapdev"

// TAPOpener is the default Opener: queue q of the hardware TAP by name,
// created when missing (tapdev says whether it created it). queues > 1
// opens a multi-queue TAP (IFF_MULTI_QUEUE), one fd per queue. With
// offload every queue carries the virtio-net header and the TAP is offered
// WantOffloads (TUNSETOFFLOAD), without USO where the kernel refuses it, so
// the wire's kernel hands the miniport 64 KiB TCP (and UDP) frames and
// partial checksums.
func TAPOpener(offload bool, queues int) Opener {
	return func(name string, q int) (Device, bool, error) {
		d, created, err := tapdev.OpenQueue(name, offload, queues)
		if err != nil {
			return nil, false, err
		}
		return d, created, nil
	}
}

// ConfigureTAP is the default Configure: MTU, bridge, link up, in the
// current namespace.
func ConfigureTAP(name string, mtu int, bridge string) error {
	return tapdev.ConfigureLink("", name, tapdev.LinkConfig{MTU: mtu, Up: true, Master: bridge})
}

// Offloads is what the hardware TAP takes, with VnetHdr, on any kernel,
// and what the miniport assumes of a device that does not say.
const Offloads = tapdev.BaseOffloads

// WantOffloads is what TAPOpener asks for: Offloads and UDP segmentation
// (USO4, USO6: Linux 6.2 and later).
const WantOffloads = tapdev.AllOffloads
