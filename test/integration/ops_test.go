package integration

// The operator's tools on a real run: --metrics scraped while iperf3 runs,
// --stats lines, the SIGUSR1 dump, and --pcap read back with tcpdump. The
// metrics server listens on 127.0.0.1 only (port 0: any free port, read
// from the banner); all traffic stays in the run's namespaces.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/tapdev"

	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

var metricsURLRe = regexp.MustCompile(`metrics: (http://127\.0\.0\.1:\d+/metrics)`)

// metricsURL reads the metrics address from the banner.
func (r *run) metricsURL() string {
	r.t.Helper()
	m := metricsURLRe.FindStringSubmatch(r.stdout.String())
	if m == nil {
		r.t.Fatalf("banner names no metrics URL:\n%s", r.stdout)
	}
	return m[1]
}

// scrape fetches the exposition text (bounded in time).
func scrape(t *testing.T, url string) string {
	t.Helper()
	text, err := fetch(url)
	if err != nil {
		t.Fatal(err)
	}
	return text
}

// fetch is scrape for goroutines other than the test's.
func fetch(url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("scrape %s: status %d, %v", url, resp.StatusCode, err)
	}
	return string(b), nil
}

// sampleValue reads one series, e.g. `tapminiport_rx_packets_total{queue="0"}`.
func sampleValue(t *testing.T, text, series string) float64 {
	t.Helper()
	for _, l := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(l, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			return v
		}
	}
	t.Fatalf("no series %s in the scrape:\n%s", series, text)
	return 0
}

// quietScrape scrapes until two scrapes 300ms apart agree on the packet
// and indication counters (bounded): the traffic has stopped, so counters
// read one after the other in a scrape can be compared. It returns the
// second.
func quietScrape(t *testing.T, url string) string {
	t.Helper()
	series := []string{"tapminiport_rx_packets_total", "tapminiport_tx_packets_total",
		"tapminiport_rx_indications_total", "tapminiport_indication_frames_count"}
	read := func(text string) (v []float64) {
		for _, s := range series {
			v = append(v, sampleValue(t, text, s+`{queue="0"}`))
		}
		return v
	}
	prev := scrape(t, url)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(300 * time.Millisecond)
		cur := scrape(t, url)
		if slices.Equal(read(prev), read(cur)) {
			return cur
		}
		prev = cur
	}
	t.Fatalf("%v still moving 10s after the traffic ended:\n%s", series, prev)
	return ""
}

var bucketRe = regexp.MustCompile(`(?m)^tapminiport_indication_frames_bucket\{queue="0",le="([^"]+)"\} (\S+)$`)

// framesBounds reads the frames-per-indication histogram's buckets and
// returns the fewest and the most frames the indications in them can add
// up to (the most is +Inf when the last bucket holds any).
func framesBounds(t *testing.T, text string) (lo, hi float64) {
	t.Helper()
	ms := bucketRe.FindAllStringSubmatch(text, -1)
	if len(ms) < 2 {
		t.Fatalf("indication_frames has %d buckets:\n%s", len(ms), text)
	}
	var prevLe, prevCum float64
	for _, m := range ms {
		le, err1 := strconv.ParseFloat(m[1], 64) // "+Inf" parses
		cum, err2 := strconv.ParseFloat(m[2], 64)
		if err1 != nil || err2 != nil || le <= prevLe || cum < prevCum {
			t.Fatalf("indication_frames bucket le=%q %s after le=%v %v", m[1], m[2], prevLe, prevCum)
		}
		n := cum - prevCum // indications of prevLe+1 .. le frames
		lo += n * (prevLe + 1)
		if n > 0 {
			hi += n * le
		}
		prevLe, prevCum = le, cum
	}
	return lo, hi
}

// TestMetricsAgreeWithExitReport: scrapes while iperf3 runs show the bytes
// sent rising by at least a megabyte a second; once the traffic has
// stopped a scrape is at most the exit report and more than zero, accounts
// for every byte iperf3 moved, its histogram agrees with its counters and
// the stack holds nothing. After the exit the port is closed and nothing
// of the run is left.
func TestMetricsAgreeWithExitReport(t *testing.T) {
	tapdev.RequireTool(t, "iperf3")
	r := start(t, "--metrics", "127.0.0.1:0")
	url := r.metricsURL()
	first := scrape(t, url)
	if v := sampleValue(t, first, `tapminiport_adapter_state{state="Running"}`); v != 1 {
		t.Errorf("adapter_state Running = %v, want 1", v)
	}

	l := startLoad(t, r.host, r.wire, "198.18.0.2", 40*time.Second, "-t", "4", "-J")
	l.flowing(t, 1<<20, 10*time.Second) // the server's reports: a megabyte arrived
	a := sampleValue(t, scrape(t, url), `tapminiport_tx_bytes_total{queue="0"}`)
	time.Sleep(time.Second)
	b := sampleValue(t, scrape(t, url), `tapminiport_tx_bytes_total{queue="0"}`)
	if b-a < 1e6 {
		t.Errorf("tx_bytes_total while iperf3 runs: %v then %v a second later, want a rise of at least 1 MB", a, b)
	}
	out := l.wait(t, 30*time.Second)
	if l.err != nil {
		t.Fatalf("iperf3 client: %v\n%s\nserver:\n%s", l.err, out, l.srv)
	}
	up := parseIperf(t, out)

	last := quietScrape(t, url)
	q := `{queue="0"}`
	rxPk := sampleValue(t, last, "tapminiport_rx_packets_total"+q)
	txPk := sampleValue(t, last, "tapminiport_tx_packets_total"+q)
	rxB := sampleValue(t, last, "tapminiport_rx_bytes_total"+q)
	txB := sampleValue(t, last, "tapminiport_tx_bytes_total"+q)
	if txB < up.End.SumReceived.Bytes {
		t.Errorf("tx_bytes_total %v is less than the %v bytes iperf3 moved host → wire", txB, up.End.SumReceived.Bytes)
	}
	inds := sampleValue(t, last, "tapminiport_rx_indications_total"+q)
	if c := sampleValue(t, last, "tapminiport_indication_frames_count"+q); c != inds {
		t.Errorf("indication_frames_count %v != rx_indications_total %v", c, inds)
	}
	// The sum is the frames indicated; the buckets bound it from their own
	// counts, whatever the collector sums.
	sum := sampleValue(t, last, "tapminiport_indication_frames_sum"+q)
	lo, hi := framesBounds(t, last)
	if sum < lo || sum > hi {
		t.Errorf("indication_frames_sum %v, but its buckets hold indications of %v to %v frames", sum, lo, hi)
	}
	if v := sampleValue(t, last, "tapminiport_verifier_findings_total"); v != 0 {
		t.Errorf("verifier_findings_total %v during a clean run", v)
	}
	if v := sampleValue(t, last, "tapminiport_pool_buffers"+q); v != 1024 {
		t.Errorf("pool_buffers %v, want --rx-buffers 1024", v)
	}
	hw := sampleValue(t, last, "tapminiport_pool_buffers_high_water"+q)
	if inUse := sampleValue(t, last, "tapminiport_pool_buffers_in_use"+q); hw <= 0 || inUse > hw {
		t.Errorf("pool in use %v, high water %v", inUse, hw)
	}
	// No --return-delay: the stack gives each indication back at once, so
	// with the traffic stopped it holds nothing, having held some.
	held := sampleValue(t, last, "tapminiport_stack_held_nbls")
	if peak := sampleValue(t, last, "tapminiport_stack_held_nbls_peak"); held != 0 || peak < 1 {
		t.Errorf("stack_held_nbls %v (peak %v) after the traffic, want 0 (peak at least 1)", held, peak)
	}

	if code := r.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	rep := r.stdout.String()
	repRx := float64(reportInt(t, rep, `wire → host: (\d+) packets`))
	repTx := float64(reportInt(t, rep, `host → wire: (\d+) packets`))
	repRxB := float64(reportInt(t, rep, `wire → host: \d+ packets, (\d+) bytes`))
	repTxB := float64(reportInt(t, rep, `host → wire: \d+ packets, (\d+) bytes`))
	t.Logf("tx bytes rose %.0f in a second; last scrape rx %v tx %v packets, %v indications, frames sum %v (buckets: %v..%v); report rx %v tx %v",
		b-a, rxPk, txPk, inds, sum, lo, hi, repRx, repTx)
	if !(rxPk > 0 && rxPk <= repRx && txPk > 0 && txPk <= repTx) {
		t.Errorf("scraped rx %v tx %v packets, report rx %v tx %v: want 0 < scraped <= report", rxPk, txPk, repRx, repTx)
	}
	// The report is read after the halt, apart from the collector; the
	// traffic had stopped, so it may only have the odd neighbour
	// discovery frame more.
	if sum > repRx || repRx-sum > 16 {
		t.Errorf("indication_frames_sum %v, report's wire → host %v packets: want the sum at most the report and within 16 of it", sum, repRx)
	}
	if !(rxB <= repRxB && txB <= repTxB) {
		t.Errorf("scraped bytes rx %v tx %v exceed the report's %v %v", rxB, txB, repRxB, repTxB)
	}
	if !strings.Contains(rep, "verifier: clean") || !strings.Contains(rep, "left after unload: nothing") {
		t.Errorf("report:\n%s", rep)
	}
	if _, err := http.Get(url); err == nil {
		t.Errorf("%s still answers after the exit", url)
	}
	r.assertGone()
}

var statsRe = regexp.MustCompile(`(?m)^stats q=0 rx_pps=\d+ rx_mbps=[\d.]+ tx_pps=\d+ tx_mbps=[\d.]+ rx=(\d+) tx=(\d+) held=\d+ pool=\d+/1024 pool_hw=\d+ resources=\d+ ` +
	`rx_drop=nobuf:\d+,runt:\d+,oversize:\d+,filtered:\d+,notready:\d+ tx_drop=paused:\d+,oversize:\d+,link_down:\d+,no_room:\d+,error:\d+ ` +
	`fpi=1:\d+,2-3:\d+,4-7:\d+,8-15:\d+,16-31:\d+,32-63:\d+,64\+:\d+ state=(\w+)$`)

// TestStatsLines: --stats 200ms prints a line every 200ms in the
// documented shape, and the totals in them rise while ping runs.
func TestStatsLines(t *testing.T) {
	r := start(t, "--stats", "200ms")
	// The pings start after the first line, which is then a baseline
	// without them (a ping before it made the rise look short).
	waitLog(t, r, "stats q=", 1, 5*time.Second)
	if _, rx, out := ping(t, r.host, "-c", "6", "-i", "0.2", "-W", "2", "198.18.0.2"); rx != 6 {
		t.Errorf("ping: %d of 6 replies:\n%s", rx, out)
	}
	time.Sleep(300 * time.Millisecond) // one more line after the last reply
	if code := r.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	var rx, tx []int64
	for _, l := range strings.Split(r.stderr.String(), "\n") {
		if !strings.HasPrefix(l, "stats ") {
			continue
		}
		m := statsRe.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("stats line in an unexpected shape:\n%s", l)
		}
		a, _ := strconv.ParseInt(m[1], 10, 64)
		b, _ := strconv.ParseInt(m[2], 10, 64)
		rx, tx = append(rx, a), append(tx, b)
	}
	if len(rx) < 5 {
		t.Fatalf("%d stats lines in a ~2s run at 200ms, want at least 5:\n%s", len(rx), r.stderr)
	}
	for i := 1; i < len(rx); i++ {
		if rx[i] < rx[i-1] || tx[i] < tx[i-1] {
			t.Errorf("totals went down at line %d: rx %v tx %v", i, rx, tx)
		}
	}
	if rx[len(rx)-1] < rx[0]+6 || tx[len(tx)-1] < tx[0]+6 {
		t.Errorf("totals did not rise by the 6 echo requests and replies: rx %v tx %v", rx, tx)
	}
	rep := r.stdout.String()
	if n := reportInt(t, rep, `wire → host: (\d+) packets`); n < rx[len(rx)-1] {
		t.Errorf("report's %d packets wire → host is less than the last stats line's %d", n, rx[len(rx)-1])
	}
}

// dumpAfter returns the dump that starts after the first from bytes of
// stderr, waiting (bounded) for its end.
func dumpAfter(t *testing.T, r *run, from int) string {
	t.Helper()
	const begin, end = "=== tapminiport state dump", "=== end of dump"
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := r.stderr.String()[from:]
		if i := strings.Index(s, begin); i >= 0 {
			if j := strings.Index(s[i:], end); j >= 0 {
				return s[i : i+j+len(end)]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no complete dump 5s after SIGUSR1:\n%s", s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// usr1 sends SIGUSR1 and returns the dump it prints.
func usr1(t *testing.T, r *run) string {
	t.Helper()
	from := len(r.stderr.String())
	if err := r.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	return dumpAfter(t, r, from)
}

// TestSIGUSR1Dump: SIGUSR1 while the stack holds buffers (return delay 1s)
// prints the dump — state Running, what is held by whom and how old,
// timers, interrupts, pools, the verifier — and traffic and the halt go on
// as if nothing happened. Once the stack has given everything back, a dump
// says so.
func TestSIGUSR1Dump(t *testing.T) {
	r := start(t, "--return-delay", "1s")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var pingOut shimtest.SyncBuffer
	p := exec.CommandContext(ctx, "ip", "netns", "exec", r.host, "ping", "-c", "5", "-i", "0.2", "-W", "3", "198.18.0.2")
	p.Stdout, p.Stderr = &pingOut, &pingOut
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	pinged := make(chan struct{})
	go func() { _ = p.Wait(); close(pinged) }()
	// The stack delivers a frame, then holds its buffer 1s: once ping has
	// its first reply, that reply's buffer is held.
	waitFor(t, &pingOut, "bytes from 198.18.0.2", 10*time.Second)
	dump := usr1(t, r)
	for _, want := range []string{
		"adapter " + r.hw + ": state Running, removed no, shutdown no",
		"receive indications held by hoststack, oldest ",
		"bindings: hoststack",
		`timer "statistics": armed, period 1s, fired `,
		`interrupt "` + r.hw + ` rx": running`,
		`NBL pool "TMrx" of adapter ` + r.hw,
		"binding hoststack:",
		"verifier: no findings so far",
		"miniport queue 0:",
		"receive pool: ",
		"frames per indication: 1:",
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("dump lacks %q:\n%s", want, dump)
		}
	}
	<-pinged
	if m := pingRe.FindStringSubmatch(pingOut.String()); m == nil || m[2] != "5" {
		t.Errorf("ping during the dump: want 5 of 5 replies:\n%s", pingOut.String())
	}
	// After the traffic: once the last reply's buffer is back (1s), a dump
	// says nothing is held and the adapter is still running. A stray
	// neighbour discovery frame may be held a second longer: dump again
	// (bounded) until nothing is held.
	var after string
	for deadline := time.Now().Add(5 * time.Second); ; {
		after = usr1(t, r)
		if strings.Contains(after, "held: nothing held") || time.Now().After(deadline) {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	for _, want := range []string{
		"adapter " + r.hw + ": state Running, removed no, shutdown no",
		"NBLs: 0 receive NBLs held by protocols now",
		"held: nothing held",
	} {
		if !strings.Contains(after, want) {
			t.Errorf("dump after the traffic lacks %q:\n%s", want, after)
		}
	}
	if strings.Contains(after, "held by hoststack") {
		t.Errorf("dump after the traffic: hoststack still holds buffers:\n%s", after)
	}
	if code := r.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGUSR1s, want 0:\n%s", code, r.stdout)
	}
	rep := r.stdout.String()
	if !strings.Contains(rep, "verifier: clean") || !strings.Contains(rep, "left after unload: nothing") {
		t.Errorf("report:\n%s", rep)
	}
	if strings.Contains(r.stderr.String(), "panic") {
		t.Errorf("panic on stderr:\n%s", r.stderr)
	}
	r.assertGone()
}

// TestPcapHoldsPingBothWays: --pcap records the echo requests (host →
// wire, written by the miniport) and the echo replies (wire → host, read by
// it); tcpdump -r reads the file; the report counts the frames.
func TestPcapHoldsPingBothWays(t *testing.T) {
	tapdev.RequireTool(t, "tcpdump")
	file := filepath.Join(t.TempDir(), "tm.pcap")
	r := start(t, "--pcap", file)
	if _, rx, out := ping(t, r.host, "-c", "3", "-i", "0.2", "-W", "2", "198.18.0.2"); rx != 3 {
		t.Errorf("ping: %d of 3 replies:\n%s", rx, out)
	}
	if code := r.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "tcpdump", "-r", file, "-nn", "icmp").CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v\n%s", file, err, out)
	}
	requests := regexp.MustCompile(`198\.18\.0\.1 > 198\.18\.0\.2: ICMP echo request`).FindAllString(string(out), -1)
	replies := regexp.MustCompile(`198\.18\.0\.2 > 198\.18\.0\.1: ICMP echo reply`).FindAllString(string(out), -1)
	if len(requests) < 3 || len(replies) < 3 {
		t.Errorf("tcpdump shows %d echo requests and %d replies, want 3 each:\n%s", len(requests), len(replies), out)
	}
	frames := reportInt(t, r.stdout.String(), `pcap \S+: (\d+) frames`)
	if frames < 6 {
		t.Errorf("report counts %d captured frames, want at least the 6 ICMP ones", frames)
	}
	if skipped := reportInt(t, r.stdout.String(), `pcap \S+: \d+ frames, \d+ bytes captured, (\d+) skipped`); skipped != 0 {
		t.Errorf("%d frames skipped under the default cap", skipped)
	}
	r.assertGone()
}
