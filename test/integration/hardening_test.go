package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/tapdev"
)

// removal is a TAP a run can lose: where it lives, what the report calls
// it and the halt action its loss means.
type removal struct {
	name    string
	ns, dev func(r *run) string
	want    string
	action  string
}

var removals = []removal{
	{"hardware TAP", func(r *run) string { return r.wire }, func(r *run) string { return r.hw }, "hardware TAP", `action="surprise removed"`},
	{"NIC TAP", func(r *run) string { return r.host }, func(r *run) string { return r.nic }, "NIC TAP", `action="device disabled"`},
}

// remove deletes tc's TAP and waits for the run to end.
func (tc removal) remove(t *testing.T, r *run) {
	t.Helper()
	mustIn(t, tc.ns(r), 5*time.Second, "ip", "link", "del", tc.dev(r))
	select {
	case <-r.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("still running 30s after the %s was deleted:\n%s", tc.name, r.stderr)
	}
}

// check asserts what a user sees after the surprise removal of tc's TAP:
// exit 5, a report naming it (and not claiming its kernel queue drops),
// the halt action it means, a clean verifier, nothing left.
func (tc removal) check(t *testing.T, r *run) {
	t.Helper()
	rep := r.stdout.String()
	if r.exitCode != 5 {
		t.Errorf("exit code %d, want 5 (surprise removal):\n%s", r.exitCode, rep)
	}
	if !strings.Contains(rep, "surprise removal: "+tc.want+" "+tc.dev(r)+" deleted") {
		t.Errorf("report does not name the removal of %s:\n%s", tc.dev(r), rep)
	}
	if !strings.Contains(rep, "verifier: clean") || !strings.Contains(rep, "left after unload: nothing") {
		t.Errorf("halt after surprise removal not clean:\n%s", rep)
	}
	// The kernel's queue drops of a deleted TAP are unknown, not 0.
	if !strings.Contains(rep, " "+tc.dev(r)+"=? (gone before the halt)") {
		t.Errorf("report does not say the kernel TAP queue drops of the deleted %s are unknown:\n%s", tc.dev(r), rep)
	}
	if !strings.Contains(r.stderr.String(), tc.action) {
		t.Errorf("halt action is not %s:\n%s", tc.action, r.stderr)
	}
	r.assertGone()
}

// TestSurpriseRemoval deletes a TAP underneath a run while iperf3 pushes
// traffic (its server has reported a megabyte received before the delete):
// the hardware TAP from the wire namespace (the NIC is gone: the miniport
// gets the surprise-removed PnP event and halts with that action), and the
// NIC TAP from the host namespace (the stack's interface is gone: the
// binding unbinds). Either way: exit 5, a report naming the removal, a
// clean verifier, nothing left.
func TestSurpriseRemoval(t *testing.T) {
	tapdev.RequireTool(t, "iperf3")
	for _, tc := range removals {
		t.Run(tc.name, func(t *testing.T) {
			r := start(t)
			l := startLoad(t, r.host, r.wire, "198.18.0.2", 20*time.Second, "-t", "8")
			l.flowing(t, 1<<20, 6*time.Second) // under load: a megabyte has crossed, and more is coming
			tc.remove(t, r)
			tc.check(t, r)
		})
	}
}

// TestSurpriseRemovalDuringHalt deletes a TAP while the halt's pause
// waits for buffers the stack holds (--return-delay): the removal is still
// a surprise (the run has not yet begun deleting its own TAPs), so the
// hardware TAP's makes the halt's action "surprise removed", and either
// ends the run with exit 5 and a report naming it. It used to go unread
// once the run was stopping: exit 0, "device disabled".
func TestSurpriseRemovalDuringHalt(t *testing.T) {
	for _, tc := range removals {
		t.Run(tc.name, func(t *testing.T) {
			r := start(t, "--return-delay", "4s")
			ping(t, r.host, "-c", "3", "-i", "0.2", "-W", "1", "198.18.0.2") // replies held 4s by the stack
			if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			waitFor(t, r.stderr, "pause: waiting", 5*time.Second)
			tc.remove(t, r)
			log := r.stderr.String()
			if i, j := strings.Index(log, "surprise removal during the halt"), strings.Index(log, "unbind: done"); i < 0 || j < i {
				t.Errorf("no \"surprise removal during the halt\" logged before the unbind:\n%s", log)
			}
			tc.check(t, r)
		})
	}
}
