package hoststack

// The NIC TAP's queues, and the data path through them.
//
// Each queue of the NIC TAP has a reader (an ndisshim interrupt on its fd:
// host frames → send chains) and a writer (the scratch a receive
// indication uses to write its chain to the TAP). With several queues the
// miniport's DPCs indicate at once, each on its own goroutine; each NBL
// of an indication is written by the writer its RSS hash names (a run of
// NBLs with one writer in one batch), so a flow is always written on one
// queue, and the host's kernel, which sends a flow's
// replies on the queue that last wrote it (the TAP's flow table), hands
// them to one reader: a flow is never split over two goroutines, so it is
// never reordered.
//
// Software offload. With VnetHdr the NIC TAP takes and gives large frames
// and partial checksums. What the miniport does not offer
// (ndisshim.OffloadCaps.Takes) is cut into segments or checksummed here
// before it is sent, as tcpip.sys does for a NIC without LSO. Without
// VnetHdr the NIC TAP takes plain frames only, so large frames and partial
// checksums the miniport indicates are cut and finished here before they
// are written (as wireguard-go does for a TUN without offloads).

import (
	"sync"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/tapdev"
)

// sendHeadroom is kept before every frame the binding sends: room for the
// miniport's virtio-net header (NdisRetreatNetBufferDataStart).
const sendHeadroom = tapdev.VnetHdrLen

// maxSegments is how many segments of a large frame cut in software are
// built at once: a 64 KiB frame with an MSS of 88 bytes makes 745, one
// with Linux's smallest MSS (48, net.ipv4.tcp_min_snd_mss) 1366, so a
// frame with more is cut in parts (tapdev.GSOSplitFrom).
const maxSegments = 1024

// segArena is the writer's room for frames it cuts or checksums: twice
// the largest frame, and its headers.
const segArena = 2*(65535+14+4) + 64*1024

type nicQueue struct {
	s     *Stack
	index int
	dev   Device
	intr  *ndisshim.Interrupt

	// reader scratch: this queue's interrupt goroutine only
	rd       *ndisshim.BatchFiller // reads host frames into send NBLs of the send pool
	segNBLs  []*ndisshim.NetBufferList
	segBufs  [][]byte
	segSizes []int
	mod      *ndisshim.Moderator // the reader's interrupt moderation; the opposite direction is the frames written to the NIC TAP
	// poller runs q.poll after a small indication (Config.PollOnReceive):
	// armed after registration, disarmed before deregistration
	poller ndisshim.Poller
	// rxDev follows dev's drops on read (the reader's alone)
	rxDev tapdev.CounterWatch

	w writer
}

// writer is one queue's write scratch for receive indications.
type writer struct {
	mu   sync.Mutex
	s    *Stack
	dev  Device
	bufs [][]byte
	// software offload (only without VnetHdr): segments and finished
	// checksums are written into arena
	arena    []byte
	used     int
	segBufs  [][]byte
	segSizes []int
	res      []tapdev.TxResult // what became of each frame of a flush
}

func newNICQueue(s *Stack, index int, dev Device) *nicQueue {
	b := s.cfg.Batch
	q := &nicQueue{
		s: s, index: index, dev: dev,
		mod: s.cfg.Moderation.NewModerator(s.toHostFrames.Load, &s.modWaits, &s.modSpent),
	}
	// s.sendPool is read at each call: the pause frees it
	q.rd = ndisshim.NewBatchFiller(b, make([]byte, 65535+14+4+tapdev.VnetHdrLen), dev.ReadBatch,
		func(dst []*ndisshim.NetBufferList) int { return s.sendPool.AllocateBatch(dst) },
		func(chain *ndisshim.NetBufferList) { s.sendPool.FreeChain(chain) })
	q.w = writer{s: s, dev: dev, bufs: make([][]byte, 0, 256), res: make([]tapdev.TxResult, 256)}
	q.rxDev = tapdev.WatchCounters(dev)
	if s.vnet > 0 {
		// frames read from the NIC TAP may need cutting for the miniport
		q.segNBLs = make([]*ndisshim.NetBufferList, maxSegments)
		q.segBufs = make([][]byte, maxSegments)
		q.segSizes = make([]int, maxSegments)
	} else {
		q.w.arena = make([]byte, segArena)
		q.w.segBufs = make([][]byte, maxSegments)
		q.w.segSizes = make([]int, maxSegments)
	}
	return q
}

// writerIndex is the queue whose writer writes nbl: the one its RSS hash
// names (0 with one queue).
func (s *Stack) writerIndex(nbl *ndisshim.NetBufferList) int {
	if n := len(s.queues); n > 1 {
		return int(nbl.Info.HashValue % uint32(n))
	}
	return 0
}

// writeIndicated writes an indicated chain to the NIC TAP, each run of
// NBLs with the same writer by that writer (so every flow is written on
// one queue), and returns the frames written. The chain's links are left
// as they are: it is returned whole.
func (s *Stack) writeIndicated(head *ndisshim.NetBufferList) int {
	n := 0
	for run := head; run != nil; {
		w := &s.queues[s.writerIndex(run)].w
		w.mu.Lock()
		k, next := w.writeChain(run)
		w.mu.Unlock()
		n += k
		run = next
	}
	return n
}

// writeChain writes the frames of head and the NBLs after it that have the
// same writer to the NIC TAP; it returns how many frames it wrote and the
// first NBL it left (nil at the end of the chain). The caller holds w.mu.
func (w *writer) writeChain(head *ndisshim.NetBufferList) (int, *ndisshim.NetBufferList) {
	s := w.s
	bufs := w.bufs[:0]
	w.used = 0
	written, bytes := 0, 0
	idx := s.writerIndex(head)
	var next *ndisshim.NetBufferList
	for nbl := head; nbl != nil; nbl = nbl.Next {
		if s.writerIndex(nbl) != idx {
			next = nbl
			break
		}
		for nb := nbl.FirstNB; nb != nil; nb = nb.Next {
			switch {
			case s.vnet > 0:
				if nb.Offset < s.vnet { // no headroom for the header: cannot go out
					s.writeErrs.Add(1)
					continue
				}
				tapdev.VnetHdrFromNBLInfo(nbl.Info).Encode(nb.Data[nb.Offset-s.vnet : nb.Offset])
				bufs = append(bufs, nb.Data[nb.Offset-s.vnet:nb.Offset+nb.Length])
			case nbl.Info.LSO.MSS > 0 || nbl.Info.Checksum.NeedsChecksum:
				// A plain TAP takes neither: cut and finish here.
				// the kernel's header length is a hint: find the real one
				h := tapdev.NormalizeGSO(nb.Bytes(), tapdev.VnetHdrFromNBLInfo(nbl.Info))
				k, segLen := tapdev.SegmentCount(nb.Length, h), nb.Length
				if h.GSOType != tapdev.VnetGSONone {
					segLen = int(h.HdrLen) + int(h.GSOSize)
				}
				if k < 1 || segLen < 1 || segLen > len(w.arena) {
					s.dropSegment.Add(1)
					continue
				}
				// Into the arena and the write batch as far as they
				// hold, then written, and on (a tiny MSS makes more
				// segments than either holds).
				var err error
				for first := 0; first < k && err == nil; {
					if w.used+segLen > len(w.arena) || len(bufs) == cap(bufs) {
						written += w.flush(bufs)
						bufs, w.used = bufs[:0], 0
					}
					m := min(k-first, len(w.segBufs), (len(w.arena)-w.used)/segLen, cap(bufs)-len(bufs))
					for j := 0; j < m; j++ {
						w.segBufs[j] = w.arena[w.used : w.used+segLen : w.used+segLen]
						w.used += segLen
					}
					var n int
					n, err = tapdev.GSOSplitFrom(nb.Bytes(), h, first, w.segBufs[:m], w.segSizes[:m])
					for j := 0; j < n; j++ {
						bufs = append(bufs, w.segBufs[j][:w.segSizes[j]])
					}
					first += n
				}
				if err != nil {
					s.dropSegment.Add(1)
					continue
				}
				if h.GSOType != tapdev.VnetGSONone {
					s.segToHost.Add(1)
				} else {
					s.csumToHost.Add(1)
				}
			default:
				bufs = append(bufs, nb.Bytes())
			}
			bytes += nb.Length
		}
	}
	written += w.flush(bufs)
	w.bufs = bufs[:0]
	s.toHostBytes.Add(int64(bytes))
	return written, next
}

// flush writes bufs to the NIC TAP and counts what it wrote.
func (w *writer) flush(bufs [][]byte) int {
	if len(bufs) == 0 {
		return 0
	}
	s := w.s
	if cap(w.res) < len(bufs) {
		w.res = make([]tapdev.TxResult, len(bufs))
	}
	res := w.res[:len(bufs)]
	n, err := w.dev.WriteBatch(bufs, res)
	if n < len(bufs) {
		// Each frame not written, by what the NIC TAP said of it: no
		// room, or refused or left unwritten by an error.
		var noRoom, errs int64
		for _, r := range res {
			switch r {
			case tapdev.TxWritten:
			case tapdev.TxNoRoom:
				noRoom++
			default:
				errs++
			}
		}
		s.toHostNoRoom.Add(noRoom)
		s.writeErrs.Add(errs)
	}
	if err != nil && s.writeWarned.CompareAndSwap(false, true) { // the first failure: say it once
		s.log.Warn("write to NIC TAP failed (counted as write-errors from now on)", "nic", s.cfg.NICName, "err", err)
	}
	clear(bufs) // drop references into the miniport's buffers
	s.toHostFrames.Add(int64(n))
	return n
}

// readFromNIC is the reader's DPC: host frames → one send chain per batch.
func (q *nicQueue) readFromNIC() {
	// bounded (let the shim see stop requests), and after a moderation
	// wait by the moderation budget
	frames, bytes := q.read(readRounds, q.mod.Limit(readRounds*len(q.rd.Batch)))
	q.mod.After(frames, bytes)
}

// readRounds is how many batches a run of the reader's DPC reads at most.
const readRounds = 16

// poll is the reader's DPC body a small indication runs on its own
// goroutine (ndisshim.Interrupt.TryRunDPC): one batch at most, no
// moderation (the indicating DPC must not wait), counted.
func (q *nicQueue) poll() {
	frames, _ := q.read(1, len(q.rd.Batch))
	q.s.polls.Add(1)
	q.s.pollFrames.Add(int64(frames))
}

// read reads host frames and sends them down, up to rounds batches and
// limit frames or until the fd is empty; it returns the frames and bytes
// it read.
func (q *nicQueue) read(rounds, limit int) (frames, bytes int) {
	s := q.s
	defer func() { q.poller.Ran(frames, bytes) }()
	for round := 0; round < rounds && frames < limit; round++ {
		if s.paused.Load() {
			n, err := q.rd.Discard()
			if err != nil || n == 0 {
				return frames, bytes
			}
			s.dropPaused.Add(int64(n))
			continue
		}
		got, dropped, empty, err := q.rd.FillUpTo(sendHeadroom-s.vnet, limit-frames)
		if dropped > 0 {
			s.dropNoSendBuffer.Add(int64(dropped))
		}
		if d := q.rxDev.Since(); d.RxOversize > 0 {
			s.dropOversize.Add(int64(d.RxOversize))
		}
		frames += got
		for _, n := range q.rd.Sizes[:got] {
			bytes += n
		}
		if got > 0 {
			q.sendBatch(got)
		}
		if err != nil {
			s.readerError(err)
			return frames, bytes
		}
		if empty {
			return frames, bytes
		}
	}
	return frames, bytes
}

// chain is a send chain being built.
type chain struct {
	head, tail    *ndisshim.NetBufferList
	frames, bytes int
}

func (c *chain) add(nbl *ndisshim.NetBufferList) {
	nbl.Next = nil
	if c.head == nil {
		c.head = nbl
	} else {
		c.tail.Next = nbl
	}
	c.tail = nbl
	c.frames++
	c.bytes += nbl.FirstNB.Length
}

// send sends the chain built so far with one SendNetBufferLists.
func (q *nicQueue) send(c *chain) {
	if c.head == nil {
		return
	}
	s := q.s
	s.toWireFrames.Add(int64(c.frames))
	s.toWireBytes.Add(int64(c.bytes))
	s.b.SendNetBufferLists(c.head, ndisshim.DefaultPort, 0)
	*c = chain{}
}

// sendBatch sends the got frames the reader read into q.rd.Batch as one chain;
// with the virtio-net header, each frame's header becomes its NBL's
// checksum and large-send information, and a malformed one is dropped.
// A frame the miniport cannot take as it is gets cut or checksummed first.
func (q *nicQueue) sendBatch(got int) {
	s := q.s
	var c chain
	var bad *ndisshim.NetBufferList
	var co coalescer
	uso4 := s.caps.USOIPv4 > 0 && s.caps.Checksum > 0
	uso6 := s.caps.USOIPv6 > 0 && s.caps.Checksum > 0
	coalesce := s.cfg.CoalesceUDP && (uso4 || uso6) && got > 1
	for i := 0; i < got; i++ {
		nbl, size := q.rd.Batch[i], q.rd.Sizes[i]-s.vnet
		nbl.Next = nil
		nbl.Info = ndisshim.NBLInfo{}
		if s.vnet > 0 {
			h, err := tapdev.DecodeVnetHdr(nbl.FirstNB.Data[sendHeadroom-s.vnet:sendHeadroom], size)
			if err != nil || size < 14 {
				s.dropBadVnetHdr.Add(1)
				nbl.Next, bad = bad, nbl
				continue
			}
			nbl.Info = h.NBLInfoFor(nbl.FirstNB.Data[sendHeadroom : sendHeadroom+size]) // USO: IPv4 or IPv6 from the frame
		}
		nbl.FirstNB.SetBytes(sendHeadroom, size) // the headroom stays in front for the miniport
		if s.vnet > 0 && !s.caps.Takes(nbl.Info) {
			co.reset()
			if !q.softOffload(nbl, &c) {
				nbl.Next, bad = bad, nbl
			}
			continue
		}
		if coalesce && co.offer(nbl, uso4, uso6) {
			c.frames++
			c.bytes += size
			nbl.Next, bad = bad, nbl // its payload rides in the open send
			s.coalesced.Add(1)
			continue
		}
		c.add(nbl)
	}
	if bad != nil {
		s.sendPool.FreeChain(bad)
	}
	q.send(&c)
}

// softOffload does for nbl what the miniport does not: it finishes a
// partial checksum in place, or cuts a large frame into new NBLs, and adds
// the result to c. It reports false when nbl is to be freed unsent.
func (q *nicQueue) softOffload(nbl *ndisshim.NetBufferList, c *chain) bool {
	s := q.s
	frame := nbl.FirstNB.Bytes()
	h := tapdev.NormalizeGSO(frame, tapdev.VnetHdrFromNBLInfo(nbl.Info)) // hdr_len is a hint
	if h.GSOType == tapdev.VnetGSONone {
		if err := tapdev.ChecksumFrame(frame, h); err != nil {
			s.dropSegment.Add(1)
			return false
		}
		nbl.Info.Checksum = ndisshim.ChecksumInfo{}
		s.csumToWire.Add(1)
		c.add(nbl)
		return true
	}
	k := tapdev.SegmentCount(len(frame), h)
	if k < 1 {
		s.dropSegment.Add(1)
		return false
	}
	// The segments are built in parts of at most maxSegments, and of
	// what the send pool has free: a part that is not the last is sent at
	// once, so its NBLs come back for the next (the miniport completes a
	// send as it writes it). A tiny MSS makes more segments than the pool
	// holds.
	first := 0
	for first < k {
		m := min(k-first, len(q.segNBLs))
		got := s.sendPool.AllocateBatch(q.segNBLs[:m])
		if got < m {
			// Send what is built: the completion gives its NBLs back.
			s.sendPool.FreeChain(ndisshim.Chain(q.segNBLs[:got]...))
			q.send(c)
			got = s.sendPool.AllocateBatch(q.segNBLs[:m]) // all, or a smaller part
		}
		if got == 0 {
			// The segments from first on are lost (TCP sends them again).
			s.dropNoSendBuffer.Add(1)
			if first == 0 {
				return false
			}
			break
		}
		for j := 0; j < got; j++ {
			q.segBufs[j] = q.segNBLs[j].FirstNB.Data[sendHeadroom:]
		}
		n, err := tapdev.GSOSplitFrom(frame, h, first, q.segBufs[:got], q.segSizes[:got])
		clear(q.segBufs[:got])
		if err != nil {
			s.sendPool.FreeChain(ndisshim.Chain(q.segNBLs[:got]...))
			s.dropSegment.Add(1)
			if first == 0 {
				return false
			}
			break
		}
		for j := 0; j < got; j++ {
			seg := q.segNBLs[j]
			if j >= n {
				seg.Next = nil
				s.sendPool.FreeChain(seg)
				continue
			}
			seg.Info = ndisshim.NBLInfo{}
			seg.FirstNB.SetBytes(sendHeadroom, q.segSizes[j])
			c.add(seg)
		}
		first += n
		if first < k {
			q.send(c)
		}
	}
	if first == k { // else cut short: counted as dropped above
		s.segToWire.Add(1)
	}
	s.sendPool.FreeChain(nbl)
	return true
}

func (s *Stack) readerError(err error) {
	s.log.Error("NIC TAP read failed", "nic", s.cfg.NICName, "err", err)
}
