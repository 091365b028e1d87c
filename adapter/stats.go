package adapter

import (
	"sync"
	"sync/atomic"
	"time"
)

// Counters are the adapter's statistics. Each is one atomic add per batch
// (per frame only where a frame is dropped), never a lock.
type Counters struct {
	RxFrames, RxBytes              atomic.Int64 // frames indicated up (wire → host)
	TxFrames, TxBytes              atomic.Int64 // frames written to the wire (host → wire)
	Indications                    atomic.Int64 // indicate calls
	ResourcesIndications           atomic.Int64 // indicate calls with RESOURCES
	RxDropNoBuffer                 atomic.Int64 // pool empty
	RxDropRunt                     atomic.Int64 // shorter than an Ethernet header
	RxDropOversize                 atomic.Int64 // longer than MTU + header + VLAN tag
	RxDropFiltered                 atomic.Int64 // not for us under the packet filter
	RxDropNotReady                 atomic.Int64 // paused, removed or no protocol bound
	TxDropPaused                   atomic.Int64 // sends refused while paused or removed
	TxDropOversize                 atomic.Int64 // send larger than the MTU allows
	TxErrors                       atomic.Int64 // write failed
	mu                             sync.Mutex
	lastAt                         time.Time
	lastRx, lastTx                 int64
	RxFramesPerSec, TxFramesPerSec atomic.Int64
}

// Snapshot is a copy of the counters at one moment.
type Snapshot struct {
	RxFrames, RxBytes, TxFrames, TxBytes       int64
	Indications, ResourcesIndications          int64
	RxDropNoBuffer, RxDropRunt, RxDropOversize int64
	RxDropFiltered, RxDropNotReady             int64
	TxDropPaused, TxDropOversize, TxErrors     int64
	RxFramesPerSec, TxFramesPerSec             int64
	PoolInUse, PoolHighWater, PoolExhaustions  int64
}

// RxDrops is the sum of receive drops of every cause.
func (s Snapshot) RxDrops() int64 {
	return s.RxDropNoBuffer + s.RxDropRunt + s.RxDropOversize + s.RxDropFiltered + s.RxDropNotReady
}

func (c *Counters) snapshot() Snapshot {
	return Snapshot{
		RxFrames: c.RxFrames.Load(), RxBytes: c.RxBytes.Load(), TxFrames: c.TxFrames.Load(), TxBytes: c.TxBytes.Load(),
		Indications: c.Indications.Load(), ResourcesIndications: c.ResourcesIndications.Load(),
		RxDropNoBuffer: c.RxDropNoBuffer.Load(), RxDropRunt: c.RxDropRunt.Load(), RxDropOversize: c.RxDropOversize.Load(),
		RxDropFiltered: c.RxDropFiltered.Load(), RxDropNotReady: c.RxDropNotReady.Load(),
		TxDropPaused: c.TxDropPaused.Load(), TxDropOversize: c.TxDropOversize.Load(), TxErrors: c.TxErrors.Load(),
		RxFramesPerSec: c.RxFramesPerSec.Load(), TxFramesPerSec: c.TxFramesPerSec.Load(),
	}
}

// sample updates the per-second rates (the statistics timer's work).
func (c *Counters) sample() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	rx, tx := c.RxFrames.Load(), c.TxFrames.Load()
	if !c.lastAt.IsZero() {
		if dt := now.Sub(c.lastAt).Seconds(); dt > 0 {
			c.RxFramesPerSec.Store(int64(float64(rx-c.lastRx) / dt))
			c.TxFramesPerSec.Store(int64(float64(tx-c.lastTx) / dt))
		}
	}
	c.lastAt, c.lastRx, c.lastTx = now, rx, tx
}
