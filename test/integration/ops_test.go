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
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/tapdev"
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

// TestMetricsAgreeWithExitReport: scrapes during an iperf3 run show the
// counters moving; the scrape after the traffic and before SIGTERM is at
// most the exit report and more than zero, accounts for every byte iperf3
// moved, and its histogram agrees with its counters. After the exit the
// port is closed and nothing of the run is left.
func TestMetricsAgreeWithExitReport(t *testing.T) {
	tapdev.RequireTool(t, "iperf3")
	r := start(t, "--metrics", "127.0.0.1:0")
	url := r.metricsURL()
	first := scrape(t, url)
	if v := sampleValue(t, first, `tapminiport_adapter_state{state="Running"}`); v != 1 {
		t.Errorf("adapter_state Running = %v, want 1", v)
	}

	type scrapes struct {
		a, b string
		err  error
	}
	during := make(chan scrapes, 1)
	go func() { // two scrapes a second apart while iperf3 runs
		var s scrapes
		time.Sleep(1200 * time.Millisecond)
		if s.a, s.err = fetch(url); s.err == nil {
			time.Sleep(time.Second)
			s.b, s.err = fetch(url)
		}
		during <- s
	}()
	up := parseIperf(t, iperf(t, r, "198.18.0.2", "-t", "3"))
	d := <-during
	if d.err != nil {
		t.Fatalf("scrape during iperf3: %v", d.err)
	}
	a := sampleValue(t, d.a, `tapminiport_tx_bytes_total{queue="0"}`)
	b := sampleValue(t, d.b, `tapminiport_tx_bytes_total{queue="0"}`)
	if !(a > 0 && b > a) {
		t.Errorf("tx_bytes_total during iperf3: %v then %v a second later, want it rising", a, b)
	}

	last := scrape(t, url)
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
	if s := sampleValue(t, last, "tapminiport_indication_frames_sum"+q); s != rxPk {
		t.Errorf("indication_frames_sum %v != rx_packets_total %v", s, rxPk)
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
	if held := sampleValue(t, last, "tapminiport_stack_held_nbls"); held < 0 || held > 1024 {
		t.Errorf("stack_held_nbls %v", held)
	}

	if code := r.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	rep := r.stdout.String()
	repRx := float64(reportInt(t, rep, `wire → host: (\d+) packets`))
	repTx := float64(reportInt(t, rep, `host → wire: (\d+) packets`))
	repRxB := float64(reportInt(t, rep, `wire → host: \d+ packets, (\d+) bytes`))
	repTxB := float64(reportInt(t, rep, `host → wire: \d+ packets, (\d+) bytes`))
	t.Logf("last scrape rx %v tx %v packets; report rx %v tx %v", rxPk, txPk, repRx, repTx)
	if !(rxPk > 0 && rxPk <= repRx && txPk > 0 && txPk <= repTx) {
		t.Errorf("scraped rx %v tx %v packets, report rx %v tx %v: want 0 < scraped <= report", rxPk, txPk, repRx, repTx)
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

// TestSIGUSR1Dump: SIGUSR1 while the stack holds buffers (return delay 1s)
// prints the dump — state Running, what is held by whom and how old,
// timers, interrupts, pools, the verifier — and traffic and the halt go on
// as if nothing happened.
func TestSIGUSR1Dump(t *testing.T) {
	r := start(t, "--return-delay", "1s")
	pinged := make(chan int, 1)
	go func() {
		out, _ := in(t, r.host, 20*time.Second, "ping", "-c", "5", "-i", "0.2", "-W", "3", "198.18.0.2")
		m := pingRe.FindStringSubmatch(out)
		n := -1
		if m != nil {
			n, _ = strconv.Atoi(m[2])
		}
		pinged <- n
	}()
	time.Sleep(700 * time.Millisecond) // the ARP reply, then echo replies, held 1s each
	if err := r.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r.stderr, "=== end of dump", 5*time.Second)
	dump := r.stderr.String()
	dump = dump[strings.Index(dump, "=== tapminiport state dump"):]
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
	if n := <-pinged; n != 5 {
		t.Errorf("ping during the dump: %d of 5 replies", n)
	}
	// A second dump after the traffic: nothing held, still running.
	if err := r.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(r.stderr.String(), "=== end of dump") < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if c := strings.Count(r.stderr.String(), "=== end of dump"); c != 2 {
		t.Fatalf("%d dumps after two SIGUSR1s", c)
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
