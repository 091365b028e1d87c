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

// Which watch: the hardware TAP's or the NIC TAP's.
const (
	hwWatch = iota
	nicWatch
)

// watchRemoval watches both TAPs' links (and the hardware TAP's link
// state: see Miniport.LinkChanged): deleting the hardware TAP is a
// surprise removal of the NIC (NdisDevicePnPEventSurpriseRemoved, then a
// halt with NdisHaltDeviceSurpriseRemoved); deleting the NIC TAP takes the
// host stack's interface away, and the binding unbinds in an orderly halt.
// A removal is noted when it happens, during the halt too (the pause may
// wait a long time for the stack), until the run stops that watch to
// delete or move its own TAPs.
func (m *machine) watchRemoval() {
	m.removedCh = make(chan struct{}, 1)
	watch := func(i int, r removal, upDown func(bool)) {
		m.watches[i].what = r
		stop, err := tapdev.WatchLink(r.netns, r.device, func() { m.noteRemoval(i, r) }, upDown)
		if err != nil {
			m.log.Warn("cannot watch for surprise removal", "device", r.device, "err", err)
			return
		}
		m.watches[i].stop = stop
	}
	// The hardware TAP's link set down or up is its cable: the miniport
	// indicates the link state at once (stopWatch ends the calls before
	// the halt).
	watch(hwWatch, removal{device: m.o.hwTap, netns: m.hwNetns, hardware: true}, m.mp.LinkChanged)
	watch(nicWatch, removal{device: m.o.nicTap, netns: m.o.nicNetns}, nil)
}

// noteRemoval runs on the watch's goroutine when a TAP disappears: it
// records the removal (the hardware TAP's outranks the NIC TAP's: it
// decides the halt's action), tells the adapter at once if the NIC is gone
// (NotifySurpriseRemoval does nothing once HaltEx has started), and wakes
// the run if it is still waiting for a stop signal. Nothing is noted once
// the run has stopped that watch.
func (m *machine) noteRemoval(i int, r removal) {
	m.endMu.Lock()
	defer m.endMu.Unlock()
	if !m.watches[i].off {
		m.noteRemovalLocked(r)
	}
}

// noteRemovalLocked is noteRemoval's work, with endMu held.
func (m *machine) noteRemovalLocked(r removal) {
	if m.surprise.device == "" || r.hardware && !m.surprise.hardware {
		m.surprise = r
	}
	if r.hardware {
		m.a.NotifySurpriseRemoval() // MiniportDevicePnPEventNotify(SurpriseRemoved)
	}
	if m.stopping {
		m.log.Error("surprise removal during the halt", "device", r.String())
	}
	select {
	case m.removedCh <- struct{}{}:
	default:
	}
}

// removal is the surprise removal noted so far (device "" if none).
func (m *machine) removal() removal {
	m.endMu.Lock()
	defer m.endMu.Unlock()
	return m.surprise
}

// stopWatch ends one watch: from here on the run deletes (or moves home)
// that TAP itself, which is no surprise. A removal the watch saw before
// stays noted; a callback still to come finds the watch off and notes
// nothing. With check, a TAP already gone (deleted an instant before, its
// event not yet read by the watch) is noted here: the run has not touched
// it yet. A forced exit does not check: the halt running beside it may
// have deleted the NIC TAP already.
func (m *machine) stopWatch(i int, check bool) {
	m.endMu.Lock() // the orderly halt and a forced exit may both get here
	defer m.endMu.Unlock()
	w := &m.watches[i]
	if w.off {
		return
	}
	if w.stop != nil {
		w.stop()
		w.stop = nil
		if check && !tapdev.LinkExists(w.what.netns, w.what.device) {
			m.noteRemovalLocked(w.what)
		}
	}
	w.off = true
}

// stopRemovalWatch ends both watches (a forced exit).
func (m *machine) stopRemovalWatch() {
	m.stopWatch(nicWatch, false)
	m.stopWatch(hwWatch, false)
}
