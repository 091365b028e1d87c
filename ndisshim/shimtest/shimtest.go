// Package shimtest is what the unit tests of the layers around the shim
// share (as net/http/httptest is for HTTP): waiting without a timing
// assertion, counting open descriptors, building and comparing frames, a
// gate that parks a device call until the test lets it through, and an
// interrupt line that never fires. Only tests import it.
package shimtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/tapdev"
)

// Hang is how long Recv and WaitFor wait before they call the test hung:
// a guard against a hang (generous for -race on 2 cores), not a timing
// assertion.
const Hang = 20 * time.Second

// Recv waits for a value on ch.
func Recv[T any](t testing.TB, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(Hang):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

// WaitFor polls cond every millisecond until it holds.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Hang)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// OpenFDs counts this process's open file descriptors.
func OpenFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// Frame builds a frame of size bytes from src to dst, EtherType 0x88b5
// (IEEE local experimental), with a payload that depends on seq; shorter
// than 14 bytes it is a runt, cut from a whole header.
func Frame(dst, src net.HardwareAddr, size, seq int) []byte {
	f := make([]byte, max(size, 14))
	copy(f, dst)
	copy(f[6:], src)
	binary.BigEndian.PutUint16(f[12:], 0x88b5)
	for i := 14; i < len(f); i++ {
		f[i] = byte(seq*31 + i)
	}
	return f[:size]
}

// EqualFrames fails the test unless got and want are the same frames in
// the same order; it shows the first bytes of the first that differs.
func EqualFrames(t testing.TB, what string, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d frames, want %d", what, len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("%s: frame %d differs: got % x..., want % x...", what, i, got[i][:min(len(got[i]), 20)], want[i][:min(len(want[i]), 20)])
		}
	}
}

// Gate parks a call (a device's ReadBatch, say) until the test opens it.
// The zero Gate is open.
type Gate struct {
	mu     sync.Mutex
	hold   chan struct{}
	parked chan struct{}
}

// Close makes the next Pass park; the returned channel receives when one
// has.
func (g *Gate) Close() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.hold, g.parked = make(chan struct{}), make(chan struct{}, 1)
	return g.parked
}

// Open lets the parked call, and every later one, through.
func (g *Gate) Open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.hold != nil {
		close(g.hold)
		g.hold = nil
	}
}

// Pass is called by the gated call: it returns at once while the gate is
// open, and parks until Open while it is closed.
func (g *Gate) Pass() {
	g.mu.Lock()
	h, p := g.hold, g.parked
	g.mu.Unlock()
	if h != nil {
		select {
		case p <- struct{}{}:
		default:
		}
		<-h
	}
}

// SilentSource is an interrupt line that never fires: Wait returns only
// when it is stopped (ndisshim.ErrInterruptStopped). Under it a DPC runs
// only when something polls it.
type SilentSource struct{ stop chan struct{} }

var _ ndisshim.InterruptSource = (*SilentSource)(nil)

// NewSilentSource returns a line that has not been stopped.
func NewSilentSource() *SilentSource { return &SilentSource{stop: make(chan struct{})} }

// Wait implements ndisshim.InterruptSource.
func (s *SilentSource) Wait() error { <-s.stop; return ndisshim.ErrInterruptStopped }

// Stop implements ndisshim.InterruptSource (once, as the shim calls it).
func (s *SilentSource) Stop() { close(s.stop) }

// SyncBuffer is a bytes.Buffer that a logger or a process may write while
// the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Restart restarts a and fails the test unless it ends Running.
func Restart(t testing.TB, a *ndisshim.Adapter) {
	t.Helper()
	if err := a.Restart(context.Background()); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if st := a.State(); st != ndisshim.StateRunning {
		t.Fatalf("after restart: state %s, want Running", st)
	}
}

// Pause pauses a (waiting at most Hang for the drain) and fails the test
// unless it ends Paused.
func Pause(t testing.TB, a *ndisshim.Adapter) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Hang)
	defer cancel()
	if err := a.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if st := a.State(); st != ndisshim.StatePaused {
		t.Fatalf("after pause: state %s, want Paused", st)
	}
}

// FrameWriter and FrameReader are a device end as the tests drive it
// (tapdev.Dev, a socketpair end).
type (
	FrameWriter interface {
		WriteBatch(bufs [][]byte, res []tapdev.TxResult) (int, error)
	}
	FrameReader interface {
		ReadBatch(bufs [][]byte, sizes []int) (int, error)
	}
)

// WriteFrames writes frames on dev and fails the test unless all went.
func WriteFrames(t testing.TB, what string, dev FrameWriter, frames ...[]byte) {
	t.Helper()
	n, err := dev.WriteBatch(frames, nil)
	if err != nil || n != len(frames) {
		t.Fatalf("%s wrote %d of %d frames: %v", what, n, len(frames), err)
	}
}

// ReadFrames reads up to max frames from dev without waiting, each a copy
// of its own, and returns them with the read's error.
func ReadFrames(dev FrameReader, max int) ([][]byte, error) {
	return readInto(dev, make([][]byte, max), make([]int, max))
}

// readInto reads into bufs (allocated on first use) and returns copies.
func readInto(dev FrameReader, bufs [][]byte, sizes []int) ([][]byte, error) {
	for i := range bufs {
		if bufs[i] == nil {
			bufs[i] = make([]byte, 65536)
		}
	}
	k, err := dev.ReadBatch(bufs, sizes)
	out := make([][]byte, k)
	for i := range out {
		out[i] = bytes.Clone(bufs[i][:sizes[i]])
	}
	return out, err
}

// ReadFramesN waits for exactly n frames on dev (what names where they
// land, for the failure message).
func ReadFramesN(t testing.TB, what string, dev FrameReader, n int) [][]byte {
	t.Helper()
	bufs, sizes := make([][]byte, n), make([]int, n) // one set of buffers for every poll
	var out [][]byte
	WaitFor(t, "frames on "+what, func() bool {
		got, err := readInto(dev, bufs[:n-len(out)], sizes)
		if err != nil {
			t.Fatalf("read on %s: %v", what, err)
		}
		out = append(out, got...)
		return len(out) == n
	})
	return out
}
