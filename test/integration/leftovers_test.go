package integration

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/tapdev"
)

// Crash leftovers (cmd/tapminiport/leftovers.go): a run marks what it
// creates with an alias "tapminiport pid=N start=S pidns=P role=R" (the
// wire namespace on its lo); after a SIGKILL the next start removes what
// the killed run left, refuses what a running run uses, and never deletes
// what carries no mark.

// launch starts tapminiport on r's names (set up by the caller: the host
// namespace must exist) and waits for "ready", like start. Cleanup kills it
// if it still runs and removes the run's namespaces and TAPs by name.
func launch(t *testing.T, r *run, extra ...string) *run {
	t.Helper()
	t.Cleanup(func() { r.cleanup() })
	r.exec(t, extra...)
	r.waitReady(t)
	return r
}

// names makes a run's names and its host namespace; nothing else exists yet.
func names(t *testing.T) *run { return newRun(t) }

func mustAlias(t *testing.T, ns, link string) string {
	t.Helper()
	a, err := tapdev.LinkAlias(ns, link)
	if err != nil {
		t.Fatalf("alias of %s in %q: %v", link, ns, err)
	}
	return a
}

// deadMark is an ownership mark of a process that has exited.
func deadMark(t *testing.T, role string) (string, int) {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatalf("run true: %v", err)
	}
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		t.Fatal(err)
	}
	var pidns uint64
	if _, err := fmt.Sscanf(ns, "pid:[%d]", &pidns); err != nil {
		t.Fatalf("%s: %v", ns, err)
	}
	pid := cmd.Process.Pid
	return fmt.Sprintf("tapminiport pid=%d start=1 pidns=%d role=%s", pid, pidns, role), pid
}

func pingAll(t *testing.T, r *run) {
	t.Helper()
	if tx, rx, out := ping(t, r.host, "-c", "3", "-i", "0.2", "-W", "2", "198.18.0.2"); rx != tx {
		t.Errorf("ping through the miniport: %d of %d replies:\n%s", rx, tx, out)
	}
}

// stopClean sends SIGTERM and wants exit 0, a clean report and, with
// checkGone, nothing of the run left.
func stopClean(t *testing.T, r *run, checkGone bool) {
	t.Helper()
	if code := r.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0:\n%s\n%s", code, r.stdout, r.stderr)
	}
	if rep := r.stdout.String(); !strings.Contains(rep, "verifier: clean") || !strings.Contains(rep, "left after unload: nothing") {
		t.Errorf("halt not clean:\n%s", rep)
	}
	if checkGone {
		r.assertGone()
	}
}

// TestLeftoversOfAKilledRun: a run is killed with SIGKILL; its wire
// namespace stays (marked with its pid), its TAPs vanish with its fds. The
// next start with the same names removes the namespace, says so, runs
// traffic and exits clean, leaving nothing.
func TestLeftoversOfAKilledRun(t *testing.T) {
	r1 := start(t)
	pid1 := r1.cmd.Process.Pid
	for _, c := range []struct{ ns, link, role string }{{r1.wire, "lo", "wire"}, {r1.wire, r1.hw, "hw"}, {r1.host, r1.nic, "nic"}} {
		if a := mustAlias(t, c.ns, c.link); !strings.HasPrefix(a, fmt.Sprintf("tapminiport pid=%d ", pid1)) || !strings.HasSuffix(a, " role="+c.role) {
			t.Errorf("mark on %s in %s = %q, want tapminiport pid=%d ... role=%s", c.link, c.ns, a, pid1, c.role)
		}
	}
	if err := r1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-r1.exited
	// What is left: the namespace stays; the TAPs go (the kernel deletes a
	// non-persistent TAP when its last fd closes; allow it a moment).
	if !tapdev.NetnsExists(r1.wire) {
		t.Fatalf("wire namespace %s is gone after SIGKILL: nothing to test", r1.wire)
	}
	gone := func() bool {
		return !tapdev.LinkExists(r1.wire, r1.hw) && !tapdev.LinkExists(r1.host, r1.nic) && !tapdev.LinkExists("", r1.hw) && !tapdev.LinkExists("", r1.nic)
	}
	for i := 0; i < 40 && !gone(); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if !gone() {
		t.Errorf("a TAP of the killed run is still there")
	}
	out, _ := exec.Command("ip", "-n", r1.wire, "-o", "link", "show").CombinedOutput()
	t.Logf("after SIGKILL of pid %d: netns %s stays (lo alias %q), links in it:\n%s", pid1, r1.wire, mustAlias(t, r1.wire, "lo"), out)

	r2 := launch(t, &run{host: r1.host, wire: r1.wire, hw: r1.hw, nic: r1.nic})
	want := fmt.Sprintf("removed leftover of killed run pid=%d: netns %s", pid1, r1.wire)
	if !strings.Contains(r2.stderr.String(), want) {
		t.Errorf("log does not say %q:\n%s", want, r2.stderr)
	}
	if a := mustAlias(t, r2.wire, "lo"); !strings.HasPrefix(a, fmt.Sprintf("tapminiport pid=%d ", r2.cmd.Process.Pid)) {
		t.Errorf("the new wire namespace is not marked by the new run: %q", a)
	}
	pingAll(t, r2)
	stopClean(t, r2, true)
}

// TestLeftoversNotOursAreKept: a namespace with the wire name that carries
// no mark (made by the test; once with an alias that is no complete mark)
// is refused, nothing is created, and the namespace is still there.
func TestLeftoversNotOursAreKept(t *testing.T) {
	for _, alias := range []string{"", "tapminiport pid=1 role=wire"} {
		r := names(t)
		if err := tapdev.CreateNetns(r.wire); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if tapdev.NetnsExists(r.wire) {
				_ = tapdev.DeleteNetns(r.wire)
			}
		})
		if alias != "" {
			if err := tapdev.ConfigureLink(r.wire, "lo", tapdev.LinkConfig{Alias: alias}); err != nil {
				t.Fatal(err)
			}
		}
		out, err := runBinary(t, 20*time.Second, "--hw-tap", r.hw, "--nic-tap", r.nic, "--nic-netns", r.host, "--wire-netns", r.wire)
		if code := exitCode(err); code != 1 {
			t.Errorf("alias %q: exit code %d, want 1:\n%s", alias, code, out)
		}
		if !strings.Contains(out, r.wire+`\" already exists`) || !strings.Contains(out, "not ours to delete") {
			t.Errorf("alias %q: refusal does not say why:\n%s", alias, out)
		}
		if !tapdev.NetnsExists(r.wire) {
			t.Errorf("alias %q: the namespace %s the test made was deleted", alias, r.wire)
		}
		if tapdev.LinkExists("", r.hw) || tapdev.LinkExists(r.wire, r.hw) || tapdev.LinkExists(r.host, r.nic) || tapdev.LinkExists("", r.nic) {
			t.Errorf("alias %q: a refused start created a TAP", alias)
		}
		if err := tapdev.DeleteNetns(r.wire); err != nil {
			t.Error(err)
		}
	}
}

// TestLeftoversOfARunningRunAreRefused: a second start on a running run's
// wire namespace, or on its NIC TAP, is refused naming the pid; the running
// run is untouched and exits clean.
func TestLeftoversOfARunningRunAreRefused(t *testing.T) {
	r1 := start(t)
	pid1 := r1.cmd.Process.Pid
	s := suffix()
	for _, c := range []struct{ name, wire, nic, flag string }{
		{"wire namespace", r1.wire, "tmn" + s, "--wire-netns"},
		{"NIC TAP", "tmiw" + s, r1.nic, "--nic-tap"},
	} {
		out, err := runBinary(t, 20*time.Second, "--hw-tap", "tmhw"+s, "--nic-tap", c.nic, "--nic-netns", r1.host, "--wire-netns", c.wire)
		if code := exitCode(err); code != 1 {
			t.Errorf("%s: exit code %d, want 1:\n%s", c.name, code, out)
		}
		if want := fmt.Sprintf("belongs to a running tapminiport (pid %d", pid1); !strings.Contains(out, want) || !strings.Contains(out, c.flag) {
			t.Errorf("%s: refusal does not say %q and %s:\n%s", c.name, want, c.flag, out)
		}
		if c.wire != r1.wire && tapdev.NetnsExists(c.wire) {
			t.Errorf("%s: a refused start created netns %s", c.name, c.wire)
			_ = tapdev.DeleteNetns(c.wire)
		}
		if tapdev.LinkExists("", "tmhw"+s) {
			t.Errorf("%s: a refused start created TAP tmhw%s", c.name, s)
			_ = tapdev.DeleteLink("", "tmhw"+s)
		}
	}
	select {
	case <-r1.exited:
		t.Fatalf("the running run exited (%d):\n%s", r1.exitCode, r1.stderr)
	default:
	}
	pingAll(t, r1)
	stopClean(t, r1, true)
}

// TestLeftoverTAPs: TAPs that outlived a killed run (persistent here, made
// by the test) are dealt with by their mark. Marked by a dead pid: removed
// (the hardware TAP in the current namespace, the NIC TAP in --nic-netns),
// and the run creates its own. Not marked, inside a marked leftover wire
// namespace: the user's, moved home before the namespace goes, attached,
// and still there after the run.
func TestLeftoverTAPs(t *testing.T) {
	tapdev.RequireTool(t, "ip")
	t.Run("marked by a dead pid", func(t *testing.T) {
		r := names(t)
		t.Cleanup(func() { deleteLinkAnywhere(r.hw, "", r.wire); deleteLinkAnywhere(r.nic, r.host) })
		hwMark, pid := deadMark(t, "hw")
		nicMark, _ := deadMark(t, "nic")
		mustIP(t, "tuntap", "add", "dev", r.hw, "mode", "tap")
		mustIP(t, "link", "set", r.hw, "alias", hwMark)
		mustIP(t, "-n", r.host, "tuntap", "add", "dev", r.nic, "mode", "tap")
		mustIP(t, "-n", r.host, "link", "set", r.nic, "alias", nicMark)
		launch(t, r)
		log := r.stderr.String()
		for _, want := range []string{
			fmt.Sprintf("removed leftover of killed run pid=%d: hardware TAP %s in the current namespace", pid, r.hw),
			fmt.Sprintf("NIC TAP %s in netns %s", r.nic, r.host),
		} {
			if !strings.Contains(log, want) {
				t.Errorf("log does not say %q:\n%s", want, log)
			}
		}
		self := fmt.Sprintf("tapminiport pid=%d ", r.cmd.Process.Pid)
		if a := mustAlias(t, r.wire, r.hw); !strings.HasPrefix(a, self) {
			t.Errorf("hardware TAP not created afresh by the run: alias %q", a)
		}
		if a := mustAlias(t, r.host, r.nic); !strings.HasPrefix(a, self) {
			t.Errorf("NIC TAP not created afresh by the run: alias %q", a)
		}
		pingAll(t, r)
		stopClean(t, r, true)
	})
	t.Run("the user's TAP in a leftover namespace", func(t *testing.T) {
		r := names(t)
		t.Cleanup(func() { deleteLinkAnywhere(r.hw, "", r.wire) })
		wireMark, pid := deadMark(t, "wire")
		if err := tapdev.CreateNetns(r.wire); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if tapdev.NetnsExists(r.wire) {
				_ = tapdev.DeleteNetns(r.wire)
			}
		})
		if err := tapdev.ConfigureLink(r.wire, "lo", tapdev.LinkConfig{Alias: wireMark}); err != nil {
			t.Fatal(err)
		}
		mustIP(t, "tuntap", "add", "dev", r.hw, "mode", "tap")
		mustIP(t, "link", "set", r.hw, "alias", "the user's")
		mustIP(t, "link", "set", r.hw, "netns", r.wire)
		launch(t, r)
		log := r.stderr.String()
		for _, want := range []string{
			"moved the user's TAP out of a killed run's leftover namespace",
			fmt.Sprintf("removed leftover of killed run pid=%d: netns %s", pid, r.wire),
			"hardware=" + r.hw + " created=false", // attached, not created
		} {
			if !strings.Contains(log, want) {
				t.Errorf("log does not say %q:\n%s", want, log)
			}
		}
		pingAll(t, r)
		stopClean(t, r, false) // the user's TAP is home: assertGone would call it a leftover
		if tapdev.NetnsExists(r.wire) {
			t.Errorf("wire namespace %s left behind", r.wire)
		}
		if a, err := tapdev.LinkAlias("", r.hw); err != nil || a != "the user's" {
			t.Errorf("the user's TAP %s after the run: alias %q, %v (want it home, untouched)", r.hw, a, err)
		}
	})
}

func mustIP(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// deleteLinkAnywhere deletes the link by name in each namespace it is in.
func deleteLinkAnywhere(name string, nss ...string) {
	for _, ns := range nss {
		if (ns == "" || tapdev.NetnsExists(ns)) && tapdev.LinkExists(ns, name) {
			_ = tapdev.DeleteLink(ns, name)
		}
	}
}

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
