package integration

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/tapdev"
)

// TestSIGTERMDuringInitialize sends SIGTERM while tapminiport is still
// starting, before "ready", at four moments: right after exec, as soon as
// the wire namespace exists, as soon as the hardware TAP exists
// (InitializeEx is under way), and as soon as the NIC TAP exists (the
// binding); and once more after a burst of SIGHUPs, which must not crowd
// the SIGTERM out. README's promise: the signal is held until the start-up
// has finished, `ready` still prints, then a clean halt and exit 0, within
// 20s, leaving no namespace, TAP or process of the run behind.
//
// One more outcome is allowed only right after exec: a signal that comes
// before the process has installed its handler kills it by the default
// action. That is before it creates anything, so nothing may exist then.
func TestSIGTERMDuringInitialize(t *testing.T) {
	tapdev.RequireRoot(t)
	for _, tc := range []struct {
		name  string
		ready func(r *run) bool // when to send SIGTERM; nil: at once
		hups  int               // SIGHUPs sent first, a few ms apart
	}{
		{name: "right after exec"},
		{name: "wire namespace made", ready: func(r *run) bool { return tapdev.NetnsExists(r.wire) }},
		{name: "hardware TAP open", ready: func(r *run) bool {
			return tapdev.LinkExists("", r.hw) || tapdev.NetnsExists(r.wire) && tapdev.LinkExists(r.wire, r.hw)
		}},
		{name: "NIC TAP made", ready: func(r *run) bool { return tapdev.LinkExists(r.host, r.nic) }},
		{name: "wire namespace made, after 6 SIGHUPs", ready: func(r *run) bool { return tapdev.NetnsExists(r.wire) }, hups: 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, status := startNoWait(t)
			if tc.ready != nil {
				deadline := time.Now().Add(20 * time.Second)
				for !tc.ready(r) {
					select {
					case <-r.exited:
						t.Fatalf("exited %d before the moment to signal:\n%s\n%s", r.exitCode, r.stdout, r.stderr)
					default:
					}
					if time.Now().After(deadline) {
						t.Fatalf("%s: not reached in 20s:\n%s\n%s", tc.name, r.stdout, r.stderr)
					}
					time.Sleep(100 * time.Microsecond)
				}
			}
			for i := 0; i < tc.hups; i++ {
				if err := r.cmd.Process.Signal(syscall.SIGHUP); err != nil {
					t.Fatalf("SIGHUP: %v", err)
				}
				time.Sleep(5 * time.Millisecond) // one delivery each, not one coalesced
			}
			if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
				t.Fatalf("SIGTERM: %v", err)
			}
			began := time.Now()
			select {
			case <-r.exited:
			case <-time.After(20 * time.Second):
				t.Fatalf("still running 20s after SIGTERM during start-up:\n%s\n%s", r.stdout, r.stderr)
			}
			took := time.Since(began)
			ready := strings.Contains(r.stdout.String(), "\nready\n")
			ws := *status
			switch {
			case ws.Signaled() && ws.Signal() == syscall.SIGTERM:
				if tc.ready != nil {
					t.Errorf("killed by SIGTERM after start-up began (the handler must be installed by then):\n%s", r.stderr)
				}
				t.Logf("%s: killed by the default action of SIGTERM before the handler was installed, after %s", tc.name, took)
			case r.exitCode == 0:
				rep := r.stdout.String()
				if !ready {
					t.Errorf("exit 0 without \"ready\": the start-up must finish before the halt:\n%s\n%s", rep, r.stderr)
				}
				if !strings.Contains(rep, "verifier: clean") || !strings.Contains(rep, "left after unload: nothing") {
					t.Errorf("exit 0 without a clean report:\n%s\n%s", rep, r.stderr)
				}
				t.Logf("%s: ready, then exit 0 after a clean halt %s after SIGTERM", tc.name, took)
			default:
				t.Errorf("exit code %d (%v), want 0 (start-up finished, then a clean halt):\n%s\n%s", r.exitCode, ws, r.stdout, r.stderr)
			}
			if strings.Contains(r.stderr.String(), "panic:") {
				t.Errorf("panic:\n%s", r.stderr)
			}
			r.assertGone()
			for _, l := range []string{r.hw, r.nic} {
				if tapdev.NetnsExists(r.wire) && tapdev.LinkExists(r.wire, l) {
					t.Errorf("TAP %s left in %s", l, r.wire)
				}
			}
		})
	}
}

// startNoWait starts tapminiport as start() does (same names, flags and
// cleanup) but returns at once, without waiting for "ready", with the
// process's wait status once r.exited is closed.
func startNoWait(t *testing.T, extra ...string) (*run, *syscall.WaitStatus) {
	t.Helper()
	r := newRun(t)
	r.exec(t, extra...)
	return r, &r.status
}
