package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/tapminiport/tapminiport/adapter"
	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/hoststack"
)

// stop runs pause → unbind → halt → unload and prints the exit report.
// Further signals: the second says it is still draining, the third forces
// ShutdownEx and exits 3 with what was still held, unless HaltEx has
// started: then nothing can be forced (the miniport gets no ShutdownEx
// during or after its HaltEx) and the halt is let finish.
func (m *machine) stop(sigs, hups <-chan os.Signal) int {
	m.endMu.Lock()
	m.stopping = true
	m.endMu.Unlock()
	if m.steadyTo.at.IsZero() { // not sampled where the run's wait ended
		m.steadyTo = sampleSteady()
	}
	done := make(chan struct{})
	forced := make(chan struct{})
	go func() {
		n := 1
		for {
			select {
			case <-done:
				return
			case <-hups: // SIGHUP does not count
				m.nothingToReload()
			case s := <-sigs:
				n++
				if n == 2 {
					if st := m.a.State(); st == ndisshim.StatePaused || st == ndisshim.StateHalted { // the pause is done: unbind, halt or unload
						m.log.Warn("still halting: a third signal forces a shutdown unless HaltEx has started", "signal", s.String())
						continue
					}
					r := m.a.HeldReport("halt", m.started)
					m.log.Warn("still draining: send the signal once more to force a shutdown", "signal", s.String(), "held", r.String())
					continue
				}
				m.log.Error("forced: ShutdownEx without waiting", "signal", s.String())
				close(forced)
				return
			}
		}
	}()
	type result struct {
		code int
		err  error
	}
	res := make(chan result, 1)
	go func() { c, err := m.halt(); res <- result{c, err} }()
	var r result
	select {
	case r = <-res:
	case <-forced:
		select {
		case r = <-res: // the halt ended as the third signal came: its result stands
		default:
			code, err := m.force("third signal")
			if err == nil {
				return code
			}
			m.log.Warn("third signal: the halt has called HaltEx and cannot be forced; waiting for it to finish", "err", err)
			r = <-res
		}
	}
	close(done)
	if r.code == exitForced { // the adapter was not halted
		why := fmt.Sprint(r.err)
		if errors.Is(r.err, ndisshim.ErrDrainTimeout) {
			m.log.Error("pause: gave up waiting (--halt-timeout); shutting down without freeing held memory", "err", r.err)
			why = "--halt-timeout " + m.o.haltTimeout.String()
		} else {
			m.log.Error("halt failed; shutting down without freeing held memory", "err", r.err)
		}
		code, err := m.force(why)
		if err == nil {
			return code
		}
		m.log.Error("forced shutdown refused", "err", err) // not reached: nothing called HaltEx
	} else if r.err != nil {
		m.log.Error("stop", "err", r.err)
	}
	// The halt did these already (each runs once): kept for a halt that
	// returns early one day.
	m.freezeMiniport()
	m.stopObservers()
	m.stopDumps()
	m.closeCapture()
	m.report(r.code, r.err)
	return r.code
}

// halt is the orderly path. It returns the exit code.
func (m *machine) halt() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), m.o.haltTimeout)
	defer cancel()
	t := time.Now()
	m.log.Info("pause: start", "held_by_stack", m.a.Stats().HeldNow)
	if err := m.a.Pause(ctx); err != nil {
		return exitForced, err
	}
	m.log.Info("pause: done", "took", time.Since(t).Round(time.Microsecond), "drained_nbls", m.a.Stats().DrainedNBLs)
	m.stopWatch(nicWatch, true) // the unbind deletes the NIC TAP (or moves it home)
	m.sampleNICDrops(false)
	t = time.Now()
	if m.st != nil { // nil only in stop_test.go's machines, which have no stack
		if err := m.st.Close(ctx); err != nil {
			m.log.Error("unbind: verifier", "err", err)
		}
		m.log.Info("unbind: done", "binding", hoststack.ProtocolName, "took", time.Since(t).Round(time.Microsecond))
	}
	// The last snapshot, then the metrics server and the stats lines stop:
	// nothing reads the miniport while HaltEx frees it.
	m.freezeMiniport()
	m.stopObservers()
	t = time.Now()
	m.stopWatch(hwWatch, true) // from here on the run deletes its own TAPs
	m.sampleHardwareDrops(false)
	action := ndisshim.HaltDeviceDisabled
	if m.removal().hardware { // also when it was deleted during the pause
		action = ndisshim.HaltDeviceSurpriseRemoved
	}
	haltErr := m.a.Halt(ctx, action)
	var ve *ndisshim.VerifierError
	if haltErr != nil && !errors.As(haltErr, &ve) {
		// Refused before HaltEx (a request still in the miniport when
		// --halt-timeout ran out): the adapter is still paused, holding
		// its device; ShutdownEx is what is left (see stop).
		return exitForced, fmt.Errorf("halt: %w", haltErr)
	}
	m.log.Info("halt: done", "took", time.Since(t).Round(time.Microsecond), "err", haltErr)
	t = time.Now()
	unloadErr := m.drv.Deregister()
	m.log.Info("unload: done", "took", time.Since(t).Round(time.Microsecond))
	m.stopDumps()
	m.closeCapture()
	m.removeWire()
	// No forced exit can be reporting: HaltEx ran, so ShutdownEx was
	// refused (see force).
	m.endMu.Lock()
	m.verdict = unloadErr
	m.endMu.Unlock()
	m.left = leftovers()
	if unloadErr != nil || len(m.left) > 0 {
		return exitVerifier, nil
	}
	if m.removal().device != "" {
		return exitRemoved, nil
	}
	return exitOK, nil
}

// force is ShutdownEx: link down, nothing freed, exit 3 with what is held.
// It does nothing else and returns the adapter's refusal when HaltEx has
// started (or ended): the halt must be let finish.
func (m *machine) force(why string) (int, error) {
	// The watches stop first: ShutdownEx sets the hardware TAP down,
	// which is no cable pull. Refused, nothing is lost: the halt stopped
	// them before HaltEx.
	m.stopRemovalWatch()
	r := m.a.HeldReport("shutdown", m.started)
	if err := m.a.Shutdown(ndisshim.ShutdownBugCheck); err != nil {
		return 0, err
	}
	m.sampleNICDrops(false) // the TAPs are still there: ShutdownEx only sets the link down
	m.sampleHardwareDrops(false)
	if m.st != nil {
		// The binding is never closed on this path: an attached NIC TAP
		// (the user's) goes home here, as the unbind would move it.
		if err := m.st.ReturnAttachedNIC(); err != nil {
			m.log.Error("forced shutdown", "err", err)
		}
	}
	m.freezeMiniport() // ShutdownEx frees nothing: the miniport is still readable
	m.stopObservers()
	m.stopDumps()
	m.closeCapture()
	m.removeWire()
	fmt.Fprintf(m.stdout, "forced shutdown (%s): still held: %s\n", why, r.String())
	m.endMu.Lock()
	m.verdict = fmt.Errorf("not halted: %s", r.String())
	m.endMu.Unlock()
	m.report(exitForced, nil)
	return exitForced, nil
}

// report prints the exit report.
func (m *machine) report(code int, err error) {
	c, s, st := m.snap, m.stackSnap, m.a.Stats()
	w := m.stdout
	fmt.Fprintf(w, "\ntapminiport exit report (ran %s)\n", time.Since(m.started).Round(time.Millisecond))
	fmt.Fprintf(w, "  wire → host: %d packets, %d bytes in %d indications (%d with RESOURCES)\n", c.RxFrames, c.RxBytes, c.Indications, c.ResourcesIndications)
	fmt.Fprintf(w, "  host → wire: %d packets, %d bytes\n", c.TxFrames, c.TxBytes)
	fmt.Fprintf(w, "  receive drops: no-buffer=%d runt=%d oversize=%d filtered=%d not-ready=%d\n",
		c.RxDropNoBuffer, c.RxDropRunt, c.RxDropOversize, c.RxDropFiltered, c.RxDropNotReady)
	fmt.Fprintf(w, "  send drops: paused=%d oversize=%d link-down=%d no-room=%d errors=%d\n", c.TxDropPaused, c.TxDropOversize, c.TxDropLinkDown, c.TxDropNoRoom, c.TxErrors)
	fmt.Fprintf(w, "  stack drops: paused=%d no-send-buffer=%d oversize=%d no-room=%d send-failed=%d write-errors=%d; returned early (hold queue full): %d\n",
		s.DropPaused, s.DropNoSendBuffer, s.DropOversize, s.ToHostNoRoom, s.SendFailed, s.WriteErrors, s.ReturnedEarly)
	fmt.Fprintf(w, "  software offload: segmented to-host=%d to-wire=%d, checksummed to-host=%d to-wire=%d, coalesced udp=%d, dropped=%d\n",
		s.SegmentedToHost, s.SegmentedToWire, s.ChecksummedToHost, s.ChecksummedToWire, s.Coalesced, s.DropSegment)
	if m.o.moderation > 0 {
		fmt.Fprintf(w, "  interrupt moderation (%s after a busy one-way wake-up, then %s): waits receive-dpc=%d nic-reader=%d; budget spent receive-dpc=%d nic-reader=%d\n",
			m.o.moderation, budgetText(m.o.moderationBudget), c.ModerationWaits, s.ModerationWaits, c.ModerationSpent, s.ModerationSpent)
	}
	if m.o.pollOnSend {
		fmt.Fprintf(w, "  receive polls after small sends: %d runs found %d frames\n", c.RxPolls, c.RxPollFrames)
	}
	if m.o.nicPollOnReceive {
		fmt.Fprintf(w, "  NIC TAP polls after small indications: %d runs found %d frames\n", s.Polls, s.PollFrames)
	}
	if len(m.queueSnap) > 1 {
		var b strings.Builder
		for i, q := range m.queueSnap {
			fmt.Fprintf(&b, " q%d rx=%d tx=%d", i, q.RxFrames, q.TxFrames)
		}
		fmt.Fprintf(w, "  queues (packets):%s\n", b.String())
	}
	fmt.Fprintf(w, "  %s\n", m.queueDropsLine())
	fmt.Fprintf(w, "  peak buffers held by the stack: %d of %d\n", st.PeakHeld, m.o.rxBuffers)
	fmt.Fprintf(w, "  receive pool: high-water %d, exhaustions %d\n", c.PoolHighWater, c.PoolExhaustions)
	fmt.Fprintf(w, "  NBLs drained during pause/halt: %d\n", st.DrainedNBLs)
	for _, l := range steadyLines(m.steadyFrom, m.steadyTo, c.RxFrames+c.TxFrames, c.RxBytes+c.TxBytes) {
		fmt.Fprintf(w, "  %s\n", l)
	}
	if sr := m.removal(); sr.device != "" {
		fmt.Fprintf(w, "  surprise removal: %s\n", sr)
	}
	fmt.Fprintf(w, "  frames per indication: %s\n", histogramText(c.FramesPerIndication))
	if p := m.pcapStats(); p.on {
		fmt.Fprintf(w, "  pcap %s: %d frames, %d bytes captured, %d skipped (--pcap-max %s)\n", p.path, p.frames, p.bytes, p.skipped, byteSize{&m.o.pcapMax})
		if m.captureErr != nil {
			fmt.Fprintf(w, "  pcap close: %v\n", m.captureErr)
		}
	}
	if m.o.checkHeld {
		fmt.Fprintf(w, "  held-buffer check: %d corrupt\n", s.CorruptHeld)
	}
	if code != exitForced {
		if len(m.left) == 0 {
			fmt.Fprintf(w, "  left after unload: nothing (no goroutine of the run, no descriptor beyond stdio)\n")
		} else {
			fmt.Fprintf(w, "  left after unload: %s\n", strings.Join(m.left, "; "))
		}
	}
	switch {
	case m.verdict == nil && err == nil:
		fmt.Fprintf(w, "  verifier: clean\n")
	case m.verdict != nil:
		fmt.Fprintf(w, "  verifier: %s\n", strings.ReplaceAll(m.verdict.Error(), "\n", "\n    "))
	default:
		fmt.Fprintf(w, "  verifier: not run: %v\n", err)
	}
	fmt.Fprintf(w, "  exit code: %d\n", code)
}

// histogramText is "1:3 2-3:10 4-7:0 ... 64+:120".
func histogramText(h [adapter.NumIndicationBuckets]int64) string {
	parts := make([]string, len(h))
	for i, n := range h {
		parts[i] = fmt.Sprintf("%s:%d", adapter.IndicationBucketLabel(i), n)
	}
	return strings.Join(parts, " ")
}

// budgetText is --moderation-budget as the exit report says it.
func budgetText(budget int) string {
	if budget == 0 {
		return "no budget"
	}
	return fmt.Sprintf("at most %d frames", budget)
}
