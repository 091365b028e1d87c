package integration

// Throughput features on a real run: RSS (--queues), software segmentation
// and checksumming when one side has no offloads (--nic-offload=false,
// --offload=false) and UDP send coalescing (--udp-coalesce). Traffic is
// ping and bounded iperf3 between the run's own namespaces on
// 198.18.0.0/15; the assertions are what a user reads: iperf3 delivered
// bytes, the exit report's counters moved, exit 0, nothing left. No
// assertion is on speed.

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/tapdev"
)

// offloadReport is the exit report's "software offload:" line.
type offloadReport struct {
	segToHost, segToWire, csumToHost, csumToWire, coalescedUDP, dropped int64
}

var offloadLineRe = regexp.MustCompile(`software offload: segmented to-host=(\d+) to-wire=(\d+), checksummed to-host=(\d+) to-wire=(\d+), coalesced udp=(\d+), dropped=(\d+)`)

func parseOffloadLine(t *testing.T, report string) offloadReport {
	t.Helper()
	m := offloadLineRe.FindStringSubmatch(report)
	if m == nil {
		t.Fatalf("exit report has no software offload line:\n%s", report)
	}
	v := make([]int64, len(m)-1)
	for i := range v {
		v[i], _ = strconv.ParseInt(m[i+1], 10, 64)
	}
	return offloadReport{v[0], v[1], v[2], v[3], v[4], v[5]}
}

// queueCounts is one "qN rx=.. tx=.." of the exit report's queues line.
type queueCounts struct{ rx, tx int64 }

var (
	queuesLineRe = regexp.MustCompile(`(?m)^\s*queues \(packets\):(.*)$`)
	queueRe      = regexp.MustCompile(`q(\d+) rx=(\d+) tx=(\d+)`)
)

// parseQueuesLine reads the per-queue packets of the exit report, in queue order.
func parseQueuesLine(t *testing.T, report string) []queueCounts {
	t.Helper()
	m := queuesLineRe.FindStringSubmatch(report)
	if m == nil {
		t.Fatalf("exit report has no queues line:\n%s", report)
	}
	var qs []queueCounts
	for i, q := range queueRe.FindAllStringSubmatch(m[1], -1) {
		if q[1] != strconv.Itoa(i) {
			t.Fatalf("queues line lists q%s at position %d: %q", q[1], i, m[0])
		}
		rx, _ := strconv.ParseInt(q[2], 10, 64)
		tx, _ := strconv.ParseInt(q[3], 10, 64)
		qs = append(qs, queueCounts{rx, tx})
	}
	return qs
}

// stopAndReport sends SIGTERM, requires exit 0 and a clean verifier, and
// returns the exit report.
func stopAndReport(t *testing.T, r *run) string {
	t.Helper()
	code := r.stop(syscall.SIGTERM, 30*time.Second)
	rep := r.stdout.String()
	if code != 0 {
		t.Fatalf("exit code %d, want 0:\n%s", code, rep)
	}
	if !strings.Contains(rep, "verifier: clean") {
		t.Errorf("verifier not clean:\n%s", rep)
	}
	return rep
}

// pingWire pings the wire partner from the host namespace: every request answered.
func pingWire(t *testing.T, r *run) {
	t.Helper()
	if tx, rx, out := ping(t, r.host, "-c", "4", "-i", "0.2", "-W", "2", "198.18.0.2"); tx != 4 || rx != tx {
		t.Errorf("host → wire IPv4: %d of %d replies:\n%s", rx, tx, out)
	}
}

// TestQueuesRSS: with --queues 2 both TAPs are two-queue TAPs, one reader
// per queue. Ping and iperf3 with 4 TCP flows each way get through, and
// the exit report shows both queues received and sent packets; --stats
// gives each queue's rates and totals, which rise with the traffic and
// stay within the report's per-queue counts.
func TestQueuesRSS(t *testing.T) {
	r := start(t, "--queues", "2", "--stats", "500ms")
	pingWire(t, r)
	up := parseIperf(t, iperf(t, r, "198.18.0.2", "-t", "3", "-P", "4"))
	down := parseIperf(t, iperf(t, r, "198.18.0.2", "-t", "3", "-P", "4", "-R"))
	t.Logf("TCP -P 4: host→wire %.0f bytes received, wire→host %.0f bytes received", up.End.SumReceived.Bytes, down.End.SumReceived.Bytes)
	if up.End.SumReceived.Bytes == 0 {
		t.Errorf("iperf3 host → wire with 4 flows: the receiver got 0 bytes")
	}
	if down.End.SumReceived.Bytes == 0 {
		t.Errorf("iperf3 wire → host (-R) with 4 flows: the receiver got 0 bytes")
	}
	rep := stopAndReport(t, r)
	t.Logf("%s", strings.TrimSpace(queuesLineRe.FindString(rep)))
	qs := parseQueuesLine(t, rep)
	if len(qs) != 2 {
		t.Fatalf("queues line lists %d queues, want 2:\n%s", len(qs), rep)
	}
	for i, q := range qs {
		if q.rx == 0 || q.tx == 0 {
			t.Errorf("queue %d: rx=%d tx=%d, want both > 0 (8 TCP flows over 2 queues):\n%s", i, q.rx, q.tx, rep)
		}
	}
	// The queues add up to the totals.
	var rx, tx int64
	for _, q := range qs {
		rx, tx = rx+q.rx, tx+q.tx
	}
	if total := reportInt(t, rep, `wire → host: (\d+) packets`); rx != total {
		t.Errorf("queues received %d packets, the report's wire → host total is %d", rx, total)
	}
	if total := reportInt(t, rep, `host → wire: (\d+) packets`); tx != total {
		t.Errorf("queues sent %d packets, the report's host → wire total is %d", tx, total)
	}
	checkQueueStats(t, r.stderr.String(), qs)
	r.assertGone()
}

var queueStatsRe = regexp.MustCompile(`(?m)^stats q=(\d+) rx_pps=(\d+) rx_mbps=[\d.]+ tx_pps=(\d+) tx_mbps=[\d.]+ rx=(\d+) tx=(\d+)$`)

// checkQueueStats checks the --stats lines of each queue against the exit
// report's per-queue counts: lines for every queue after each q=all line,
// totals that never go down and end within the report's, and a moment when
// each queue was receiving and one when it was sending.
func checkQueueStats(t *testing.T, stderr string, qs []queueCounts) {
	t.Helper()
	if n, all := len(queueStatsRe.FindAllString(stderr, -1)), strings.Count(stderr, "stats q=all "); all < 4 || n != all*len(qs) {
		t.Fatalf("%d adapter stats lines (q=all) and %d per-queue lines, want ≥ 4 and %d per-queue lines each:\n%s", all, n, len(qs), stderr)
	}
	lastRx, lastTx := make([]int64, len(qs)), make([]int64, len(qs))
	busyRx, busyTx := make([]bool, len(qs)), make([]bool, len(qs))
	for _, m := range queueStatsRe.FindAllStringSubmatch(stderr, -1) {
		q, _ := strconv.Atoi(m[1])
		if q >= len(qs) {
			t.Fatalf("stats line for queue %d with %d queues: %q", q, len(qs), m[0])
		}
		rxPPS, _ := strconv.ParseInt(m[2], 10, 64)
		txPPS, _ := strconv.ParseInt(m[3], 10, 64)
		rx, _ := strconv.ParseInt(m[4], 10, 64)
		tx, _ := strconv.ParseInt(m[5], 10, 64)
		if rx < lastRx[q] || tx < lastTx[q] {
			t.Errorf("queue %d totals went down: %q after rx=%d tx=%d", q, m[0], lastRx[q], lastTx[q])
		}
		lastRx[q], lastTx[q] = rx, tx
		busyRx[q] = busyRx[q] || rxPPS > 0
		busyTx[q] = busyTx[q] || txPPS > 0
	}
	for i, q := range qs {
		if lastRx[i] > q.rx || lastTx[i] > q.tx {
			t.Errorf("queue %d: last stats line rx=%d tx=%d, beyond the report's rx=%d tx=%d", i, lastRx[i], lastTx[i], q.rx, q.tx)
		}
		if !busyRx[i] || !busyTx[i] {
			t.Errorf("queue %d: no stats line with rx_pps > 0 (%v) and one with tx_pps > 0 (%v) during 6 s of traffic on it", i, busyRx[i], busyTx[i])
		}
	}
}

// TestSoftwareSegmentation: when one side has no virtio-net header, the
// stack cuts the other side's 64 KiB TCP frames into MSS segments (and
// finishes their checksums) in software. iperf3 in the direction that
// needs it delivers, the report counts segmented frames in that
// direction, none dropped.
func TestSoftwareSegmentation(t *testing.T) {
	for _, tc := range []struct {
		name, flag, dir string
		iperfArgs       []string
		cut, uncut      func(offloadReport) int64 // the side that must cut, the side that must not
		why             string
	}{
		{"nic-offload=false wire to host", "--nic-offload=false", "wire → host (-R): the host", []string{"-t", "3", "-R"},
			func(o offloadReport) int64 { return o.segToHost }, func(o offloadReport) int64 { return o.segToWire },
			"the wire's large TCP frames reached a NIC TAP without offloads uncut?"},
		{"offload=false host to wire", "--offload=false", "host → wire: the wire", []string{"-t", "3"},
			func(o offloadReport) int64 { return o.segToWire }, func(o offloadReport) int64 { return o.segToHost },
			"the host's large TCP sends reached a plain hardware TAP uncut?"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := start(t, tc.flag)
			pingWire(t, r)
			res := parseIperf(t, iperf(t, r, "198.18.0.2", tc.iperfArgs...))
			if res.End.SumReceived.Bytes < 1e6 {
				t.Errorf("iperf3 %s received %.0f bytes, want at least 1 MB", tc.dir, res.End.SumReceived.Bytes)
			}
			rep := stopAndReport(t, r)
			o := parseOffloadLine(t, rep)
			t.Logf("received %.0f bytes; %s", res.End.SumReceived.Bytes, offloadLineRe.FindString(rep))
			if tc.cut(o) == 0 {
				t.Errorf("no large frames cut in software: %s\n%s", tc.why, rep)
			}
			if n := tc.uncut(o); n != 0 {
				t.Errorf("%d large frames cut in the direction whose receiver takes them, want 0", n)
			}
			if o.dropped != 0 {
				t.Errorf("software offload dropped %d frames, want 0", o.dropped)
			}
			// A TAP without offloads never sees a frame over the MTU.
			if n := reportInt(t, rep, `send drops: paused=\d+ oversize=(\d+)`); n != 0 {
				t.Errorf("%d sends dropped as oversize: a large frame reached a plain hardware TAP", n)
			}
			r.assertGone()
		})
	}
}

// TestUDPCoalescing: small same-size UDP datagrams from the host are joined
// into USO sends (the wire's kernel cuts them back); the iperf3 server on
// the wire receives them and the report counts coalesced sends. With
// --udp-coalesce=false the same traffic coalesces nothing.
func TestUDPCoalescing(t *testing.T) {
	for _, c := range []struct {
		name     string
		args     []string
		coalesce bool
	}{{"default", nil, true}, {"udp-coalesce=false", []string{"--udp-coalesce=false"}, false}} {
		t.Run(c.name, func(t *testing.T) {
			r := start(t, c.args...)
			if c.coalesce && !regexp.MustCompile(`initialized.*offloads=\S*uso4`).MatchString(r.stderr.String()) {
				t.Fatalf("the miniport does not offer USO4 (no coalescing possible); startup log:\n%s", r.stderr)
			}
			pingWire(t, r)
			udp := parseIperf(t, iperf(t, r, "198.18.0.2", "-u", "-b", "200M", "-l", "64", "-t", "3"))
			s := udp.End.Sum
			t.Logf("UDP -l 64: %d datagrams, %d lost (%.1f%%)", s.Packets, s.LostPackets, s.LostPercent)
			if s.Packets == 0 || s.LostPackets >= s.Packets {
				t.Errorf("iperf3 UDP host → wire: the server received none: %d lost of %d", s.LostPackets, s.Packets)
			}
			rep := stopAndReport(t, r)
			o := parseOffloadLine(t, rep)
			t.Logf("%s", offloadLineRe.FindString(rep))
			if c.coalesce && o.coalescedUDP == 0 {
				t.Errorf("coalesced udp=0 with --udp-coalesce on and USO offered:\n%s", rep)
			}
			if !c.coalesce && o.coalescedUDP != 0 {
				t.Errorf("coalesced udp=%d with --udp-coalesce=false, want 0", o.coalescedUDP)
			}
			if o.dropped != 0 {
				t.Errorf("software offload dropped %d frames, want 0", o.dropped)
			}
			r.assertGone()
		})
	}
}

// queueDropsRe is the exit report's kernel TAP queue drops line: hardware,
// NIC.
var queueDropsRe = regexp.MustCompile(`kernel TAP queue drops \([^)]*\): hardware \S+=(\S+) NIC \S+=(\S+)`)

// tapDrops is the kernel's tx_dropped of r's hardware and NIC TAPs: what
// the kernel had no room for in a TAP's queue.
func tapDrops(t *testing.T, r *run) (hw, nic uint64) {
	t.Helper()
	_, _, _, hw, err := tapdev.LinkStats(r.wire, r.hw)
	if err != nil {
		t.Fatalf("hardware TAP stats: %v", err)
	}
	_, _, _, nic, err = tapdev.LinkStats(r.host, r.nic)
	if err != nil {
		t.Fatalf("NIC TAP stats: %v", err)
	}
	return hw, nic
}

// moderationRe is the exit report's interrupt moderation line.
var moderationRe = regexp.MustCompile(`interrupt moderation \(\S+ after a busy one-way wake-up, then (at most \d+ frames|no budget)\): waits receive-dpc=(\d+) nic-reader=(\d+); budget spent receive-dpc=(\d+) nic-reader=(\d+)`)

// Interrupt moderation (default 200µs) waits under a one-way flood of small
// frames (UDP 64-byte datagrams from the host: the NIC TAP reader waits)
// and the wake-ups after the waits take at most --moderation-budget frames
// (default 128; 0: no budget), leaves TCP alone (its ACKs come back: at
// most 2% of the wake-ups wait, counted as indications), and is gone with
// --interrupt-moderation 0.
func TestInterruptModeration(t *testing.T) {
	waits := func(t *testing.T, rep string) (dpc, reader, dpcSpent, readerSpent int64) {
		t.Helper()
		m := moderationRe.FindStringSubmatch(rep)
		if m == nil {
			t.Fatalf("exit report has no interrupt moderation line:\n%s", rep)
		}
		n := func(s string) int64 { v, _ := strconv.ParseInt(s, 10, 64); return v }
		return n(m[2]), n(m[3]), n(m[4]), n(m[5])
	}
	for _, tc := range []struct {
		name    string
		args    []string
		reverse bool // wire → host: the miniport's receive DPC, not the NIC TAP reader
		budget  string
	}{
		{"udp flood waits, budget 128", nil, false, "at most 128 frames"},
		{"udp flood wire to host waits, budget 128", nil, true, "at most 128 frames"},
		{"udp flood waits, no budget", []string{"--moderation-budget", "0"}, false, "no budget"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := start(t, tc.args...)
			hw0, nic0 := tapDrops(t, r)
			pingWire(t, r)
			args := []string{"-u", "-b", "0", "-l", "64", "-t", "2"}
			who := "the NIC TAP reader"
			if tc.reverse {
				args = append(args, "-R")
				who = "the receive DPC"
			}
			udp := parseIperf(t, iperf(t, r, "198.18.0.2", args...))
			if s := udp.End.Sum; s.Packets == 0 || s.LostPackets >= s.Packets {
				t.Errorf("iperf3 UDP %v: the receiver got none: %d lost of %d", args, s.LostPackets, s.Packets)
			}
			hw1, nic1 := tapDrops(t, r) // the flood is over: nothing more overflows
			rep := stopAndReport(t, r)
			dpc, reader, dpcSpent, readerSpent := waits(t, rep)
			t.Logf("UDP 64 B flood %v: %s; %s", args, moderationRe.FindString(rep), queueDropsRe.FindString(rep))
			// The report's kernel queue drops are what ip -s link says of
			// the TAPs between ready and the stop.
			m := queueDropsRe.FindStringSubmatch(rep)
			if m == nil {
				t.Fatalf("exit report has no kernel TAP queue drops line:\n%s", rep)
			}
			for _, d := range []struct {
				tap, got      string
				before, after uint64
			}{{"hardware " + r.hw, m[1], hw0, hw1}, {"NIC " + r.nic, m[2], nic0, nic1}} {
				if want := strconv.FormatUint(d.after-d.before, 10); d.got != want {
					t.Errorf("report: %s TAP queue drops %s, want %s (its tx_dropped went from %d at ready to %d after the flood)", d.tap, d.got, want, d.before, d.after)
				}
			}
			// The budget leaves what it did not take in the flooded TAP's
			// queue, which the flood keeps full: the kernel drops there.
			flooded, floodedTAP := nic1-nic0, "NIC "+r.nic
			if tc.reverse {
				flooded, floodedTAP = hw1-hw0, "hardware "+r.hw
			}
			if tc.budget != "no budget" && flooded == 0 {
				t.Errorf("the kernel dropped nothing at the %s TAP's queue under a UDP flood with a budget", floodedTAP)
			}
			w, spent := reader, readerSpent
			if tc.reverse {
				w, spent = dpc, dpcSpent
			}
			if w == 0 {
				t.Errorf("%s never waited under a one-way UDP flood", who)
			}
			if got := moderationRe.FindStringSubmatch(rep)[1]; got != tc.budget {
				t.Errorf("report says %q, want %q", got, tc.budget)
			}
			// With a budget, the flood (the sender outruns the reader) fills
			// it after most waits, exactly (a run that ignored it would
			// read more); without one there is none to spend.
			withBudget := tc.budget != "no budget"
			if withBudget && spent*2 < w {
				t.Errorf("%s took exactly its whole budget after %d of %d waits: the flood should fill it after most", who, spent, w)
			}
			if !withBudget && spent != 0 {
				t.Errorf("budget spent %d times with --moderation-budget 0", spent)
			}
			r.assertGone()
		})
	}
	t.Run("tcp does not wait", func(t *testing.T) {
		r := start(t)
		pingWire(t, r)
		for _, dir := range [][]string{nil, {"-R"}} {
			tcp := parseIperf(t, iperf(t, r, "198.18.0.2", append([]string{"-t", "2"}, dir...)...))
			if tcp.End.SumReceived.Bytes == 0 {
				t.Errorf("iperf3 TCP %v moved nothing", dir)
			}
		}
		rep := stopAndReport(t, r)
		dpc, reader, _, _ := waits(t, rep)
		inds := reportInt(t, rep, `wire → host: \d+ packets, \d+ bytes in (\d+) indications`)
		t.Logf("TCP both ways: waits receive-dpc=%d nic-reader=%d, %d indications", dpc, reader, inds)
		if (dpc+reader)*50 > inds {
			t.Errorf("TCP waited %d+%d times for %d indications: more than 2%%", dpc, reader, inds)
		}
		r.assertGone()
	})
	t.Run("off", func(t *testing.T) {
		r := start(t, "--interrupt-moderation", "0")
		pingWire(t, r)
		iperf(t, r, "198.18.0.2", "-u", "-b", "0", "-l", "64", "-t", "1")
		rep := stopAndReport(t, r)
		if moderationRe.MatchString(rep) {
			t.Errorf("--interrupt-moderation 0 still reports moderation:\n%s", moderationRe.FindString(rep))
		}
		r.assertGone()
	})
}

// pollRe is the exit report's line on receive polls after small sends.
var pollRe = regexp.MustCompile(`receive polls after small sends: (\d+) runs found (\d+) frames`)

// pollLine checks a poll line (re) of the exit report after 20 pings:
// with the flag off there is none; on, it is there and most requests
// polled and found their reply. It returns the polls and whether the line
// was there.
func pollLine(t *testing.T, rep string, re *regexp.Regexp, flag string, on bool) (runs int, ok bool) {
	t.Helper()
	m := re.FindStringSubmatch(rep)
	if !on {
		if m != nil {
			t.Errorf("%s=false still reports polls: %s", flag, m[0])
		}
		return 0, false
	}
	if m == nil {
		t.Fatalf("exit report has no %s line:\n%s", flag, rep)
	}
	runs, _ = strconv.Atoi(m[1])
	found, _ := strconv.Atoi(m[2])
	t.Logf("%s", m[0])
	if runs < 10 || found < 10 {
		t.Errorf("20 pings: %d polls found %d frames; want most requests to poll and most replies found by a poll", runs, found)
	}
	return runs, true
}

// nicPollRe is the exit report's line on NIC TAP polls after small indications.
var nicPollRe = regexp.MustCompile(`NIC TAP polls after small indications: (\d+) runs found (\d+) frames`)

// TestNICPollOnReceive, the mirror of TestRxPollOnSend: a ping from the
// wire is a small indication, so the stack runs the NIC TAP's reader after
// writing it and finds the host's echo reply there (the host's stack ran
// in the write): the exit report counts polls that found frames, and every
// ping is answered. TCP started from the wire gets through both ways, and
// while the host streams down, the wire's ACKs (small indications) do not
// poll: at most 5 % of the indications (without that rule: 17 %).
// --nic-poll-on-receive=false removes the line and everything still gets
// through (the reader's wake-up sends the replies down).
func TestNICPollOnReceive(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("nic-poll-on-receive=%v", on), func(t *testing.T) {
			r := start(t, fmt.Sprintf("--nic-poll-on-receive=%v", on))
			if tx, rx, out := ping(t, r.wire, "-c", "20", "-i", "0.01", "-W", "2", "198.18.0.1"); tx != 20 || rx != tx {
				t.Errorf("wire → host: %d of %d replies:\n%s", rx, tx, out)
			}
			// iperf3 client in the wire namespace, server on the host
			up := parseIperf(t, iperfFrom(t, r.wire, r.host, "198.18.0.1", "-t", "2"))
			down := parseIperf(t, iperfFrom(t, r.wire, r.host, "198.18.0.1", "-t", "2", "-R"))
			if up.End.SumReceived.Bytes == 0 || down.End.SumReceived.Bytes == 0 {
				t.Errorf("TCP started from the wire: %.0f bytes received wire → host, %.0f host → wire; want both > 0", up.End.SumReceived.Bytes, down.End.SumReceived.Bytes)
			}
			rep := stopAndReport(t, r)
			if runs, ok := pollLine(t, rep, nicPollRe, "--nic-poll-on-receive", on); ok {
				indications := reportInt(t, rep, `wire → host: \d+ packets, \d+ bytes in (\d+) indications`)
				t.Logf("%d indications", indications)
				if limit := 40 + indications/20; int64(runs) > limit {
					t.Errorf("%d polls for %d indications (TCP both ways after 20 pings): want at most %d; the ACKs of a stream the host sends must not poll", runs, indications, limit)
				}
			}
			r.assertGone()
		})
	}
}

// TestRxPollOnSend: a ping's request is a small send, so the miniport
// polls its receive ring after writing it and finds the echo reply there
// (the wire's stack ran in the write): the exit report counts polls that
// found frames, and every ping is answered. --rx-poll-on-send=false
// removes the line and the pings still get through (the interrupt
// goroutine brings the replies up).
func TestRxPollOnSend(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("rx-poll-on-send=%v", on), func(t *testing.T) {
			r := start(t, fmt.Sprintf("--rx-poll-on-send=%v", on))
			if tx, rx, out := ping(t, r.host, "-c", "20", "-i", "0.01", "-W", "2", "198.18.0.2"); tx != 20 || rx != tx {
				t.Errorf("host → wire: %d of %d replies:\n%s", rx, tx, out)
			}
			pollLine(t, stopAndReport(t, r), pollRe, "--rx-poll-on-send", on)
			r.assertGone()
		})
	}
}
