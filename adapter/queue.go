package adapter

// Queues (RSS). With Config.Queues = N the hardware TAP is a multi-queue
// TAP with N fds. Each queue has its own interrupt, its own DPC goroutine
// and its own DPC scratch, so N receive paths run on N cores at once and
// share nothing but the receive pool (one lock per batch) and the counters
// (one atomic add per batch).
//
// The wire's kernel picks the queue a frame arrives on: a multi-queue TAP
// steers a flow to the queue that last wrote it (tun_automq_select_queue
// with its flow table), else by the flow's hash. Sends pick the queue by a
// symmetric flow hash of each frame (sendQueue), so a flow always leaves
// on one queue, and the kernel then delivers its replies on that queue too:
// once settled, a flow is indicated by one DPC only, in order. A flow the
// wire starts can arrive on another queue until its first reply leaves;
// while the kernel moves it, frames still waiting on the old queue may be
// indicated after newer ones on the new queue (moderation widens that
// window), as with RSS on real hardware when a flow's queue changes.

import (
	"encoding/binary"
	"sync"
	"sync/atomic"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/tapdev"
)

// queue is one hardware queue: one fd of the TAP, its interrupt and DPC
// state, and its send state.
type queue struct {
	m     *Miniport
	index int
	dev   Device
	intr  *ndisshim.Interrupt
	// poller runs q.poll after a small send (Config.PollOnSend): armed
	// after registration, disarmed before deregistration
	poller ndisshim.Poller

	// receive DPC state: touched only by this queue's interrupt goroutine
	rx  *ndisshim.BatchFiller // reads frames into receive NBLs of the pool
	mod *ndisshim.Moderator   // the DPC's interrupt moderation; the opposite direction is the adapter's sends
	// rxDev follows dev's drops on receive (countDeviceDrops)
	rxDev tapdev.CounterWatch

	// send state: txMu serializes writes to this queue's fd
	txMu   sync.Mutex
	txBufs [][]byte
	txRes  []tapdev.TxResult // what became of each of txBufs (WriteBatch)

	// per-queue traffic (also summed into the adapter's Counters)
	rxFrames, rxBytes atomic.Int64
	txFrames, txBytes atomic.Int64
}

// QueueCounters is one queue's traffic.
type QueueCounters struct {
	RxFrames, RxBytes, TxFrames, TxBytes int64
}

// QueueCounters returns each queue's traffic, queue 0 first.
func (m *Miniport) QueueCounters() []QueueCounters {
	out := make([]QueueCounters, len(m.queues))
	for i, q := range m.queues {
		out[i] = QueueCounters{RxFrames: q.rxFrames.Load(), RxBytes: q.rxBytes.Load(), TxFrames: q.txFrames.Load(), TxBytes: q.txBytes.Load()}
	}
	return out
}

// Queues is the number of hardware queues.
func (m *Miniport) Queues() int { return len(m.queues) }

func newQueue(m *Miniport, index int, dev Device) *queue {
	q := &queue{
		m: m, index: index, dev: dev,
		txBufs: make([][]byte, 0, 256),
		txRes:  make([]tapdev.TxResult, 256),
		mod:    m.cfg.Moderation.NewModerator(m.ctr.TxFrames.Load, &m.ctr.ModerationWaits, &m.ctr.ModerationSpent),
	}
	// m.pool is read at each call: it is allocated after the queues
	// and set to nil by the halt
	q.rx = ndisshim.NewBatchFiller(m.cfg.Batch, make([]byte, maxGSOFrame+headroom), dev.ReadBatch,
		func(dst []*ndisshim.NetBufferList) int { return m.pool.Get(dst) },
		func(chain *ndisshim.NetBufferList) { m.pool.Recycle(chain) })
	q.rxDev = tapdev.WatchCounters(dev)
	return q
}

// flowHash is a symmetric hash of a frame's IPv4/IPv6 addresses and TCP/UDP
// ports (the same both ways); 0 for anything else (ARP, ND without ports
// hash by address only). It reads the frame in place and allocates nothing.
func flowHash(f []byte) uint32 {
	if len(f) < 14 {
		return 0
	}
	et, off := binary.BigEndian.Uint16(f[12:]), 14
	if et == 0x8100 && len(f) >= 18 {
		et, off = binary.BigEndian.Uint16(f[16:]), 18
	}
	var a, b uint32
	var proto byte
	var l4 int
	switch et {
	case 0x0800:
		if len(f) < off+20 {
			return 0
		}
		ip := f[off:]
		a, b = binary.BigEndian.Uint32(ip[12:]), binary.BigEndian.Uint32(ip[16:])
		proto = ip[9]
		if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 { // a fragment: no ports
			proto = 0
		}
		l4 = off + int(ip[0]&0x0f)*4
	case 0x86dd:
		if len(f) < off+40 {
			return 0
		}
		ip := f[off:]
		for i := 8; i < 24; i += 4 {
			a ^= binary.BigEndian.Uint32(ip[i:])
			b ^= binary.BigEndian.Uint32(ip[i+16:])
		}
		proto = ip[6]
		l4 = off + 40
	default:
		return 0
	}
	h := a ^ b // symmetric in the addresses
	if (proto == 6 || proto == 17) && len(f) >= l4+4 {
		h ^= uint32(binary.BigEndian.Uint16(f[l4:])) ^ uint32(binary.BigEndian.Uint16(f[l4+2:])) // symmetric in the ports
		h ^= uint32(proto) << 16
	}
	// finalize (murmur3 fmix32) so that close addresses spread over queues
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// sendQueue is the queue a frame leaves on.
func (m *Miniport) sendQueue(frame []byte) *queue {
	if len(m.queues) == 1 {
		return m.queues[0]
	}
	return m.queues[flowHash(frame)%uint32(len(m.queues))]
}
