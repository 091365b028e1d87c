package adapter

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// IndicationBuckets are the lower bounds of the frames-per-indication
// histogram's buckets: 1, 2–3, 4–7, 8–15, 16–31, 32–63, 64 and more. A
// batch of n frames falls in bucket min(floor(log2 n), 6).
var IndicationBuckets = [NumIndicationBuckets]int{1, 2, 4, 8, 16, 32, 64}

// NumIndicationBuckets is the number of buckets of the histogram.
const NumIndicationBuckets = 7

// IndicationBucketLabel names bucket i: "1", "2-3", ..., "64+".
func IndicationBucketLabel(i int) string {
	return [NumIndicationBuckets]string{"1", "2-3", "4-7", "8-15", "16-31", "32-63", "64+"}[i]
}

// indicationBucket is the bucket of an indication of n >= 1 frames.
func indicationBucket(n int) int {
	if n < 1 {
		n = 1
	}
	return min(bits.Len(uint(n))-1, NumIndicationBuckets-1)
}

// Counters are the adapter's statistics. Each is one atomic add per batch
// (per frame only where a frame is dropped), never a lock.
type Counters struct {
	RxFrames, RxBytes    atomic.Int64 // frames indicated up (wire → host)
	TxFrames, TxBytes    atomic.Int64 // frames written to the wire (host → wire)
	Indications          atomic.Int64 // indicate calls
	ResourcesIndications atomic.Int64 // indicate calls with RESOURCES
	RxDropNoBuffer       atomic.Int64 // pool empty
	RxDropRunt           atomic.Int64 // shorter than an Ethernet header
	RxDropOversize       atomic.Int64 // longer than MTU + header + VLAN tag, or than the receive buffer (dropped by tapdev: queue.countDeviceDrops)
	RxDropBadVnetHdr     atomic.Int64 // malformed virtio-net header (offload mode)
	RxDropFiltered       atomic.Int64 // not for us under the packet filter
	RxDropNotReady       atomic.Int64 // paused, removed or no protocol bound
	TxDropPaused         atomic.Int64 // sends refused while paused or removed
	TxDropOversize       atomic.Int64 // send larger than the MTU allows
	TxDropLinkDown       atomic.Int64 // frames not written: the hardware TAP's link was down
	TxDropNoRoom         atomic.Int64 // frames the hardware TAP had no room for (WriteBatch: tapdev.TxNoRoom)
	TxErrors             atomic.Int64 // write failed, or the hardware TAP refused the frame (tapdev.TxRefused)
	ModerationWaits      atomic.Int64 // receive DPC waits for interrupt moderation
	ModerationSpent      atomic.Int64 // receive DPC runs after a wait that took the whole moderation budget
	RxPolls              atomic.Int64 // receive DPCs run by a small send (Config.PollOnSend)
	RxPollFrames         atomic.Int64 // frames those runs read (indicated, or dropped as runts, filtered, ...)
	// FramesPerIndication counts indications by their number of frames
	// (the buckets of IndicationBuckets): one atomic add per indication.
	FramesPerIndication            [NumIndicationBuckets]atomic.Int64
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
	RxDropBadVnetHdr                           int64
	RxDropFiltered, RxDropNotReady             int64
	TxDropPaused, TxDropOversize, TxErrors     int64
	TxDropLinkDown                             int64 // frames not written: the hardware TAP's link was down
	TxDropNoRoom                               int64 // frames the hardware TAP had no room for
	RxFramesPerSec, TxFramesPerSec             int64
	PoolInUse, PoolHighWater, PoolExhaustions  int64
	ModerationWaits                            int64 // receive DPC waits for interrupt moderation (all queues)
	ModerationSpent                            int64 // receive DPC runs after a wait that took the whole budget (all queues)
	RxPolls, RxPollFrames                      int64 // receive DPCs run by small sends, and the frames they read
	// FramesPerIndication[i] counts indications whose frame count falls
	// in bucket i (IndicationBuckets); their sum is the indications
	// counted so far and the frames in them sum to RxFrames.
	FramesPerIndication [NumIndicationBuckets]int64
}

// RxDrops is the sum of receive drops of every cause.
func (s Snapshot) RxDrops() int64 {
	return s.RxDropNoBuffer + s.RxDropRunt + s.RxDropOversize + s.RxDropBadVnetHdr + s.RxDropFiltered + s.RxDropNotReady
}

func (c *Counters) snapshot() Snapshot {
	return Snapshot{
		RxFrames: c.RxFrames.Load(), RxBytes: c.RxBytes.Load(), TxFrames: c.TxFrames.Load(), TxBytes: c.TxBytes.Load(),
		Indications: c.Indications.Load(), ResourcesIndications: c.ResourcesIndications.Load(),
		RxDropNoBuffer: c.RxDropNoBuffer.Load(), RxDropRunt: c.RxDropRunt.Load(), RxDropOversize: c.RxDropOversize.Load(), RxDropBadVnetHdr: c.RxDropBadVnetHdr.Load(),
		RxDropFiltered: c.RxDropFiltered.Load(), RxDropNotReady: c.RxDropNotReady.Load(),
		TxDropPaused: c.TxDropPaused.Load(), TxDropOversize: c.TxDropOversize.Load(), TxErrors: c.TxErrors.Load(),
		TxDropLinkDown: c.TxDropLinkDown.Load(), TxDropNoRoom: c.TxDropNoRoom.Load(),
		RxFramesPerSec: c.RxFramesPerSec.Load(), TxFramesPerSec: c.TxFramesPerSec.Load(),
		ModerationWaits: c.ModerationWaits.Load(), ModerationSpent: c.ModerationSpent.Load(), RxPolls: c.RxPolls.Load(), RxPollFrames: c.RxPollFrames.Load(),
		FramesPerIndication: c.framesPerIndication(),
	}
}

func (c *Counters) framesPerIndication() (h [NumIndicationBuckets]int64) {
	for i := range h {
		h[i] = c.FramesPerIndication[i].Load()
	}
	return h
}

// countIndication records one indication of n frames in the histogram.
func (c *Counters) countIndication(n int) { c.FramesPerIndication[indicationBucket(n)].Add(1) }

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
