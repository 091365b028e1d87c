package integration

import (
	"strings"
	"testing"
	"time"
)

// TestHardwareLinkDownIsACablePull: `ip link set <hw> down` in the wire
// namespace is a pulled cable, not a removal. The log says so at once,
// before any traffic (the link watch, as a NIC's link interrupt); while
// the link is down pings go unanswered and the sends are dropped and
// counted as link-down; once it is up the log says so, again without
// traffic, pings are answered, and SIGTERM still halts cleanly (exit 0,
// not 5) with nothing left.
func TestHardwareLinkDownIsACablePull(t *testing.T) {
	r := start(t)
	pingWire(t, r)

	mustIn(t, r.wire, 5*time.Second, "ip", "link", "set", r.hw, "down")
	waitFor(t, r.stderr, "hardware link down", 5*time.Second)
	if tx, rx, out := ping(t, r.host, "-c", "3", "-i", "0.2", "-W", "1", "198.18.0.2"); tx != 3 || rx != 0 {
		t.Errorf("ping while the hardware link is down: %d of %d answered, want none:\n%s", rx, tx, out)
	}

	mustIn(t, r.wire, 5*time.Second, "ip", "link", "set", r.hw, "up")
	waitFor(t, r.stderr, "hardware link up", 5*time.Second)
	// The wire's kernel brings its routes back and resolves the host
	// again: give it a few seconds, then every ping must be answered.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, rx, _ := ping(t, r.host, "-c", "1", "-W", "1", "198.18.0.2"); rx == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ping answered within 10s of the hardware link coming back up:\n%s", r.stderr)
		}
	}
	pingWire(t, r)

	rep := stopAndReport(t, r)
	if n := reportInt(t, rep, `send drops: paused=\d+ oversize=\d+ link-down=(\d+)`); n < 3 {
		t.Errorf("send drops link-down=%d, want at least the 3 echo requests:\n%s", n, rep)
	}
	if n := reportInt(t, rep, `send drops: .* errors=(\d+)`); n != 0 {
		t.Errorf("send errors=%d, want 0 (a link down is not an error):\n%s", n, rep)
	}
	if n := strings.Count(r.stderr.String(), "hardware link down"); n != 1 {
		t.Errorf("the log says \"hardware link down\" %d times, want once", n)
	}
	if strings.Contains(r.stderr.String(), "surprise") || strings.Contains(r.stderr.String(), "hardware TAP gone") {
		t.Errorf("a link set down was taken for a removal:\n%s", r.stderr)
	}
	r.assertGone()
}
