package integration

import (
	"encoding/json"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/adapter"
	"github.com/tapminiport/tapminiport/tapdev"

	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

func TestPingBothWaysIPv4AndIPv6(t *testing.T) {
	r := start(t)
	tx, rx, out := ping(t, r.host, "-c", "5", "-i", "0.2", "-W", "2", "198.18.0.2")
	if rx != tx {
		t.Errorf("host → wire IPv4: %d of %d replies:\n%s", rx, tx, out)
	}
	tx, rx, out = ping(t, r.wire, "-c", "5", "-i", "0.2", "-W", "2", "198.18.0.1")
	if rx != tx {
		t.Errorf("wire → host IPv4: %d of %d replies:\n%s", rx, tx, out)
	}
	// IPv6 needs DAD to finish on both ends first; -w bounds the whole run.
	tx, rx, out = ping(t, r.host, "-6", "-c", "5", "-i", "0.2", "-w", "15", "2001:2::2")
	if rx == 0 {
		t.Errorf("host → wire IPv6: no reply:\n%s", out)
	}
	tx, rx, out = ping(t, r.wire, "-6", "-c", "3", "-i", "0.2", "-w", "10", "2001:2::1")
	if rx == 0 {
		t.Errorf("wire → host IPv6: no reply:\n%s", out)
	}
	_ = tx
	code := r.stop(syscall.SIGTERM, 30*time.Second)
	if code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	rep := r.stdout.String()
	if n := reportInt(t, rep, `wire → host: (\d+) packets`); n < 10 {
		t.Errorf("report counts %d packets wire → host, want at least the 10 replies/requests", n)
	}
	if !strings.Contains(rep, "verifier: clean") {
		t.Errorf("verifier not clean:\n%s", rep)
	}
	r.assertGone()
}

// TestARPAndNeighbourDiscovery: the host learns the wire partner's MAC over
// the miniport (ARP for IPv4, NDP for IPv6) and the wire learns the NIC's.
func TestARPAndNeighbourDiscovery(t *testing.T) {
	r := start(t)
	wireMAC, err := tapdev.LinkMAC(r.wire, r.hw)
	if err != nil {
		t.Fatal(err)
	}
	nicMAC, err := tapdev.LinkMAC(r.host, r.nic)
	if err != nil {
		t.Fatal(err)
	}
	ping(t, r.host, "-c", "1", "-W", "2", "198.18.0.2")
	ping(t, r.host, "-6", "-c", "2", "-w", "15", "2001:2::2")
	for _, addr := range []string{"198.18.0.2", "2001:2::2"} {
		out := mustIn(t, r.host, 5*time.Second, "ip", "neigh", "show", addr, "dev", r.nic)
		if !strings.Contains(out, "lladdr "+wireMAC.String()) {
			t.Errorf("host neighbour entry for %s = %q, want lladdr %s", addr, out, wireMAC)
		}
	}
	out := mustIn(t, r.wire, 5*time.Second, "ip", "neigh", "show", "198.18.0.1", "dev", r.hw)
	if !strings.Contains(out, "lladdr "+nicMAC.String()) {
		t.Errorf("wire neighbour entry for 198.18.0.1 = %q, want lladdr %s (the NIC's MAC)", out, nicMAC)
	}
	if r.stop(syscall.SIGTERM, 30*time.Second) != 0 {
		t.Fatalf("exit code %d", r.exitCode)
	}
}

type iperfResult struct {
	End struct {
		SumSent     iperfSum `json:"sum_sent"`
		SumReceived iperfSum `json:"sum_received"`
		Sum         struct {
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
			Packets       int64   `json:"packets"`
			LostPackets   int64   `json:"lost_packets"`
			LostPercent   float64 `json:"lost_percent"`
		} `json:"sum"`
	} `json:"end"`
}

type iperfSum struct {
	Bytes         float64 `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
}

func parseIperf(t *testing.T, out string) iperfResult {
	t.Helper()
	var res iperfResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("iperf3 JSON: %v\n%s", err, out)
	}
	return res
}

func TestIperf3TCPBothWaysAndUDP(t *testing.T) {
	for _, mode := range []struct {
		name string
		args []string
	}{{"offload", nil}, {"no offload", []string{"--offload=false"}}} {
		t.Run(mode.name, func(t *testing.T) { iperfBothWays(t, mode.args) })
	}
}

func iperfBothWays(t *testing.T, args []string) {
	offload := len(args) == 0
	r := start(t, args...)
	up := parseIperf(t, iperf(t, r, "198.18.0.2", "-t", "3"))
	down := parseIperf(t, iperf(t, r, "198.18.0.2", "-t", "3", "-R"))
	udp := parseIperf(t, iperf(t, r, "198.18.0.2", "-t", "3", "-u", "-b", "50M", "-l", "1000"))
	t.Logf("TCP host→wire %.2f Gbit/s, wire→host %.2f Gbit/s; UDP %d packets, %.1f%% lost",
		up.End.SumReceived.BitsPerSecond/1e9, down.End.SumReceived.BitsPerSecond/1e9, udp.End.Sum.Packets, udp.End.Sum.LostPercent)
	if up.End.SumReceived.Bytes < 1e6 || down.End.SumReceived.Bytes < 1e6 {
		t.Errorf("TCP moved %.0f bytes up and %.0f down, want at least 1 MB each way", up.End.SumReceived.Bytes, down.End.SumReceived.Bytes)
	}
	if udp.End.Sum.Packets == 0 || udp.End.Sum.LostPercent > 50 {
		t.Errorf("UDP: %d packets, %.1f%% lost", udp.End.Sum.Packets, udp.End.Sum.LostPercent)
	}
	if code := r.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	rep := r.stdout.String()
	wireToHost := reportInt(t, rep, `wire → host: \d+ packets, (\d+) bytes`)
	hostToWire := reportInt(t, rep, `host → wire: \d+ packets, (\d+) bytes`)
	// Every byte iperf3 received crossed the miniport (plus headers).
	if float64(hostToWire) < up.End.SumReceived.Bytes || float64(wireToHost) < down.End.SumReceived.Bytes {
		t.Errorf("report counts %d bytes host→wire and %d wire→host, less than iperf3 moved (%.0f, %.0f)",
			hostToWire, wireToHost, up.End.SumReceived.Bytes, down.End.SumReceived.Bytes)
	}
	if !strings.Contains(rep, "verifier: clean") {
		t.Errorf("verifier not clean:\n%s", rep)
	}
	// Zero heap allocations per packet in steady state: whatever the
	// process allocates (timers, logs) is a rounding error next to the
	// packets that crossed.
	allocs := reportInt(t, rep, `(\d+) heap allocations for \d+ packets`)
	pkts := reportInt(t, rep, `heap allocations for (\d+) packets`)
	if pkts == 0 || allocs*1000 > pkts {
		t.Errorf("%d heap allocations for %d packets: more than 1 per 1000 packets", allocs, pkts)
	}
	// With offload, TCP's 64 KiB frames cross the shim as one NBL each, so
	// the average frame is far above the MTU; without, it never is.
	wirePkts := reportInt(t, rep, `wire → host: (\d+) packets`)
	if avg := wireToHost / max(wirePkts, 1); offload && avg <= 1514 {
		t.Errorf("offload: average frame wire → host %d bytes, want > 1514 (large sends as one NBL)", avg)
	} else if !offload && avg > 1514 {
		t.Errorf("no offload: average frame %d bytes, over the MTU", avg)
	}
	r.assertGone()
}

// TestMTUChange lowers the MTU on both ends and checks that the path
// honours it, then raises the wire side above the NIC's MTU: the miniport
// must drop (and count) the oversize frames instead of passing them up.
func TestMTUChange(t *testing.T) {
	r := start(t)
	mustIn(t, r.host, 5*time.Second, "ip", "link", "set", r.nic, "mtu", "1280")
	mustIn(t, r.wire, 5*time.Second, "ip", "link", "set", r.hw, "mtu", "1280")
	if _, rx, out := ping(t, r.host, "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", "1252", "198.18.0.2"); rx != 3 {
		t.Errorf("1280-byte packets at MTU 1280: %d of 3 replies:\n%s", rx, out)
	}
	out, err := in(t, r.host, 10*time.Second, "ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1300", "198.18.0.2")
	if err == nil || !strings.Contains(strings.ToLower(out), "message too long") {
		t.Errorf("1328-byte DF packet at MTU 1280 should fail locally with 'message too long', got err=%v:\n%s", err, out)
	}
	// The wire now sends 1600-byte frames; the NIC's MTU is 1500.
	mustIn(t, r.wire, 5*time.Second, "ip", "link", "set", r.hw, "mtu", "1600")
	if _, rx, _ := ping(t, r.wire, "-c", "3", "-i", "0.2", "-W", "1", "-s", "1560", "198.18.0.1"); rx != 0 {
		t.Errorf("oversize frames got through: %d replies", rx)
	}
	if r.stop(syscall.SIGTERM, 30*time.Second) != 0 {
		t.Fatalf("exit code %d", r.exitCode)
	}
	if n := reportInt(t, r.stdout.String(), `oversize=(\d+)`); n < 3 {
		t.Errorf("report counts %d oversize receive drops, want >= 3", n)
	}
}

// TestSIGTERMDuringIperf3DrainsHeldBuffers is the mission: SIGTERM while
// iperf3 runs and the stack holds every buffer 200ms. The halt must wait
// for them (NBLs drained > 0), never free one still held (the check-held
// hashes match, and the slab is mmap'd so a premature free would fault),
// exit 0 with a clean verifier and leave nothing behind.
func TestSIGTERMDuringIperf3DrainsHeldBuffers(t *testing.T) {
	tapdev.RequireTool(t, "iperf3")
	r := start(t, "--return-delay", "200ms", "--check-held")
	l := startLoad(t, r.host, r.wire, "198.18.0.2", 30*time.Second, "-t", "10", "-R")
	// Traffic flows (the client has received a megabyte) so the stack
	// holds buffers when the signal comes.
	l.flowing(t, 1<<20, 8*time.Second)
	start := time.Now()
	code := r.stop(syscall.SIGTERM, 60*time.Second)
	took := time.Since(start)
	rep := r.stdout.String()
	if code != 0 {
		t.Fatalf("exit code %d, want 0:\n%s", code, rep)
	}
	if n := reportInt(t, rep, `NBLs drained during pause/halt: (\d+)`); n == 0 {
		t.Errorf("no NBLs drained during pause/halt: the halt did not wait for the stack:\n%s", rep)
	}
	if n := reportInt(t, rep, `held-buffer check: (\d+) corrupt`); n != 0 {
		t.Errorf("%d held buffers changed under the stack", n)
	}
	if !strings.Contains(rep, "verifier: clean") {
		t.Errorf("verifier not clean:\n%s", rep)
	}
	if !strings.Contains(rep, "left after unload: nothing") {
		t.Errorf("goroutines or descriptors outlived the halt:\n%s", rep)
	}
	if !regexp.MustCompile(`pause: waiting.*receive indications held by hoststack`).MatchString(r.stderr.String()) {
		t.Errorf("no watchdog line naming what pause waited for:\n%s", r.stderr)
	}
	t.Logf("halt took %s; %s", took, strings.TrimSpace(regexp.MustCompile(`NBLs drained.*`).FindString(rep)))
	r.assertGone()
}

// TestInitializeFailureLeavesNothing injects a failure at each step of
// InitializeEx: exit 1, the error names the step, no TAP or namespace left.
func TestInitializeFailureLeavesNothing(t *testing.T) {
	tapdev.RequireRoot(t)
	for _, step := range adapter.InitSteps {
		t.Run(step, func(t *testing.T) {
			s := suffix()
			hw, nic, wire := "tmhw"+s, "tmn"+s, "tmiw"+s
			out, err := runBinary(t, 20*time.Second, "--hw-tap", hw, "--nic-tap", nic, "--wire-netns", wire, "--fail-at", step, "--nic-addr", "198.18.9.1/24")
			code := exitCode(err)
			if code != 1 {
				t.Errorf("exit code %d, want 1:\n%s", code, out)
			}
			if !strings.Contains(out, "injected failure at step "+step) {
				t.Errorf("error does not name the step:\n%s", out)
			}
			if strings.Contains(out, "verifier") && strings.Contains(out, "finding") {
				t.Errorf("verifier findings after a failed initialize:\n%s", out)
			}
			for _, l := range []string{hw, nic} {
				if tapdev.LinkExists("", l) {
					t.Errorf("TAP %s left behind", l)
					_ = tapdev.DeleteLink("", l)
				}
			}
			if tapdev.NetnsExists(wire) {
				t.Errorf("namespace %s left behind", wire)
				_ = tapdev.DeleteNetns(wire)
			}
		})
	}
}

// TestSecondAndThirdSignal: while halt waits for a stack that holds its
// buffers 10s, a second SIGINT says it is still draining and what is held;
// a third forces ShutdownEx and exits 3 naming what was still held.
func TestSecondAndThirdSignal(t *testing.T) {
	r := start(t, "--return-delay", "10s")
	ping(t, r.host, "-c", "3", "-i", "0.2", "-W", "1", "198.18.0.2") // replies held 10s by the stack
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r.stderr, "pause: waiting", 5*time.Second)
	if err := r.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, r.stderr, "still draining", 5*time.Second)
	if !regexp.MustCompile(`still draining.*held=.*receive indications held by hoststack`).MatchString(r.stderr.String()) {
		t.Errorf("second signal does not say what is held:\n%s", r.stderr)
	}
	code := r.stop(syscall.SIGINT, 10*time.Second)
	if code != 3 {
		t.Fatalf("exit code %d after the third signal, want 3", code)
	}
	if !regexp.MustCompile(`forced shutdown \(third signal\): still held: \d+ receive indications held by hoststack`).MatchString(r.stdout.String()) {
		t.Errorf("no forced-shutdown line naming what was held:\n%s", r.stdout)
	}
	r.assertGone()
}

// TestHaltTimeoutGivesUp: --halt-timeout ends the wait for a stack that
// does not return in time: exit 3, the report names what was held.
func TestHaltTimeoutGivesUp(t *testing.T) {
	r := start(t, "--return-delay", "10s", "--halt-timeout", "700ms")
	ping(t, r.host, "-c", "3", "-i", "0.2", "-W", "1", "198.18.0.2")
	begin := time.Now()
	code := r.stop(syscall.SIGTERM, 10*time.Second)
	if code != 3 {
		t.Fatalf("exit code %d, want 3", code)
	}
	if took := time.Since(begin); took < 700*time.Millisecond {
		t.Errorf("gave up after %s, before the 700ms timeout", took)
	}
	if !regexp.MustCompile(`forced shutdown \(--halt-timeout 700ms\): still held: \d+ receive indications`).MatchString(r.stdout.String()) {
		t.Errorf("report does not name what was held:\n%s", r.stdout)
	}
	if strings.Count(r.stdout.String(), "exit report") != 1 {
		t.Errorf("want exactly one exit report:\n%s", r.stdout)
	}
	r.assertGone()
}

func waitFor(t *testing.T, b *shimtest.SyncBuffer, s string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !strings.Contains(b.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q after %s:\n%s", s, limit, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAttachedTAPsSurvive: TAPs that existed before the run are attached,
// not created, and are still there (in the root namespace, where they were)
// after the run, although the run moved them into namespaces; nothing the
// run created is left.
func TestAttachedTAPsSurvive(t *testing.T) {
	tapdev.RequireRoot(t)
	s := suffix()
	hw, nic := "tmph"+s, "tmpn"+s
	for _, l := range []string{hw, nic} {
		if out, err := exec.Command("ip", "tuntap", "add", "dev", l, "mode", "tap").CombinedOutput(); err != nil {
			t.Fatalf("pre-create %s: %v %s", l, err, out)
		}
		l := l
		t.Cleanup(func() { _ = tapdev.DeleteLink("", l) })
	}
	r := start(t, "--hw-tap", hw, "--nic-tap", nic)
	if _, rx, out := ping(t, r.host, "-c", "3", "-i", "0.2", "-W", "2", "198.18.0.2"); rx != 3 {
		t.Errorf("ping through attached TAPs: %d of 3:\n%s", rx, out)
	}
	if code := r.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	for _, l := range []string{hw, nic} {
		if !tapdev.LinkExists("", l) {
			t.Errorf("attached TAP %s is gone or not back in the root namespace after the run", l)
		}
	}
	if tapdev.NetnsExists(r.wire) {
		t.Errorf("wire namespace %s left behind", r.wire)
	}
}
