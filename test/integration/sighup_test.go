package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

const hupLine = "SIGHUP: nothing to reload (stop with SIGTERM)"

// waitLog waits (bounded) until stderr holds want n times.
func waitLog(t *testing.T, r *run, want string, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for strings.Count(r.stderr.String(), want) < n {
		if time.Now().After(deadline) {
			t.Fatalf("after %v stderr holds %q %d times, want %d:\n%s", within, want, strings.Count(r.stderr.String(), want), n, r.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSIGHUPIsLoggedAndIgnored: SIGHUP leaves the run running and traffic
// flowing, with a log line; SIGTERM then halts it cleanly (exit 0).
func TestSIGHUPIsLoggedAndIgnored(t *testing.T) {
	r := start(t)
	for i := 1; i <= 3; i++ { // three: had it counted as a stop signal, the third would force a shutdown
		if err := r.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitLog(t, r, hupLine, i, 5*time.Second)
	}
	select {
	case <-r.exited:
		t.Fatalf("SIGHUP ended the run (exit %d):\n%s", r.exitCode, r.stderr)
	case <-time.After(200 * time.Millisecond):
	}
	pingAll(t, r)
	stopClean(t, r, true)
}

// TestSIGHUPDuringHaltIsNotCounted: while the halt waits for buffers the
// stack holds (--return-delay), two SIGHUPs are logged and not counted as
// the second and third stop signals: no "still draining", no forced
// shutdown, exit 0. The stack must hold replies at SIGTERM (the pause then
// waits about 1.5 s) and both SIGHUPs must be logged: otherwise they came
// after the halt and the test has checked nothing, which is a failure,
// not a note in the log.
func TestSIGHUPDuringHaltIsNotCounted(t *testing.T) {
	r := start(t, "--return-delay", "1500ms")
	done := make(chan struct{})
	go func() {
		defer close(done)
		in(t, r.host, 6*time.Second, "ping", "-c", "15", "-i", "0.2", "-w", "5", "198.18.0.2")
	}()
	time.Sleep(time.Second) // the stack now holds a second's worth of replies
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitLog(t, r, "pause: start", 1, 5*time.Second)
	for i := 1; i <= 2; i++ {
		if err := r.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		// One at a time: two SIGHUPs sent at once may arrive as one
		// (a signal already pending is not queued twice).
		waitLog(t, r, hupLine, i, 2*time.Second)
	}
	select {
	case <-r.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("still running 30s after SIGTERM:\n%s", r.stderr)
	}
	<-done
	log := r.stderr.String()
	if r.exitCode != 0 || strings.Contains(log, "still draining") || strings.Contains(log, "forced") {
		t.Errorf("exit code %d (want 0, not forced): SIGHUP counted as a stop signal?\n%s", r.exitCode, log)
	}
	if held := reportInt(t, log, `"?pause: start"? held_by_stack=(\d+)`); held == 0 {
		t.Errorf("the stack held nothing at SIGTERM (pings every 0.2 s, --return-delay 1500ms): the halt did not wait, nothing was checked:\n%s", log)
	}
	if n := strings.Count(log, hupLine); n != 2 {
		t.Errorf("%d SIGHUP lines, want 2: the SIGHUPs sent during the halt were not read while it waited:\n%s", n, log)
	}
	r.assertGone()
}
