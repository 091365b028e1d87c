package integration

import (
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/tapdev"
)

// TestForcedExitReturnsAttachedNICTAP: a NIC TAP that existed before the
// run (the user's) is moved into --nic-netns and, on a forced exit
// (--halt-timeout while the stack holds buffers), moved back where it
// was, as a clean halt's unbind does. The forced path never unbinds, and
// the TAP stayed in the host namespace with the run's addresses; the
// next start then refused it as "not a tapminiport's".
func TestForcedExitReturnsAttachedNICTAP(t *testing.T) {
	tapdev.RequireRoot(t)
	tapdev.RequireTool(t, "ip")
	nic := "tmfn" + suffix()
	if out, err := exec.Command("ip", "tuntap", "add", "dev", nic, "mode", "tap").CombinedOutput(); err != nil {
		t.Fatalf("pre-create %s: %v %s", nic, err, out)
	}
	t.Cleanup(func() { _ = tapdev.DeleteLink("", nic) })
	r := start(t, "--nic-tap", nic, "--return-delay", "10s", "--halt-timeout", "700ms")
	t.Cleanup(func() { _ = tapdev.DeleteLink(r.host, nic) })
	if !tapdev.LinkExists(r.host, nic) {
		t.Fatalf("the attached NIC TAP %s is not in the host namespace %s while the run goes", nic, r.host)
	}
	ping(t, r.host, "-c", "3", "-i", "0.2", "-W", "1", "198.18.0.2") // replies held 10s by the stack
	if code := r.stop(syscall.SIGTERM, 10*time.Second); code != 3 {
		t.Fatalf("exit code %d, want 3 (forced by --halt-timeout):\n%s", code, r.stdout)
	}
	if !tapdev.LinkExists("", nic) {
		t.Errorf("the attached NIC TAP %s is not back in the root namespace after the forced exit (still in %s: %v)", nic, r.host, tapdev.LinkExists(r.host, nic))
	}
}
