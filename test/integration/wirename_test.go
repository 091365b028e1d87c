package integration

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/tapdev"
)

// TestHaltLeavesAWireNamespaceThatIsNotOurs: the run's wire namespace is
// removed by hand while it runs and another of the same name is made
// (someone else's); the halt leaves that one alone, saying so, instead of
// deleting it by name.
func TestHaltLeavesAWireNamespaceThatIsNotOurs(t *testing.T) {
	tapdev.RequireTool(t, "ip")
	r := start(t)
	t.Cleanup(func() { _ = tapdev.DeleteNetns(r.wire) })
	for _, args := range [][]string{{"netns", "del", r.wire}, {"netns", "add", r.wire}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	code := r.stop(syscall.SIGTERM, 30*time.Second)
	if !tapdev.NetnsExists(r.wire) {
		t.Fatalf("the halt deleted namespace %s, which the run did not make (exit %d):\n%s", r.wire, code, r.stderr)
	}
	if !strings.Contains(r.stderr.String(), "wire namespace is not this run's any more") {
		t.Errorf("the halt does not say it left %s alone:\n%s", r.wire, r.stderr)
	}
}
