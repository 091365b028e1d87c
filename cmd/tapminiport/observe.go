package main

// The operator's view of a running adapter: --stats lines, the SIGUSR1
// dump and (metrics.go) the Prometheus collector. All three read snapshots
// (atomic loads, a walk of the NBL ledger for the dump) when they report,
// never anything per packet.
//
// The gate: the miniport's Counters read its receive pool, which HaltEx
// frees. Observers read the miniport only under obs.RLock and only while
// mpLive; halt takes obs.Lock to clear mpLive (keeping the last snapshot
// for them) before it calls Halt. The shim's own numbers (state, held NBLs,
// the dump) stay readable to the end.

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tapminiport/tapminiport/adapter"
	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/hoststack"
)

// queueLabel is the queue label of the adapter-wide counters: "0" with one
// queue, "all" with several (RSS), whose packets and bytes are also given
// per queue (queue="0", "1", ...).
func queueLabel(queues int) string {
	if queues > 1 {
		return "all"
	}
	return "0"
}

// sample is what an observer reads at one moment.
type sample struct {
	at       time.Time
	state    ndisshim.State
	shim     ndisshim.Stats
	mp       adapter.Snapshot
	stack    hoststack.Counters
	queues   []adapter.QueueCounters
	findings int
	pcap     pcapStats
}

type pcapStats struct {
	on                     bool
	path                   string
	frames, bytes, skipped int64
}

// sample reads the counters; safe from any goroutine once start succeeded.
func (m *machine) sample() sample {
	s := sample{at: time.Now(), state: m.a.State(), shim: m.a.Stats(), findings: len(m.drv.Verifier().Findings())}
	m.obs.RLock()
	if m.mpLive {
		s.mp = m.mp.Counters()
		s.stack = m.st.Counters()
		s.queues = m.mp.QueueCounters()
	} else {
		s.mp, s.stack, s.queues = m.snap, m.stackSnap, m.queueSnap
	}
	m.obs.RUnlock()
	s.pcap = m.pcapStats()
	return s
}

// freezeMiniport takes the last snapshot and closes the gate: from now on
// observers see that snapshot, and halt may free the miniport's state.
func (m *machine) freezeMiniport() {
	m.obs.Lock()
	if m.mpLive {
		m.snap = m.mp.Counters()
		m.stackSnap = m.st.Counters()
		m.queueSnap = m.mp.QueueCounters()
		m.mpLive = false
	}
	m.obs.Unlock()
}

// lockedWriter serializes whole writes: slog, the stats lines and the dump
// share stderr.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// statsLine is one --stats line: rates and the histogram over the interval
// from prev to cur, everything else totals since start. With several
// queues the line is q=all and one shorter line per queue follows it
// (stats q=0 rx_pps=.. rx_mbps=.. tx_pps=.. tx_mbps=.. rx=.. tx=..).
//
//	stats q=0 rx_pps=81234 rx_mbps=954.1 tx_pps=40123 tx_mbps=2.6 rx=123456 tx=65432 held=312 pool=312/1024 pool_hw=1024 resources=0 rx_drop=nobuf:0,runt:0,oversize:0,filtered:0,notready:0 tx_drop=paused:0,oversize:0,link_down:0,no_room:0,error:0 fpi=1:3,2-3:0,4-7:0,8-15:1,16-31:0,32-63:5,64+:120 state=Running
func statsLine(prev, cur sample, poolSize int) string {
	dt := cur.at.Sub(prev.at).Seconds()
	if dt <= 0 {
		dt = 1e-9
	}
	rate := func(a, b int64) int64 { return int64(float64(b-a) / dt) }
	mbps := func(a, b int64) float64 { return float64(b-a) * 8 / dt / 1e6 }
	c, p := cur.mp, prev.mp
	var b strings.Builder
	fmt.Fprintf(&b, "stats q=%s rx_pps=%d rx_mbps=%.1f tx_pps=%d tx_mbps=%.1f rx=%d tx=%d held=%d pool=%d/%d pool_hw=%d resources=%d",
		queueLabel(len(cur.queues)), rate(p.RxFrames, c.RxFrames), mbps(p.RxBytes, c.RxBytes), rate(p.TxFrames, c.TxFrames), mbps(p.TxBytes, c.TxBytes),
		c.RxFrames, c.TxFrames, cur.shim.HeldNow, c.PoolInUse, poolSize, c.PoolHighWater, c.ResourcesIndications)
	fmt.Fprintf(&b, " rx_drop=nobuf:%d,runt:%d,oversize:%d,filtered:%d,notready:%d tx_drop=paused:%d,oversize:%d,link_down:%d,no_room:%d,error:%d",
		c.RxDropNoBuffer, c.RxDropRunt, c.RxDropOversize, c.RxDropFiltered, c.RxDropNotReady, c.TxDropPaused, c.TxDropOversize, c.TxDropLinkDown, c.TxDropNoRoom, c.TxErrors)
	b.WriteString(" fpi=")
	for i := range c.FramesPerIndication {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s:%d", adapter.IndicationBucketLabel(i), c.FramesPerIndication[i]-p.FramesPerIndication[i])
	}
	fmt.Fprintf(&b, " state=%s\n", cur.state)
	if len(cur.queues) > 1 && len(prev.queues) == len(cur.queues) {
		// RSS: the packets and bytes of each queue, like ethtool -S's
		// per-queue counters (the q=all line is their sum)
		for i, q := range cur.queues {
			pq := prev.queues[i]
			fmt.Fprintf(&b, "stats q=%d rx_pps=%d rx_mbps=%.1f tx_pps=%d tx_mbps=%.1f rx=%d tx=%d\n",
				i, rate(pq.RxFrames, q.RxFrames), mbps(pq.RxBytes, q.RxBytes), rate(pq.TxFrames, q.TxFrames), mbps(pq.TxBytes, q.TxBytes), q.RxFrames, q.TxFrames)
		}
	}
	return b.String()
}

// startStats prints a stats line every o.stats until stopStats.
func (m *machine) startStats() {
	if m.o.stats <= 0 {
		return
	}
	m.statsStop, m.statsDone = make(chan struct{}), make(chan struct{})
	go m.routineStats(m.statsStop, m.statsDone)
}

// routineStats is the long-lived --stats goroutine.
func (m *machine) routineStats(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(m.o.stats)
	defer t.Stop()
	prev := m.sample()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			cur := m.sample()
			io.WriteString(m.stderr, statsLine(prev, cur, m.o.rxBuffers))
			prev = cur
		}
	}
}

// stopStats ends the --stats goroutine (called once, by stopObservers).
func (m *machine) stopStats() {
	if m.statsStop != nil {
		close(m.statsStop)
		<-m.statsDone
	}
}

// watchUSR1 registers SIGUSR1 before start (its default action would kill
// the process); the dumps begin once the adapter exists (startDumps).
func (m *machine) watchUSR1() {
	m.usr1 = make(chan os.Signal, 1)
	signal.Notify(m.usr1, syscall.SIGUSR1)
}

// startDumps answers each SIGUSR1 with a dump on stderr until stopDumps.
func (m *machine) startDumps() {
	m.dumpStop, m.dumpDone = make(chan struct{}), make(chan struct{})
	go m.routineDumps(m.dumpStop, m.dumpDone)
}

// routineDumps is the long-lived SIGUSR1 goroutine.
func (m *machine) routineDumps(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		select {
		case <-stop:
			return
		case <-m.usr1:
			io.WriteString(m.stderr, m.dump())
		}
	}
}

// stopDumps ends the SIGUSR1 goroutine; further SIGUSR1s are ignored (not
// fatal) until the process exits.
func (m *machine) stopDumps() {
	m.stopDumpsOnce.Do(func() {
		if m.dumpStop != nil {
			close(m.dumpStop)
			<-m.dumpDone
		}
		if m.usr1 != nil {
			signal.Stop(m.usr1)
			signal.Ignore(syscall.SIGUSR1)
		}
	})
}

// dump is the SIGUSR1 text: the shim's picture of the adapter (state, held
// NBLs by holder with ages, timers, interrupts, pools, memory, verifier
// findings), then the miniport's and the binding's counters.
func (m *machine) dump() string {
	d := m.a.Dump()
	s := m.sample()
	c := s.mp
	var b strings.Builder
	fmt.Fprintf(&b, "=== tapminiport state dump (SIGUSR1): pid %d, up %s, %s\n", os.Getpid(), time.Since(m.started).Round(time.Millisecond), d.At.Format(time.RFC3339Nano))
	b.WriteString(d.String())
	fmt.Fprintf(&b, "miniport queue %s:\n", queueLabel(len(s.queues)))
	if len(s.queues) > 1 {
		for i, q := range s.queues {
			fmt.Fprintf(&b, "  queue %d: rx %d packets %d bytes, tx %d packets %d bytes\n", i, q.RxFrames, q.RxBytes, q.TxFrames, q.TxBytes)
		}
	}
	fmt.Fprintf(&b, "  wire → host: %d packets, %d bytes in %d indications (%d with RESOURCES)\n", c.RxFrames, c.RxBytes, c.Indications, c.ResourcesIndications)
	fmt.Fprintf(&b, "  host → wire: %d packets, %d bytes\n", c.TxFrames, c.TxBytes)
	fmt.Fprintf(&b, "  receive drops: no-buffer=%d runt=%d oversize=%d filtered=%d not-ready=%d\n",
		c.RxDropNoBuffer, c.RxDropRunt, c.RxDropOversize, c.RxDropFiltered, c.RxDropNotReady)
	fmt.Fprintf(&b, "  send drops: paused=%d oversize=%d link-down=%d no-room=%d errors=%d\n", c.TxDropPaused, c.TxDropOversize, c.TxDropLinkDown, c.TxDropNoRoom, c.TxErrors)
	fmt.Fprintf(&b, "  receive pool: %d of %d in use, high-water %d, exhaustions %d\n", c.PoolInUse, m.o.rxBuffers, c.PoolHighWater, c.PoolExhaustions)
	b.WriteString("  frames per indication:")
	for i, n := range c.FramesPerIndication {
		fmt.Fprintf(&b, " %s:%d", adapter.IndicationBucketLabel(i), n)
	}
	b.WriteString("\n")
	st := s.stack
	fmt.Fprintf(&b, "binding %s: to host %d frames, to wire %d frames, RESOURCES writes %d\n", hoststack.ProtocolName, st.ToHostFrames, st.ToWireFrames, st.ResourcesWrites)
	fmt.Fprintf(&b, "  stack: returned-early=%d drops: paused=%d no-send-buffer=%d oversize=%d no-room=%d send-failed=%d write-errors=%d\n",
		st.ReturnedEarly, st.DropPaused, st.DropNoSendBuffer, st.DropOversize, st.ToHostNoRoom, st.SendFailed, st.WriteErrors)
	if s.pcap.on {
		fmt.Fprintf(&b, "pcap %s: %d frames, %d bytes captured, %d skipped\n", s.pcap.path, s.pcap.frames, s.pcap.bytes, s.pcap.skipped)
	}
	b.WriteString("=== end of dump\n")
	return b.String()
}
