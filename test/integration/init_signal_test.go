package integration

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/tapdev"
)

// signalAttempts bounds the runs a case may make until its SIGTERM
// provably lands before "ready" (the moments just before ready are a race
// the test can lose).
const signalAttempts = 5

// TestSIGTERMDuringInitialize sends SIGTERM while tapminiport is still
// starting, before "ready", at four moments: right after exec, as soon as
// the wire namespace exists, as soon as the hardware TAP exists
// (InitializeEx is under way), and as soon as the NIC TAP exists (the
// binding); and once more after a burst of SIGHUPs, which must not crowd
// the SIGTERM out. README's promise: the signal is held until the start-up
// has finished, `ready` still prints, then a clean halt and exit 0, within
// 20s, leaving no namespace, TAP or process of the run behind.
//
// A run counts only if its stdout did not yet hold "ready" when SIGTERM had
// been sent; one that printed ready first is checked all the same and the
// case tries again, up to signalAttempts runs.
//
// One more outcome is allowed only right after exec: a signal that comes
// before the process has installed its handler kills it by the default
// action. That is before it creates or prints anything, so the test wants
// exactly that: killed by SIGTERM, no output, nothing of the run left.
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
			for attempt := 1; ; attempt++ {
				r, stdoutNow := startNoWait(t)
				if tc.ready != nil {
					deadline := time.Now().Add(20 * time.Second)
					for !tc.ready(r) {
						select {
						case <-r.exited:
							t.Fatalf("exited %d before the moment to signal:\n%s\n%s", r.exitCode, r.stdout, r.stderr)
						default:
						}
						if time.Now().After(deadline) {
							t.Fatalf("%s: not reached in 20s:\n%s\n%s", tc.name, stdoutNow(), r.stderr)
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
				// Read after the kill: if "ready" is not written yet, it
				// comes after the signal was sent.
				readyFirst := strings.Contains(stdoutNow(), "\nready\n")
				began := time.Now()
				select {
				case <-r.exited:
				case <-time.After(20 * time.Second):
					t.Fatalf("still running 20s after SIGTERM during start-up:\n%s\n%s", stdoutNow(), r.stderr)
				}
				took := time.Since(began)
				checkSIGTERMOutcome(t, r, tc.ready == nil)
				if t.Failed() {
					return
				}
				if !readyFirst {
					t.Logf("%s: %s %s after SIGTERM (run %d)", tc.name, outcome(r), took, attempt)
					return
				}
				if attempt == signalAttempts {
					t.Fatalf("%s: \"ready\" was already printed when SIGTERM was sent, in all %d runs: nothing shows a signal during start-up", tc.name, attempt)
				}
				t.Logf("%s: run %d printed \"ready\" before SIGTERM was sent; again", tc.name, attempt)
			}
		})
	}
}

// outcome says how r ended, for the log.
func outcome(r *run) string {
	if r.status.Signaled() {
		return "killed by the default action of " + r.status.Signal().String() + " (no handler yet)"
	}
	return "ready, then exit 0 after a clean halt"
}

// checkSIGTERMOutcome checks how a run signalled during start-up ended:
// killed by SIGTERM only when beforeHandler allows it, and then with no
// output; otherwise ready, a clean halt, exit 0. Either way nothing of the
// run may be left.
func checkSIGTERMOutcome(t *testing.T, r *run, beforeHandler bool) {
	t.Helper()
	ws := r.status
	rep := r.stdout.String()
	switch {
	case ws.Signaled() && ws.Signal() == syscall.SIGTERM:
		if !beforeHandler {
			t.Errorf("killed by SIGTERM after start-up began (the handler must be installed by then):\n%s", r.stderr)
		}
		// The handler is the first thing run installs: before it nothing
		// was parsed, printed or created.
		if rep != "" || r.stderr.String() != "" {
			t.Errorf("killed by SIGTERM before the handler, yet it printed:\nstdout:\n%s\nstderr:\n%s", rep, r.stderr)
		}
		if tapdev.NetnsExists(r.wire) {
			t.Errorf("killed by SIGTERM before the handler, yet wire namespace %s exists", r.wire)
		}
	case ws.Exited() && ws.ExitStatus() == 0:
		if !strings.Contains(rep, "\nready\n") {
			t.Errorf("exit 0 without \"ready\": the start-up must finish before the halt:\n%s\n%s", rep, r.stderr)
		}
		if !strings.Contains(rep, "verifier: clean") || !strings.Contains(rep, "left after unload: nothing") {
			t.Errorf("exit 0 without a clean report:\n%s\n%s", rep, r.stderr)
		}
	default:
		t.Errorf("exit code %d (%v), want 0 (start-up finished, then a clean halt):\n%s\n%s", r.exitCode, ws, rep, r.stderr)
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
}

// startNoWait starts tapminiport as run.exec does (run.execTo), on a
// fresh run's names and with its cleanup, but returns at once, without
// waiting for "ready". Its stdout goes to a regular file, not a pipe: what
// the process wrote is in the file when its write(2) returns, so
// stdoutNow() holds everything printed so far (a pipe and the goroutine
// copying it lag behind). r.stdout gets the whole output once the process
// has exited, before r.exited closes.
func startNoWait(t *testing.T) (r *run, stdoutNow func() string) {
	t.Helper()
	r = newRun(t)
	path := filepath.Join(t.TempDir(), "stdout")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // the process has its own copy
	stdoutNow = func() string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("read stdout: %v", err)
		}
		return string(b)
	}
	r.execTo(t, f, func() {
		if b, err := os.ReadFile(path); err == nil {
			r.stdout.Write(b)
		}
	})
	return r, stdoutNow
}
