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
// shutdown, exit 0.
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
	for i := 0; i < 2; i++ {
		if err := r.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
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
	if !strings.Contains(log, hupLine) {
		t.Logf("the halt ended before the SIGHUPs were read (nothing to check):\n%s", log)
	}
	if !strings.Contains(log, "pause: waiting") {
		t.Logf("the pause did not wait (the stack held nothing at SIGTERM)")
	}
	r.assertGone()
}
