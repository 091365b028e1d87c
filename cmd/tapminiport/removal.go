package main

import (
	"fmt"

	"github.com/tapminiport/tapminiport/tapdev"
)

// removal says which TAP disappeared underneath the run.
type removal struct {
	device   string // the link's name
	netns    string // where it was
	hardware bool   // the miniport's hardware TAP (else the host's NIC TAP)
}

func (r removal) String() string {
	what := "NIC TAP"
	if r.hardware {
		what = "hardware TAP"
	}
	where := "the current namespace"
	if r.netns != "" {
		where = "netns " + r.netns
	}
	return fmt.Sprintf("%s %s deleted from %s", what, r.device, where)
}

// watchRemoval watches both TAPs' links (and the hardware TAP's link
// state: see Miniport.LinkChanged): deleting the hardware TAP is a
// surprise removal of the NIC (NdisDevicePnPEventSurpriseRemoved, then a
// halt with NdisHaltDeviceSurpriseRemoved); deleting the NIC TAP takes the
// host stack's interface away, and the binding unbinds in an orderly halt.
func (m *machine) watchRemoval() {
	m.removedCh = make(chan removal, 2)
	watch := func(r removal, upDown func(bool)) {
		stop, err := tapdev.WatchLink(r.netns, r.device, func() {
			select {
			case m.removedCh <- r:
			default:
			}
		}, upDown)
		if err != nil {
			m.log.Warn("cannot watch for surprise removal", "device", r.device, "err", err)
			return
		}
		m.stopWatches = append(m.stopWatches, stop)
	}
	// The hardware TAP's link set down or up is its cable: the miniport
	// indicates the link state at once (stopRemovalWatch ends the calls
	// before the halt).
	watch(removal{device: m.o.hwTap, netns: m.hwNetns, hardware: true}, m.mp.LinkChanged)
	watch(removal{device: m.o.nicTap, netns: m.o.nicNetns}, nil)
}

// stopRemovalWatch ends the watches; from here on the run deletes its own
// TAPs, which is no surprise.
func (m *machine) stopRemovalWatch() {
	m.endMu.Lock() // the orderly halt and a forced exit may both get here
	defer m.endMu.Unlock()
	for _, stop := range m.stopWatches {
		stop()
	}
	m.stopWatches = nil
}
