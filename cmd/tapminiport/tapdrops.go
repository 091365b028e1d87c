package main

import (
	"fmt"
	"sync"

	"github.com/tapminiport/tapminiport/tapdev"
)

// queueDrops is what the kernel dropped at one TAP's queue during the run:
// frames sent to the TAP that its reader (the miniport's receive DPC for
// the hardware TAP, the binding's NIC reader for the NIC TAP) had no room
// for. They never reach the datapath, so none of its counters can see
// them; the kernel counts them as the link's tx_dropped, and the run
// samples that at ready and again just before the TAP is let go (the NIC
// TAP before the unbind, the hardware TAP before HaltEx), so a pause's
// drops count too. A NIC's "rx_missed" (no descriptor in the ring) is the
// same figure.
type queueDrops struct {
	from, to       uint64
	haveFrom, have bool  // from, to were sampled
	err            error // why the last sample failed (the TAP is gone)
}

// sample reads the TAP's tx_dropped into from (at ready) or to; mu
// (the machine's endMu) guards q against the report, which a forced exit
// may print while the halt is still sampling.
func (q *queueDrops) sample(mu *sync.Mutex, ns, name string, ready bool) {
	_, _, _, dropped, err := tapdev.LinkStats(ns, name)
	mu.Lock()
	defer mu.Unlock()
	switch {
	case err != nil:
		q.err = err
	case ready:
		q.from, q.haveFrom = dropped, true
	default:
		q.to, q.have = dropped, true
	}
}

// text is the count, or why there is none.
func (q *queueDrops) text() string {
	switch {
	case !q.haveFrom:
		return fmt.Sprintf("? (not read at ready: %v)", q.err)
	case q.have && q.to >= q.from:
		return fmt.Sprint(q.to - q.from)
	case q.have: // the counter went back: not the same link
		return "? (the link's counters were reset)"
	case q.err != nil:
		return "? (gone before the halt)"
	default:
		return "? (not sampled at the halt)"
	}
}

// sampleHardwareDrops samples the hardware TAP's kernel queue drops where
// the link lives now, at ready or (later calls) at the halt.
func (m *machine) sampleHardwareDrops(ready bool) {
	m.endMu.Lock()
	ns := m.hwNetns
	m.endMu.Unlock()
	m.hwDrops.sample(&m.endMu, ns, m.o.hwTap, ready)
}

// sampleNICDrops samples the NIC TAP's kernel queue drops.
func (m *machine) sampleNICDrops(ready bool) {
	m.nicDrops.sample(&m.endMu, m.o.nicNetns, m.o.nicTap, ready)
}

// queueDropsLine is the exit report's line for both TAPs.
func (m *machine) queueDropsLine() string {
	m.endMu.Lock()
	defer m.endMu.Unlock()
	return fmt.Sprintf("kernel TAP queue drops (no room in the TAP's queue for what the kernel sent to its reader; tx_dropped from ready to halt): hardware %s=%s NIC %s=%s",
		m.o.hwTap, m.hwDrops.text(), m.o.nicTap, m.nicDrops.text())
}
