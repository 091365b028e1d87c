package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/tapdev"
)

// TestPoolExhaustionUnderLoad: a pool of 8 receive buffers and a stack
// that holds each one 20ms, with iperf3 TCP pushing wire → host for 3s.
// The pool runs low at once, so the miniport indicates with RESOURCES (the
// stack copies and the buffers come straight back) and drops what finds
// the pool empty, but traffic keeps moving (iperf3 gets bytes across), no
// deadlock: SIGTERM halts cleanly, exit 0, the verifier is clean and
// nothing is left.
func TestPoolExhaustionUnderLoad(t *testing.T) {
	tapdev.RequireTool(t, "iperf3")
	r := start(t, "--rx-buffers", "8", "--return-delay", "20ms")
	res := parseIperf(t, iperf(t, r, "198.18.0.2", "-t", "3", "-R"))
	t.Logf("iperf3 -R through 8 buffers held 20ms each: %.0f bytes, %.2f Mbit/s",
		res.End.SumReceived.Bytes, res.End.SumReceived.BitsPerSecond/1e6)
	if res.End.SumReceived.Bytes <= 0 {
		t.Errorf("iperf3 moved no bytes wire → host through the exhausted pool")
	}
	select {
	case <-r.exited:
		t.Fatalf("tapminiport exited %d during the load:\n%s", r.exitCode, r.stderr)
	default:
	}
	code := r.stop(syscall.SIGTERM, 30*time.Second)
	rep := r.stdout.String()
	if code != 0 {
		t.Fatalf("exit code %d, want 0:\n%s", code, rep)
	}
	resources := reportInt(t, rep, `wire → host: \d+ packets, \d+ bytes in \d+ indications \((\d+) with RESOURCES\)`)
	if resources == 0 {
		t.Errorf("no RESOURCES indication with 8 buffers held 20ms each:\n%s", rep)
	}
	noBuffer := reportInt(t, rep, `no-buffer=(\d+)`)
	exhaustions := reportInt(t, rep, `exhaustions (\d+)`)
	t.Logf("report: %d indications with RESOURCES, no-buffer drops %d, pool exhaustions %d\n%s", resources, noBuffer, exhaustions, rep[strings.Index(rep, "tapminiport exit report"):])
	if peak := reportInt(t, rep, `peak buffers held by the stack: (\d+) of 8`); peak > 8 {
		t.Errorf("the stack held %d of 8 buffers", peak)
	}
	if !strings.Contains(rep, "verifier: clean") || !strings.Contains(rep, "left after unload: nothing") {
		t.Errorf("halt after pool exhaustion not clean:\n%s", rep)
	}
	r.assertGone()
}
