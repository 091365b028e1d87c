package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/tapdev"
)

// capMask reads a capability set ("CapEff", "CapPrm", "CapInh") of pid.
func capMask(t *testing.T, pid int, set string) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, set+":"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
	}
	t.Fatalf("no %s in /proc/%d/status", set, pid)
	return 0
}

const (
	capNetAdmin = 1 << 12
	capSysAdmin = 1 << 21
)

// TestCapabilitiesDropped: once its devices are up the run keeps only
// CAP_NET_ADMIN and CAP_SYS_ADMIN (it works in namespaces) — no
// CAP_DAC_OVERRIDE, CAP_NET_RAW, CAP_SYS_PTRACE ... — and still moves
// packets and halts cleanly, namespace removal included.
func TestCapabilitiesDropped(t *testing.T) {
	r := start(t)
	pid := r.cmd.Process.Pid
	for _, set := range []string{"CapEff", "CapPrm"} {
		if got := capMask(t, pid, set); got != capNetAdmin|capSysAdmin {
			t.Errorf("%s = %#x, want %#x (CAP_NET_ADMIN + CAP_SYS_ADMIN)", set, got, capNetAdmin|capSysAdmin)
		}
	}
	if got := capMask(t, pid, "CapInh"); got != 0 {
		t.Errorf("CapInh = %#x, want 0", got)
	}
	if _, rx, out := ping(t, r.host, "-c", "3", "-i", "0.2", "-W", "2", "198.18.0.2"); rx != 3 {
		t.Errorf("ping with dropped capabilities: %d of 3:\n%s", rx, out)
	}
	if code := r.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if !strings.Contains(r.stdout.String(), "verifier: clean") {
		t.Errorf("halt with dropped capabilities not clean:\n%s", r.stdout)
	}
	r.assertGone()
}

// TestUnprivilegedStartNamesTheFix: a start without privileges fails at
// once, creates nothing, and says what to do.
func TestUnprivilegedStartNamesTheFix(t *testing.T) {
	tapdev.RequireRoot(t) // to become someone else
	s := suffix()
	hw, nic, wire := "tmhw"+s, "tmn"+s, "tmiw"+s
	t.Cleanup(func() { // whatever a failed run left, by name
		if tapdev.NetnsExists(wire) {
			_ = tapdev.DeleteNetns(wire)
		}
		for _, l := range []string{hw, nic} {
			if tapdev.LinkExists("", l) {
				_ = tapdev.DeleteLink("", l)
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "--hw-tap", hw, "--nic-tap", nic, "--wire-netns", wire)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("unprivileged start still running after 20s (killed):\n%s", out)
	}
	if code := exitCode(err); code != 1 {
		t.Errorf("unprivileged start: exit %d, want 1:\n%s", code, out)
	}
	// Asked before anything is opened, so the same whatever
	// /dev/net/tun's mode lets user 65534 open (0666 on many machines).
	if want := "needs root or CAP_NET_ADMIN and CAP_SYS_ADMIN (it creates TAPs and namespaces; CAP_NET_ADMIN and CAP_SYS_ADMIN missing): run with sudo"; !strings.Contains(string(out), want) {
		t.Errorf("the error does not name the fix %q:\n%s", want, out)
	}
	for _, l := range []string{hw, nic} {
		if tapdev.LinkExists("", l) {
			t.Errorf("an unprivileged start left TAP %s behind", l)
		}
	}
	if tapdev.NetnsExists(wire) {
		t.Errorf("an unprivileged start left namespace %s behind", wire)
	}
}
