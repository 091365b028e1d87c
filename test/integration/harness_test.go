// Package integration runs the tapminiport binary as a user would: as root,
// with real TAPs, real namespaces, real ping and iperf3, real signals. Every
// test makes its own namespaces and TAP names with a per-run suffix, sends
// traffic only from inside them, on 198.18.0.0/15 and 2001:2::/48, and
// removes all of it in cleanup, even when it fails.
package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/tapdev"

	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

var binary string // built once in TestMain

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tapminiport-it")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_ = os.Chmod(dir, 0o755) // an unprivileged user runs it too (TestUnprivilegedStartNamesTheFix)
	binary = filepath.Join(dir, "tapminiport")
	build := exec.Command("go", "build", "-o", binary, "../../cmd/tapminiport")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // as the scripts build it: it can drop capabilities
	out, err := build.CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build tapminiport: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func suffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// run is one tapminiport process with its namespaces.
type run struct {
	t                   *testing.T
	host, wire, hw, nic string
	cmd                 *exec.Cmd
	stdout, stderr      *shimtest.SyncBuffer
	exited              chan struct{}
	exitCode            int
	status              syscall.WaitStatus // how it ended, once exited is closed
}

// start runs tapminiport with the NIC TAP in a namespace the test created
// and the wire partner in a namespace tapminiport creates, and waits for
// "ready". Cleanup kills it if it still runs and removes every namespace and
// TAP of the run by name.
func start(t *testing.T, extra ...string) *run {
	t.Helper()
	r := newRun(t)
	r.exec(t, extra...)
	r.waitReady(t)
	return r
}

// newRun makes a run's names with a fresh suffix and its host namespace
// (lo up); cleanup removes all of it.
func newRun(t *testing.T) *run {
	t.Helper()
	tapdev.RequireRoot(t)
	s := suffix()
	r := &run{t: t, host: "tmih" + s, wire: "tmiw" + s, hw: "tmhw" + s, nic: "tmn" + s}
	if err := tapdev.CreateNetns(r.host); err != nil {
		t.Fatalf("create host namespace %s: %v", r.host, err)
	}
	t.Cleanup(func() { r.cleanup() })
	if out, err := exec.Command("ip", "netns", "exec", r.host, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up in %s: %v %s", r.host, err, out)
	}
	return r
}

// exec starts tapminiport on r's names with extra flags and returns at
// once; r.exited closes when it ends, with r.exitCode and r.status set.
func (r *run) exec(t *testing.T, extra ...string) { r.execTo(t, nil, nil, extra...) }

// execTo is exec with the process's stdout going to stdout (nil: r.stdout)
// and exited run once the process has ended, before r.exited closes.
func (r *run) execTo(t *testing.T, stdout io.Writer, exited func(), extra ...string) {
	t.Helper()
	r.t, r.stdout, r.stderr, r.exited = t, &shimtest.SyncBuffer{}, &shimtest.SyncBuffer{}, make(chan struct{})
	args := append([]string{"--hw-tap", r.hw, "--nic-tap", r.nic, "--nic-netns", r.host, "--wire-netns", r.wire, "--watchdog", "200ms"}, extra...)
	r.cmd = exec.Command(binary, args...)
	r.cmd.Stdout, r.cmd.Stderr = r.stdout, r.stderr
	if stdout != nil {
		r.cmd.Stdout = stdout
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start tapminiport: %v", err)
	}
	go func() {
		err := r.cmd.Wait()
		r.exitCode = 0
		if ee, ok := err.(*exec.ExitError); ok {
			r.exitCode = ee.ExitCode()
		}
		if ws, ok := r.cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			r.status = ws
		}
		if exited != nil {
			exited()
		}
		close(r.exited)
	}()
}

// waitReady waits (bounded) until the run prints "ready".
func (r *run) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for !strings.Contains(r.stdout.String(), "\nready\n") {
		select {
		case <-r.exited:
			t.Fatalf("tapminiport exited %d before ready:\nstdout:\n%s\nstderr:\n%s", r.exitCode, r.stdout, r.stderr)
		case <-deadline:
			t.Fatalf("tapminiport not ready after 20s:\nstdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (r *run) cleanup() {
	if r.cmd != nil && r.cmd.Process != nil {
		select {
		case <-r.exited:
		default:
			_ = r.cmd.Process.Kill()
			<-r.exited
		}
	}
	for _, ns := range []string{r.host, r.wire} {
		if tapdev.NetnsExists(ns) {
			_ = tapdev.DeleteNetns(ns)
		}
	}
	for _, l := range []string{r.hw, r.nic} {
		if tapdev.LinkExists("", l) {
			_ = tapdev.DeleteLink("", l)
		}
	}
	if r.t.Failed() {
		r.t.Logf("tapminiport stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
}

// signal sends sig and waits (bounded) for the process to exit.
func (r *run) stop(sig syscall.Signal, within time.Duration) int {
	r.t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		r.t.Fatalf("signal %v: %v", sig, err)
	}
	select {
	case <-r.exited:
	case <-time.After(within):
		r.t.Fatalf("tapminiport still running %s after %v:\nstderr:\n%s", within, sig, r.stderr)
	}
	return r.exitCode
}

// in runs a command inside namespace ns with a time limit and returns its output.
func in(t *testing.T, ns string, limit time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustIn(t *testing.T, ns string, limit time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := in(t, ns, limit, name, args...)
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), ns, err, out)
	}
	return out
}

var pingRe = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// ping returns transmitted and received counts.
func ping(t *testing.T, ns string, args ...string) (int, int, string) {
	t.Helper()
	out, _ := in(t, ns, 30*time.Second, "ping", args...)
	m := pingRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("ping %v in %s: no summary:\n%s", args, ns, out)
	}
	tx, _ := strconv.Atoi(m[1])
	rx, _ := strconv.Atoi(m[2])
	return tx, rx, out
}

// reportInt reads "label: N" (or "label N") from the exit report.
func reportInt(t *testing.T, report, pattern string) int64 {
	t.Helper()
	m := regexp.MustCompile(pattern).FindStringSubmatch(report)
	if m == nil {
		t.Fatalf("exit report has no %q:\n%s", pattern, report)
	}
	v, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		t.Fatalf("exit report %q: %v", pattern, err)
	}
	return v
}

// assertGone checks that nothing of the run is left: process, namespaces, TAPs.
func (r *run) assertGone() {
	r.t.Helper()
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", r.cmd.Process.Pid)); err == nil {
		// a zombie is reaped by Wait; a live /proc entry means it still runs
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", r.cmd.Process.Pid)); len(b) > 0 && !bytes.Contains(b, []byte(") Z")) {
			r.t.Errorf("process %d still exists", r.cmd.Process.Pid)
		}
	}
	if tapdev.NetnsExists(r.wire) {
		r.t.Errorf("wire namespace %s left behind", r.wire)
	}
	if tapdev.LinkExists("", r.hw) || tapdev.LinkExists("", r.nic) {
		r.t.Errorf("a TAP of the run is left in the root namespace")
	}
	if tapdev.LinkExists(r.host, r.nic) {
		r.t.Errorf("NIC TAP %s left in %s", r.nic, r.host)
	}
}

// iperf runs a bounded iperf3 client (-J) in the host namespace against a
// one-shot server in the wire namespace and returns the client's output.
func iperf(t *testing.T, r *run, server string, args ...string) string {
	t.Helper()
	return iperfFrom(t, r.host, r.wire, server, args...)
}

// iperfFrom is iperf with the client in namespace cns and the server in sns.
func iperfFrom(t *testing.T, cns, sns, server string, args ...string) string {
	t.Helper()
	tapdev.RequireTool(t, "iperf3")
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", sns, "iperf3", "-s", "-1", "-B", server)
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		t.Fatalf("iperf3 server: %v", err)
	}
	defer func() { cancel(); _ = srv.Wait() }()
	waitListen(t, sns, &srvOut)
	out, err := in(t, cns, 35*time.Second, "iperf3", append([]string{"-c", server, "-J"}, args...)...)
	if err != nil {
		t.Fatalf("iperf3 -c %s %v: %v\n%s\nserver:\n%s", server, args, err, out, srvOut.String())
	}
	return out
}

// waitListen waits (bounded) until an iperf3 server listens on port 5201
// in namespace ns; srvOut is the server's output, for the failure.
func waitListen(t *testing.T, ns string, srvOut fmt.Stringer) {
	t.Helper()
	for i := 0; i < 50; i++ {
		out, _ := in(t, ns, 2*time.Second, "ss", "-ltn")
		if strings.Contains(out, ":5201") {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("iperf3 server in %s not listening on 5201 after 5s:\n%s", ns, srvOut)
}

// load is an iperf3 run in the background: a one-shot server in one
// namespace, a client in another, both bounded in time and printing a
// report every second (--forceflush) unless the client's args hold -J.
type load struct {
	srv, cli *shimtest.SyncBuffer
	reverse  bool          // -R: the client receives, the server sends
	done     chan struct{} // closed when the client has ended
	err      error         // the client's, once done is closed
}

// startLoad starts a one-shot iperf3 server in sns bound to server, waits
// until it listens, and starts a client in cns with args; both are killed
// after limit, and in cleanup if still running. Call flowing before
// relying on the traffic. The receiver's reports are what flowing reads:
// the server's, or with -R the client's (then without -J).
func startLoad(t *testing.T, cns, sns, server string, limit time.Duration, args ...string) *load {
	t.Helper()
	tapdev.RequireTool(t, "iperf3")
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	l := &load{srv: &shimtest.SyncBuffer{}, cli: &shimtest.SyncBuffer{}, done: make(chan struct{})}
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", sns, "iperf3", "-s", "-1", "-B", server, "--forceflush")
	srv.Stdout, srv.Stderr = l.srv, l.srv
	if err := srv.Start(); err != nil {
		cancel()
		t.Fatalf("iperf3 server: %v", err)
	}
	t.Cleanup(func() { cancel(); _ = srv.Wait() })
	waitListen(t, sns, l.srv)
	cargs := []string{"netns", "exec", cns, "iperf3", "-c", server, "--forceflush"}
	for _, a := range args {
		l.reverse = l.reverse || a == "-R"
	}
	cli := exec.CommandContext(ctx, "ip", append(cargs, args...)...)
	cli.Stdout, cli.Stderr = l.cli, l.cli
	if err := cli.Start(); err != nil {
		t.Fatalf("iperf3 client: %v", err)
	}
	go func() { l.err = cli.Wait(); close(l.done) }()
	t.Cleanup(func() { cancel(); <-l.done }) // before the server's: cleanups run last-in first-out
	return l
}

var unitBytes = map[string]float64{"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

var intervalRe = regexp.MustCompile(`(?m)^\[\s*\d+\]\s+[\d.]+-[\d.]+\s+sec\s+([\d.]+) ([KMGT]?)Bytes.*$`)

// received is what the receiver's per-second reports add up to so far
// (the server's, or the client's with -R), in bytes.
func (l *load) received() float64 {
	out := l.srv.String()
	if l.reverse {
		out = l.cli.String()
	}
	var sum float64
	for _, m := range intervalRe.FindAllStringSubmatch(out, -1) {
		if strings.Contains(m[0], "sender") || strings.Contains(m[0], "receiver") {
			continue // the end's summary, not an interval
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		sum += v * unitBytes[m[2]]
	}
	return sum
}

// flowing waits (bounded) until iperf3's receiver reports atLeast bytes
// received while the client still runs, and fails the test if the client
// ends first or the time runs out.
func (l *load) flowing(t *testing.T, atLeast float64, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for l.received() < atLeast {
		select {
		case <-l.done:
			t.Fatalf("iperf3 client ended (%v) after %.0f bytes received, want %.0f while it runs:\nclient:\n%s\nserver:\n%s", l.err, l.received(), atLeast, l.cli, l.srv)
		case <-deadline:
			t.Fatalf("iperf3 received %.0f bytes after %v, want %.0f:\nclient:\n%s\nserver:\n%s", l.received(), within, atLeast, l.cli, l.srv)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// wait waits (bounded) for the client to end and returns its output.
func (l *load) wait(t *testing.T, within time.Duration) string {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(within):
		t.Fatalf("iperf3 client still running after %v:\n%s", within, l.cli)
	}
	return l.cli.String()
}

func lines(s string) []string { return strings.Split(strings.TrimSpace(s), "\n") }
