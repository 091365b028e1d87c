package adapter

// The data path (NetVMini's datapath.c).
//
// Receive: each queue's interrupt goroutine wakes when the hardware TAP is readable
// and runs dpc: take a batch of free blocks from the pool in one call, read
// frames straight into them until the batch is full or the fd is empty,
// drop (and count) runts, oversize frames and frames the packet filter
// rejects, chain the rest and make ONE indication for the batch. Ownership
// of the chain passes to the stack; it comes back through
// ReturnNetBufferLists, which gives the whole chain to the pool in one call.
// When the pool is low the batch goes up with RESOURCES: the stack copies
// what it needs and the blocks are recycled as soon as the call returns.
// When it is empty the frame is read into a scratch buffer and dropped: the
// reader never blocks on the stack.
//
// Send: the protocol's chain is written to the TAP on the caller's goroutine
// (a TAP write runs the receiving kernel stack in the writer's context) and
// completed as one chain.

import (
	"errors"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/tapdev"
)

// dpc is the receive DPC of queue q; it runs on q's interrupt goroutine
// (or, through poll, on a sender's) under the interrupt's DPC exclusion.
func (q *queue) dpc() {
	// bounded (let the shim see stop requests), and after a moderation
	// wait by the moderation budget
	frames, bytes := q.receive(dpcRounds, q.mod.Limit(dpcRounds*len(q.rx.Batch)))
	q.mod.After(frames, bytes)
}

// dpcRounds is how many batches a DPC run reads at most.
const dpcRounds = 16

// poll is the DPC body a small send runs on its own goroutine
// (ndisshim.Interrupt.TryRunDPC): one batch at most, no moderation (the
// sender must not wait), counted.
func (q *queue) poll() {
	frames, _ := q.receive(1, len(q.rx.Batch))
	q.m.ctr.RxPolls.Add(1)
	q.m.ctr.RxPollFrames.Add(int64(frames))
}

// receive reads and indicates up to rounds batches and limit frames, until
// the fd is empty; it returns the frames and bytes it read.
func (q *queue) receive(rounds, limit int) (frames, bytes int) {
	m := q.m
	defer func() { q.poller.Ran(frames, bytes) }()
	for round := 0; round < rounds && frames < limit; round++ {
		// a virtio-net header lands in the headroom
		got, dropped, empty, err := q.rx.FillUpTo(headroom-m.vnet, limit-frames)
		if dropped > 0 {
			m.ctr.RxDropNoBuffer.Add(int64(dropped))
		}
		q.countDeviceDrops()
		frames += got
		for _, n := range q.rx.Sizes[:got] {
			bytes += n
		}
		if got > 0 {
			q.indicate(got)
		}
		if err != nil {
			m.deviceError(err)
			return frames, bytes
		}
		if empty {
			return frames, bytes
		}
	}
	return frames, bytes
}

// indicate validates the got frames of q.rx.Batch and indicates the good
// ones as one chain.
func (q *queue) indicate(got int) {
	m := q.m
	maxFrame := m.cfg.maxFrame()
	filter := m.filter.Load()
	enabled := m.rxEnabled.Load()
	m.mcMu.Lock() // once per batch: a set replaces the list, never edits it
	multicast := m.multicast
	m.mcMu.Unlock()
	var head, tail, bad *ndisshim.NetBufferList
	count, bytes := 0, 0
	for i := 0; i < got; i++ {
		nbl := q.rx.Batch[i]
		size := q.rx.Sizes[i] - m.vnet
		nbl.Next = nil
		drop := true
		limit := maxFrame
		var vh tapdev.VnetHdr
		var vhErr error
		if m.vnet > 0 && size >= 0 {
			vh, vhErr = tapdev.DecodeVnetHdr(nbl.FirstNB.Data[headroom-m.vnet:headroom], size)
			if vh.GSOType != tapdev.VnetGSONone {
				limit = maxGSOFrame // a large send: the wire's kernel segments it
			}
		}
		switch {
		case !enabled:
			m.ctr.RxDropNotReady.Add(1)
		case size < 14:
			m.ctr.RxDropRunt.Add(1)
		case vhErr != nil:
			m.ctr.RxDropBadVnetHdr.Add(1)
		default:
			switch classify(nbl.FirstNB.Data[headroom:headroom+size], m.cur, filter, limit, multicast) {
			case verdictRunt:
				m.ctr.RxDropRunt.Add(1)
			case verdictOversize:
				m.ctr.RxDropOversize.Add(1)
			case verdictFiltered:
				m.ctr.RxDropFiltered.Add(1)
			default:
				drop = false
			}
		}
		if drop {
			nbl.Next = bad
			bad = nbl
			continue
		}
		nbl.FirstNB.SetBytes(headroom, size)
		if m.vnet > 0 {
			nbl.Info = vh.NBLInfoFor(nbl.FirstNB.Bytes()) // USO: IPv4 or IPv6 from the frame
		}
		if len(m.queues) > 1 {
			nbl.Info.HashValue = flowHash(nbl.FirstNB.Bytes())
		}
		if head == nil {
			head = nbl
		} else {
			tail.Next = nbl
		}
		tail = nbl
		count++
		bytes += size
	}
	if bad != nil {
		m.pool.Recycle(bad)
	}
	if head == nil {
		return
	}
	var flags ndisshim.ReceiveFlags
	resources := m.pool.LowResources()
	if resources {
		flags |= ndisshim.ReceiveFlagResources
	} else {
		m.pool.MarkIndicated(head)
	}
	if err := m.a.IndicateReceive(head, ndisshim.DefaultPort, count, flags); err != nil {
		// Not ready (paused, or no protocol bound): the chain is still ours.
		m.pool.Recycle(head)
		m.ctr.RxDropNotReady.Add(int64(count))
		return
	}
	m.ctr.Indications.Add(1)
	m.ctr.countIndication(count)
	m.ctr.RxFrames.Add(int64(count))
	m.ctr.RxBytes.Add(int64(bytes))
	q.rxFrames.Add(int64(count))
	q.rxBytes.Add(int64(bytes))
	if resources {
		m.ctr.ResourcesIndications.Add(1)
		m.pool.Recycle(head) // ownership came back when the call returned
	}
}

// countDeviceDrops adds to RxDropOversize the frames the queue's device
// dropped since the last call because they were longer than the receive
// buffer they were read into (tapdev.Counters.RxOversize: a jumbo frame on
// a hardware TAP whose MTU was raised past the adapter's). It is the same
// cause as a frame classify finds longer than the largest frame, a NIC's
// "frame too long" receive error, so it is counted there (and in RcvError
// and RcvDiscards). The DPC body calls it after each read (DPC exclusion
// makes rxDev the body's alone).
func (q *queue) countDeviceDrops() {
	if d := q.rxDev.Since(); d.RxOversize > 0 {
		q.m.ctr.RxDropOversize.Add(int64(d.RxOversize))
	}
}

// maxGSOFrame is the largest large-send frame: a 64 KiB IP packet behind an
// Ethernet header and a VLAN tag.
const maxGSOFrame = 65535 + 14 + 4

// LinkChanged tells the miniport that the hardware TAP's link was set up
// or down (a link watch: tapdev.WatchLink), as a NIC learns it from a link
// interrupt, so the bindings and the OIDs know without waiting for a send.
// A change it already knew of (a write found the link down first) does
// nothing. It is the newest observation: a send's made before it is stale.
func (m *Miniport) LinkChanged(up bool) {
	seq := m.linkObs.Add(1)
	m.observeLink(seq)
	m.setLink(up, seq, false)
}

// observeLink records that observation seq was made (a write went through
// or found the link down; a watch event). A send takes seq just before its
// write and calls this under its txMu right after it, so each queue's
// observations are recorded in the order its writes were made.
func (m *Miniport) observeLink(seq uint64) {
	for {
		old := m.linkSeen.Load()
		if old >= seq || m.linkSeen.CompareAndSwap(old, seq) {
			return
		}
	}
}

// sendSawLink is what a send learned of the link from its write (down: EIO;
// up: the write went through) when that differs from the recorded state,
// seq being the number it took before the write. It is applied unless a
// newer observation is known (a send reports after releasing its txMu, so
// the watch or another send may have seen the link since, and agreed with
// the state or changed it: applied late, the old observation would stand
// for good).
func (m *Miniport) sendSawLink(up bool, seq uint64) { m.setLink(up, seq, true) }

// setLink records that the hardware TAP's link went down or came back,
// says so in the log, and has the bindings told (NDIS_STATUS_LINK_STATE),
// as a NIC does on a link interrupt. Queues sending at once may all see
// the change: only the first records it.
func (m *Miniport) setLink(up bool, seq uint64, fromSend bool) {
	m.linkMu.Lock()
	if m.linkDown.Load() == !up || fromSend && m.linkSeen.Load() > seq {
		m.linkMu.Unlock()
		return
	}
	m.linkDown.Store(!up)
	if up {
		m.log.Info("hardware link up", "tap", m.cfg.HardwareName)
	} else {
		m.log.Warn("hardware link down: sends are dropped (MEDIA_DISCONNECTED, counted as link-down) until it is up", "tap", m.cfg.HardwareName)
	}
	m.linkMu.Unlock()
	m.reportLink()
}

// reportLink indicates the link state to the bindings until what they
// were told last is the state. The indication runs with no lock held: a
// protocol may send from its status handler, and that send may find the
// link changed again (then setLink, finding a report running, leaves it to
// this loop, which looks again before it stops). One goroutine reports at
// a time, so the bindings see the changes in order; a change undone before
// it was reported is not reported (the log has both).
func (m *Miniport) reportLink() {
	m.linkMu.Lock()
	if m.linkReporting {
		m.linkMu.Unlock()
		return
	}
	m.linkReporting = true
	// After a surprise removal the shim has told the bindings the link is
	// down (NotifySurpriseRemoval): a send that wrote just before must not
	// tell them it is up again.
	for m.linkReportedDown != m.linkDown.Load() && !m.removed.Load() {
		down := m.linkDown.Load()
		m.linkMu.Unlock()
		m.a.IndicateStatus(ndisshim.StatusIndication{Code: ndisshim.StatusLinkState,
			Data: ndisshim.LinkState{Connected: !down, SpeedBps: m.cfg.LinkSpeedBps, Duplex: "full"}})
		m.linkMu.Lock()
		m.linkReportedDown = down
	}
	m.linkReporting = false
	m.linkMu.Unlock()
}

// deviceError handles a read or write error on the hardware.
func (m *Miniport) deviceError(err error) {
	if errors.Is(err, tapdev.ErrDeviceGone) {
		if !m.removed.Swap(true) {
			m.log.Error("hardware TAP gone", "tap", m.cfg.HardwareName, "err", err)
		}
		return
	}
	m.log.Warn("hardware I/O error", "tap", m.cfg.HardwareName, "err", err)
}

// ReturnNetBufferLists is MiniportReturnNetBufferLists: the stack gives
// back a chain (any order, any mix of indications); the pool takes it in
// one operation.
func (m *Miniport) ReturnNetBufferLists(nbls *ndisshim.NetBufferList, flags ndisshim.ReturnFlags) {
	if err := m.pool.Return(nbls); err != nil {
		m.log.Error("return of receive NBLs", "err", err)
	}
}

// SendNetBufferLists is MiniportSendNetBufferLists: write every frame of
// the chain to the hardware TAP and complete the chain. The miniport owns
// the chain until SendNetBufferListsComplete. Each NBL leaves on the queue
// its flow hashes to (sendQueue); each queue used takes its send lock once.
func (m *Miniport) SendNetBufferLists(nbls *ndisshim.NetBufferList, port ndisshim.PortNumber, flags ndisshim.SendFlags) {
	var used uint32 // bit i: some NBL leaves on queue i
	if len(m.queues) == 1 {
		used = 1
		for nbl := nbls; nbl != nil; nbl = nbl.Next {
			nbl.MiniportReserved[0] = 0
		}
	} else {
		for nbl := nbls; nbl != nil; nbl = nbl.Next {
			q := 0
			if nbl.FirstNB != nil {
				q = m.sendQueue(nbl.FirstNB.Bytes()).index
			}
			nbl.MiniportReserved[0] = uintptr(q)
			used |= 1 << q
		}
	}
	small := m.cfg.PollOnSend && ndisshim.SmallExchange(nbls)
	var wrote uint32 // bit i: queue i wrote some frame
	for i, q := range m.queues {
		if used&(1<<i) != 0 && q.send(nbls) > 0 {
			wrote |= 1 << i
		}
	}
	m.a.SendNetBufferListsComplete(nbls, 0)
	if small {
		for i, q := range m.queues {
			if wrote&(1<<i) != 0 {
				q.poller.Poll()
			}
		}
	}
}

// A small send (ndisshim.SmallExchange: a ping, an ACK, a DNS query, the
// kind of send whose reply someone waits for) polls the receive ring of
// the queue it left on once it is written (Config.PollOnSend): a TAP write
// runs the wire's stack in the writer's context, so a reply it provokes is
// usually in the ring by then. Not while that ring carries a bulk stream
// (ndisshim.BulkRun).

// send writes the frames of the chain's NBLs that leave on q and returns
// how many it wrote.
func (q *queue) send(nbls *ndisshim.NetBufferList) int {
	m := q.m
	mine := func(nbl *ndisshim.NetBufferList) bool { return nbl.MiniportReserved[0] == uintptr(q.index) }
	q.txMu.Lock()
	if !m.txEnabled.Load() || m.removed.Load() {
		// Checked under txMu: PauseEx takes every queue's txMu after
		// clearing txEnabled, so no send is written after PauseEx returns.
		q.txMu.Unlock()
		st := ndisshim.StatusPaused
		if m.removed.Load() {
			st = ndisshim.StatusNotAccepted
		}
		n := 0
		for nbl := nbls; nbl != nil; nbl = nbl.Next {
			if mine(nbl) {
				nbl.Status = st
				n++
			}
		}
		m.ctr.TxDropPaused.Add(int64(n))
		return 0
	}
	maxFrame := m.cfg.maxFrame()
	bufs := q.txBufs[:0]
	frames, bytes := 0, 0
	for nbl := nbls; nbl != nil; nbl = nbl.Next {
		if !mine(nbl) {
			continue
		}
		nbl.Status = ndisshim.StatusSuccess
		limit := maxFrame
		if m.vnet > 0 && nbl.Info.LSO.MSS > 0 {
			limit = maxGSOFrame
		}
		for nb := nbl.FirstNB; nb != nil; nb = nb.Next {
			if nb.Length < 14 || nb.Length > limit {
				nbl.Status = ndisshim.StatusInvalidLength
				m.ctr.TxDropOversize.Add(1)
				continue
			}
			if m.vnet == 0 {
				bufs = append(bufs, nb.Bytes())
			} else {
				// The protocol leaves headroom before the frame
				// (NdisRetreatNetBufferDataStart): the header goes there.
				if nb.Offset < m.vnet {
					nbl.Status = ndisshim.StatusBufferTooShort
					m.ctr.TxErrors.Add(1)
					continue
				}
				tapdev.VnetHdrFromNBLInfo(nbl.Info).Encode(nb.Data[nb.Offset-m.vnet : nb.Offset])
				bufs = append(bufs, nb.Data[nb.Offset-m.vnet:nb.Offset+nb.Length])
			}
			bytes += nb.Length
		}
		nbl.MiniportReserved[1] = uintptr(len(bufs)) // where its frames end in bufs (completeFrames)
	}
	linkUp, linkDown := false, false // a change of the link to report once txMu is free
	var linkSeq uint64               // this write's observation of the link
	if len(bufs) > 0 {
		linkSeq = m.linkObs.Add(1)
		if cap(q.txRes) < len(bufs) {
			q.txRes = make([]tapdev.TxResult, cap(bufs))
		}
		res := q.txRes[:len(bufs)]
		clear(res) // a result the device fails to give reads TxUnwritten, not the last batch's
		w, err := q.dev.WriteBatch(bufs, res)
		frames = w
		if w < len(bufs) {
			// What a frame an error left becomes: a pulled cable drops
			// it with MEDIA_DISCONNECTED (the next send tries again).
			unwritten := ndisshim.StatusFailure
			if errors.Is(err, tapdev.ErrLinkDown) {
				unwritten = ndisshim.StatusMediaDisconnected
			}
			bytes = q.completeFrames(nbls, bufs, res, unwritten)
		}
		switch {
		case err == nil:
			m.observeLink(linkSeq)
			linkUp = m.linkDown.Load()
		case errors.Is(err, tapdev.ErrLinkDown):
			m.observeLink(linkSeq)
			linkDown = !m.linkDown.Load()
		default:
			m.deviceError(err)
		}
	}
	clear(bufs) // drop references into the protocol's buffers
	q.txBufs = bufs[:0]
	q.txMu.Unlock()
	if linkUp || linkDown {
		// Not under txMu: a protocol may send from its status handler.
		m.sendSawLink(linkUp, linkSeq)
	}
	m.ctr.TxFrames.Add(int64(frames))
	q.txFrames.Add(int64(frames))
	m.ctr.TxBytes.Add(int64(bytes))
	q.txBytes.Add(int64(bytes))
	return frames
}

// completeFrames is send's account of a batch the device did not write
// whole: each of q's NBLs in the chain completes with the outcome of the
// frames that did not go out (res, as WriteBatch reported it): FAILURE
// for one the hardware TAP refused as malformed, unwritten's status for
// one an error left unwritten (MEDIA_DISCONNECTED when the link is down),
// the first of these in the NBL; RESOURCES when the TAP only had no room
// for some (sending again may work); SUCCESS when all went. An NBL that
// failed already (INVALID_LENGTH) keeps its status. Each frame not
// written is counted once, by cause: TxDropNoRoom, TxErrors,
// TxDropLinkDown (or TxErrors for another error). It returns
// the bytes of the frames written. send recorded where each NBL's frames
// end in MiniportReserved[1]; the caller holds txMu.
func (q *queue) completeFrames(nbls *ndisshim.NetBufferList, bufs [][]byte, res []tapdev.TxResult, unwritten ndisshim.Status) int {
	m := q.m
	bytes := 0
	var noRoom, refused, lost int64
	start := 0
	for nbl := nbls; nbl != nil; nbl = nbl.Next {
		if nbl.MiniportReserved[0] != uintptr(q.index) {
			continue
		}
		end := int(nbl.MiniportReserved[1])
		st := ndisshim.StatusSuccess
		for i := start; i < end; i++ {
			var fst ndisshim.Status
			switch res[i] {
			case tapdev.TxWritten:
				bytes += len(bufs[i]) - m.vnet
				continue
			case tapdev.TxNoRoom:
				noRoom++
				fst = ndisshim.StatusResources
			case tapdev.TxRefused:
				refused++
				fst = ndisshim.StatusFailure
			default: // TxUnwritten, or a device's value it should not give
				lost++
				fst = unwritten
			}
			if st == ndisshim.StatusSuccess || st == ndisshim.StatusResources {
				st = fst // RESOURCES only when no frame failed otherwise
			}
		}
		if nbl.Status == ndisshim.StatusSuccess {
			nbl.Status = st
		}
		start = end
	}
	m.ctr.TxDropNoRoom.Add(noRoom)
	m.ctr.TxErrors.Add(refused)
	if unwritten == ndisshim.StatusMediaDisconnected {
		m.ctr.TxDropLinkDown.Add(lost)
	} else {
		m.ctr.TxErrors.Add(lost)
	}
	return bytes
}
