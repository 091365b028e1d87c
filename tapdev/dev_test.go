package tapdev

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/tapminiport/tapminiport/ndisshim"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// requireRing skips t unless d reads with io_uring, the default read path.
// Under CI=true it fails instead, unless this kernel has no io_uring to
// give (ENOSYS, or kernel.io_uring_disabled=2), where read(2) is the
// default path and the read(2) tests cover it: a refusal from a kernel
// that has io_uring (a seccomp filter, for one) would leave the
// default read path untested in CI.
func requireRing(t testing.TB, d *Dev) {
	t.Helper()
	if d.ring != nil {
		return
	}
	msg := "io_uring not available here: " + d.ReadPath()
	if os.Getenv("CI") != "true" {
		t.Skip(msg)
	}
	if b, _ := os.ReadFile("/proc/sys/kernel/io_uring_disabled"); errors.Is(d.ringErr, unix.ENOSYS) || bytes.Equal(bytes.TrimSpace(b), []byte("2")) {
		t.Skip(msg + " (this kernel has none to give: read(2) is the default path)")
	}
	t.Fatal(msg + " (CI=true: io_uring is the default read path and must be tested; only a kernel without it, or kernel.io_uring_disabled=2, excuses this)")
}

func socketpair(t *testing.T) (*Dev, *Dev) {
	t.Helper()
	a, b, err := Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Close()
		b.Close()
	})
	return a, b
}

func makeBufs(n, size int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	return bufs, make([]int, n)
}

// checkFdFlags checks that fd is non-blocking and close-on-exec.
func checkFdFlags(t *testing.T, what string, fd int) {
	t.Helper()
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatalf("%s: F_GETFL: %v", what, err)
	}
	if fl&unix.O_NONBLOCK == 0 {
		t.Errorf("%s: fd %d is blocking", what, fd)
	}
	fdfl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatalf("%s: F_GETFD: %v", what, err)
	}
	if fdfl&unix.FD_CLOEXEC == 0 {
		t.Errorf("%s: fd %d has no FD_CLOEXEC", what, fd)
	}
}

func TestSocketpairBatchKeepsFrameBoundaries(t *testing.T) {
	a, b := socketpair(t)
	checkFdFlags(t, a.Name(), a.fd)
	checkFdFlags(t, a.Name()+" eventfd", a.efd)
	checkFdFlags(t, b.Name(), b.fd)

	frames := [][]byte{bytes.Repeat([]byte{1}, 60), bytes.Repeat([]byte{2}, 1514), bytes.Repeat([]byte{3}, 14)}
	n, err := a.WriteBatch(frames, nil)
	if n != 3 || err != nil {
		t.Fatalf("WriteBatch = %d, %v; want 3, nil", n, err)
	}
	bufs, sizes := makeBufs(8, 2048)
	n, err = b.ReadBatch(bufs, sizes)
	if n != 3 || err != nil {
		t.Fatalf("ReadBatch = %d, %v; want 3, nil", n, err)
	}
	for i, f := range frames {
		if !bytes.Equal(bufs[i][:sizes[i]], f) {
			t.Errorf("frame %d: got %d bytes, want %d bytes of %d", i, sizes[i], len(f), f[0])
		}
	}
	n, err = b.ReadBatch(bufs, sizes)
	if n != 0 || err != nil {
		t.Fatalf("ReadBatch on empty = %d, %v; want 0, nil", n, err)
	}
	// Batch limit: two frames queued, room for one.
	a.WriteBatch(frames[:2], nil)
	if n, err = b.ReadBatch(bufs[:1], sizes); n != 1 || err != nil {
		t.Fatalf("ReadBatch(1 buf) = %d, %v; want 1, nil", n, err)
	}
	if n, err = b.ReadBatch(bufs, sizes); n != 1 || err != nil || sizes[0] != 1514 {
		t.Fatalf("ReadBatch rest = %d, %v, size %d; want 1, nil, 1514", n, err, sizes[0])
	}
	if _, err := b.ReadBatch(bufs, sizes[:1]); err == nil {
		t.Error("ReadBatch with fewer sizes than bufs: no error")
	}
}

func TestWriteBatchDropsWhenFull(t *testing.T) {
	a, b := socketpair(t)
	frame := make([]byte, 1500)
	bufs := make([][]byte, 10000)
	for i := range bufs {
		bufs[i] = frame
	}
	n, err := a.WriteBatch(bufs, nil)
	if err != nil {
		t.Fatalf("WriteBatch on a full peer: %v (want drops, not an error)", err)
	}
	c := a.Counters()
	if n == len(bufs) || c.TxDropped != uint64(len(bufs)-n) {
		t.Fatalf("wrote %d of %d, TxDropped %d; want some dropped and counted", n, len(bufs), c.TxDropped)
	}
	t.Logf("socketpair took %d frames of 1500 bytes, dropped %d", n, c.TxDropped)
	rb, sizes := makeBufs(64, 2048)
	got := 0
	for {
		m, err := b.ReadBatch(rb, sizes)
		if err != nil {
			t.Fatal(err)
		}
		if m == 0 {
			break
		}
		got += m
	}
	if got != n {
		t.Errorf("read %d frames, written %d", got, n)
	}
	// An empty frame is a tx error, not an EOF for the peer.
	if n, err := a.WriteBatch([][]byte{{}, frame}, nil); n != 1 || err != nil || a.Counters().TxErrors != 1 {
		t.Errorf("WriteBatch(empty, frame) = %d, %v, TxErrors %d; want 1, nil, 1", n, err, a.Counters().TxErrors)
	}
}

// WriteBatch says what became of each frame, wherever in the batch it
// was: written, refused (an empty buffer; a record larger than the
// socket's send buffer: EMSGSIZE), dropped for want of room (EAGAIN), and
// not tried after an error ended the batch.
func TestWriteBatchResults(t *testing.T) {
	a, b := socketpair(t)
	unset := func(n int) []TxResult {
		res := make([]TxResult, n)
		for i := range res {
			res[i] = 99 // not a result: WriteBatch must set each
		}
		return res
	}
	f60, f61 := bytes.Repeat([]byte{1}, 60), bytes.Repeat([]byte{2}, 61)
	huge := make([]byte, 8<<20) // past the socket's send buffer (EMSGSIZE past sk_sndbuf-32; wmem_default is about 208 KiB, and 8 MiB is past wmem_max too)
	res := unset(5)
	n, err := a.WriteBatch([][]byte{f60, {}, huge, f61, f60}, res)
	want := []TxResult{TxWritten, TxRefused, TxRefused, TxWritten, TxWritten}
	if n != 3 || err != nil || !slices.Equal(res, want) || a.Counters().TxErrors != 2 {
		t.Errorf("WriteBatch(frame, empty, 8 MiB, frame, frame) = %d, %v, %v, TxErrors %d; want 3, nil, %v, 2", n, err, res, a.Counters().TxErrors, want)
	}
	rb, sizes := makeBufs(8, 2048)
	if n, err := b.ReadBatch(rb, sizes); n != 3 || err != nil || sizes[0] != 60 || sizes[1] != 61 || sizes[2] != 60 {
		t.Errorf("peer read %d frames (%v), sizes %v; want 60, 61, 60", n, err, sizes[:max(n, 0)])
	}

	// No room: the peer reads nothing.
	full := make([][]byte, 10000)
	for i := range full {
		full[i] = f60
	}
	res = unset(len(full))
	n, err = a.WriteBatch(full, res)
	var written, noRoom int
	for i, r := range res {
		switch r {
		case TxWritten:
			written++
		case TxNoRoom:
			noRoom++
		default:
			t.Fatalf("res[%d] = %v on a full peer; want written or no-room", i, r)
		}
	}
	if err != nil || written != n || noRoom != len(full)-n || noRoom == 0 || uint64(noRoom) != a.Counters().TxDropped {
		t.Errorf("full peer: wrote %d (%v), results %d written, %d no-room, TxDropped %d; want the results to agree with n and the counter, some dropped", n, err, written, noRoom, a.Counters().TxDropped)
	}

	// An error (the peer is gone) ends the batch: nothing after it tried.
	b.Close()
	res = unset(3)
	n, err = a.WriteBatch([][]byte{f60, f61, f60}, res)
	if n != 0 || !errors.Is(err, ErrDeviceGone) || !slices.Equal(res, []TxResult{TxUnwritten, TxUnwritten, TxUnwritten}) {
		t.Errorf("WriteBatch to a gone peer = %d, %v, %v; want 0, ErrDeviceGone, all unwritten", n, err, res)
	}
	a.Close()
	res = unset(2)
	if n, err = a.WriteBatch([][]byte{f60, f61}, res); n != 0 || !errors.Is(err, os.ErrClosed) || res[0] != TxUnwritten || res[1] != TxUnwritten {
		t.Errorf("WriteBatch on a closed device = %d, %v, %v; want 0, os.ErrClosed, all unwritten", n, err, res)
	}
}

// waitAsync runs src.Wait on a goroutine and returns its result channel,
// after checking that it blocks.
func waitAsync(t *testing.T, src ndisshim.InterruptSource) <-chan error {
	t.Helper()
	ch := make(chan error, 1)
	go func() { ch <- src.Wait() }()
	select {
	case err := <-ch:
		t.Fatalf("Wait returned %v before anything happened", err)
	case <-time.After(50 * time.Millisecond):
	}
	return ch
}

func waitResult(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return in 5 s")
		return nil
	}
}

func TestInterruptWakesOnReadable(t *testing.T) {
	a, b := socketpair(t)
	ch := waitAsync(t, b.Interrupt())
	a.WriteBatch([][]byte{make([]byte, 64)}, nil)
	if err := waitResult(t, ch); err != nil {
		t.Fatalf("Wait = %v; want nil (readable)", err)
	}
	// Still readable: Wait returns at once.
	if err := b.Interrupt().Wait(); err != nil {
		t.Fatalf("second Wait = %v", err)
	}
}

func TestInterruptStopUnblocksWait(t *testing.T) {
	_, b := socketpair(t)
	src := b.Interrupt()
	if src != b.Interrupt() {
		t.Error("Interrupt() returned two different sources")
	}
	ch := waitAsync(t, src)
	src.Stop()
	if err := waitResult(t, ch); !errors.Is(err, ndisshim.ErrInterruptStopped) {
		t.Fatalf("Wait after Stop = %v; want ErrInterruptStopped", err)
	}
	src.Stop() // idempotent
	if err := src.Wait(); !errors.Is(err, ndisshim.ErrInterruptStopped) {
		t.Fatalf("Wait after Stop, again = %v", err)
	}
	// The fd was not closed by Stop: the Dev still works.
	if _, err := b.WriteBatch([][]byte{make([]byte, 60)}, nil); err != nil {
		t.Fatalf("WriteBatch after Stop: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	src.Stop() // after Close: no write to a closed eventfd
}

func TestRegisteredInterruptRunsDPCAndStops(t *testing.T) {
	// The shape ndisshim.Interrupt uses: a goroutine looping on Wait, the
	// DPC draining the device, Stop from another goroutine.
	a, b := socketpair(t)
	src := b.Interrupt()
	got := make(chan int, 16)
	done := make(chan error, 1)
	go func() {
		bufs, sizes := makeBufs(8, 2048)
		for {
			if err := src.Wait(); err != nil {
				done <- err
				return
			}
			n, err := b.ReadBatch(bufs, sizes)
			if err != nil {
				done <- err
				return
			}
			got <- n
		}
	}()
	total := 0
	for i := 0; i < 5; i++ {
		a.WriteBatch([][]byte{make([]byte, 100), make([]byte, 100)}, nil)
		for total < 2*(i+1) {
			select {
			case n := <-got:
				total += n
			case <-time.After(5 * time.Second):
				t.Fatalf("DPC saw %d frames, want %d", total, 2*(i+1))
			}
		}
	}
	src.Stop()
	if err := waitResult(t, done); !errors.Is(err, ndisshim.ErrInterruptStopped) {
		t.Fatalf("loop ended with %v", err)
	}
}

func TestPeerClosedIsDeviceGone(t *testing.T) {
	a, b := socketpair(t)
	ch := waitAsync(t, a.Interrupt())
	b.WriteBatch([][]byte{make([]byte, 60), make([]byte, 61)}, nil)
	// Readable first: Wait returns nil for the queued frames.
	if err := waitResult(t, ch); err != nil {
		t.Fatalf("Wait = %v; want nil", err)
	}
	b.Close()
	if err := a.Interrupt().Wait(); !errors.Is(err, ErrDeviceGone) {
		t.Fatalf("Wait after the peer closed = %v; want ErrDeviceGone", err)
	} else {
		t.Logf("Wait: %v", err)
	}
	bufs, sizes := makeBufs(8, 2048)
	n, err := a.ReadBatch(bufs, sizes)
	if n != 2 || !errors.Is(err, ErrDeviceGone) {
		t.Fatalf("ReadBatch = %d, %v; want the 2 queued frames, then ErrDeviceGone", n, err)
	}
	n, err = a.WriteBatch([][]byte{make([]byte, 60)}, nil)
	if n != 0 || !errors.Is(err, ErrDeviceGone) || !errors.Is(err, unix.EPIPE) {
		t.Fatalf("WriteBatch = %d, %v; want 0, ErrDeviceGone (EPIPE)", n, err)
	}
}

func TestCloseUnblocksWaitAndIsIdempotent(t *testing.T) {
	a, _ := socketpair(t)
	ch := waitAsync(t, a.Interrupt())
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := waitResult(t, ch); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Wait during Close = %v; want os.ErrClosed", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	bufs, sizes := makeBufs(1, 64)
	if _, err := a.ReadBatch(bufs, sizes); !errors.Is(err, os.ErrClosed) {
		t.Errorf("ReadBatch after Close = %v", err)
	}
	if _, err := a.WriteBatch(bufs, nil); !errors.Is(err, os.ErrClosed) {
		t.Errorf("WriteBatch after Close = %v", err)
	}
	if err := a.Interrupt().Wait(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Wait after Close = %v", err)
	}
}

// WriteBatch, Wait and ReadBatch allocate nothing, with either read path;
// the reads have room for more frames than are queued, so the read that
// finds the queue empty is in the loop too.
func TestBatchPathDoesNotAllocate(t *testing.T) {
	readPaths(t, func(t *testing.T, a, b *Dev) {
		out := make([][]byte, 8)
		for i := range out {
			out[i] = make([]byte, 1514)
		}
		in, sizes := makeBufs(64, 2048)
		src := b.Interrupt()
		allocs := testing.AllocsPerRun(200, func() {
			if n, err := a.WriteBatch(out, nil); n != 8 || err != nil {
				t.Fatalf("WriteBatch = %d, %v", n, err)
			}
			if err := src.Wait(); err != nil {
				t.Fatal(err)
			}
			if n, err := b.ReadBatch(in, sizes); n != 8 || err != nil {
				t.Fatalf("ReadBatch = %d, %v", n, err)
			}
		})
		if allocs != 0 {
			t.Errorf("WriteBatch+Wait+ReadBatch: %v allocs per batch, want 0", allocs)
		}
	})
}

func BenchmarkSocketpairBatch(b *testing.B) {
	for _, size := range []int{64, 1514} {
		b.Run(map[int]string{64: "64B", 1514: "1514B"}[size], func(b *testing.B) {
			x, y, err := Socketpair()
			if err != nil {
				b.Fatal(err)
			}
			defer x.Close()
			defer y.Close()
			out := make([][]byte, 32)
			for i := range out {
				out[i] = make([]byte, size)
			}
			in, sizes := makeBufs(32, 2048)
			b.SetBytes(int64(32 * size))
			b.ReportAllocs()
			for b.Loop() {
				x.WriteBatch(out, nil)
				y.ReadBatch(in, sizes)
			}
		})
	}
}

func TestRandomMAC(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		m := RandomMAC()
		if len(m) != 6 || m[0]&0x01 != 0 || m[0]&0x02 == 0 {
			t.Fatalf("RandomMAC() = %v: want 6 bytes, unicast, locally administered", m)
		}
		seen[m.String()] = true
	}
	if len(seen) < 95 {
		t.Errorf("only %d distinct MACs in 100", len(seen))
	}
}

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"", true}, {"tm0", true}, {"tmhw0", true}, {"abcdefghijklmno", true},
		{"abcdefghijklmnop", false}, {".", false}, {"..", false}, {"a/b", false},
		{"a:b", false}, {"a b", false},
	} {
		if err := validIfName(tc.name); (err == nil) != tc.ok {
			t.Errorf("validIfName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	if n := RandomName("tdt"); len(n) != 9 || n[:3] != "tdt" || validIfName(n) != nil {
		t.Errorf("RandomName(tdt) = %q", n)
	}
	for _, bad := range []string{"", ".", "..", "a/b"} {
		if err := CreateNetns(bad); err == nil {
			t.Errorf("CreateNetns(%q): no error", bad)
		}
		if NetnsExists(bad) {
			t.Errorf("NetnsExists(%q) = true", bad)
		}
	}
}

// fakeTB records Skip and Fatal instead of ending the test.
type fakeTB struct {
	testing.TB
	skipped, failed string
}

func (f *fakeTB) Helper()           {}
func (f *fakeTB) Skip(args ...any)  { f.skipped = args[0].(string) }
func (f *fakeTB) Fatal(args ...any) { f.failed = args[0].(string) }

func TestPrivilegedSkipsOrFailsInCI(t *testing.T) {
	t.Setenv("CI", "")
	f := &fakeTB{TB: t}
	privileged(f, "needs root and /dev/net/tun: running as uid 1000")
	if f.skipped == "" || f.failed != "" {
		t.Errorf("without CI: skipped %q, failed %q; want a skip", f.skipped, f.failed)
	}
	t.Setenv("CI", "true")
	f = &fakeTB{TB: t}
	privileged(f, "needs root and /dev/net/tun: running as uid 1000")
	if f.failed == "" || f.skipped != "" {
		t.Errorf("with CI=true: skipped %q, failed %q; want a failure", f.skipped, f.failed)
	}
	t.Logf("CI message: %s", f.failed)
}

func TestIPNet(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"198.18.0.1/24", "198.18.0.1/24"},
		{"198.19.255.254/15", "198.19.255.254/15"},
		{"::ffff:198.18.0.9/120", "198.18.0.9/24"},
		{"2001:2::1/64", "2001:2::1/64"},
	} {
		if got := ipNet(netip.MustParsePrefix(tc.in)).String(); got != tc.want {
			t.Errorf("ipNet(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// Close while a reader (Wait + ReadBatch), a writer and the peer are busy:
// every loop ends with a closed or device-gone error, and -race is quiet.
func TestCloseRacesWithTraffic(t *testing.T) {
	for round := 0; round < 20; round++ {
		a, b, err := Socketpair()
		if err != nil {
			t.Fatal(err)
		}
		type result struct {
			who string
			err error
		}
		errs := make(chan result, 3)
		go func() { // b's interrupt + DPC
			bufs, sizes := makeBufs(8, 256)
			for {
				if err := b.Interrupt().Wait(); err != nil {
					errs <- result{"b reader", err}
					return
				}
				if _, err := b.ReadBatch(bufs, sizes); err != nil {
					errs <- result{"b reader", err}
					return
				}
			}
		}()
		go func() { // b's sender
			out := [][]byte{make([]byte, 100), make([]byte, 100)}
			for {
				if _, err := b.WriteBatch(out, nil); err != nil {
					errs <- result{"b writer", err}
					return
				}
			}
		}()
		go func() { // the peer
			out := [][]byte{make([]byte, 100)}
			bufs, sizes := makeBufs(8, 256)
			for {
				if _, err := a.WriteBatch(out, nil); err != nil {
					errs <- result{"peer", err}
					return
				}
				if _, err := a.ReadBatch(bufs, sizes); err != nil {
					errs <- result{"peer", err}
					return
				}
			}
		}()
		time.Sleep(time.Duration(round%5) * time.Millisecond)
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			select {
			case r := <-errs:
				want := os.ErrClosed
				if r.who == "peer" {
					want = ErrDeviceGone
				}
				if !errors.Is(r.err, want) {
					t.Fatalf("round %d: %s ended with %v; want %v", round, r.who, r.err, want)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("round %d: a loop did not end", round)
			}
		}
		a.Close()
	}
}

// readPaths runs f once with each read path: io_uring (batched) and
// read(2), on socketpairs opened for it.
func readPaths(t *testing.T, f func(t *testing.T, a, b *Dev)) {
	for _, ring := range []bool{true, false} {
		name := map[bool]string{true: "io_uring", false: "read"}[ring]
		t.Run(name, func(t *testing.T) {
			SetIOURing(ring)
			defer SetIOURing(true)
			a, b := socketpair(t)
			if ring {
				requireRing(t, b)
			} else if got := b.ReadPath(); got == "io_uring" {
				t.Fatalf("ReadPath = %q with io_uring off", got)
			}
			f(t, a, b)
		})
	}
}

// Both read paths return the same frames in the same order, in batches
// larger than one ring submission, stop at an empty queue, and report a
// closed peer after the frames queued before it.
func TestReadPathsAgree(t *testing.T) {
	readPaths(t, func(t *testing.T, a, b *Dev) {
		const total = 150 // more than uringEntries: the ring reads in chunks
		frames := make([][]byte, total)
		for i := range frames {
			frames[i] = bytes.Repeat([]byte{byte(i)}, 14+i%97)
		}
		if n, err := a.WriteBatch(frames, nil); n != total || err != nil {
			t.Fatalf("WriteBatch = %d, %v", n, err)
		}
		bufs, sizes := makeBufs(100, 2048)
		var got [][]byte
		for len(got) < total {
			n, err := b.ReadBatch(bufs, sizes)
			if err != nil || n == 0 {
				t.Fatalf("ReadBatch after %d frames = %d, %v", len(got), n, err)
			}
			for i := range n {
				got = append(got, bytes.Clone(bufs[i][:sizes[i]]))
			}
		}
		for i := range frames {
			if !bytes.Equal(got[i], frames[i]) {
				t.Fatalf("frame %d: %d bytes of %d, want %d bytes of %d", i, len(got[i]), got[i][0], len(frames[i]), i)
			}
		}
		if n, err := b.ReadBatch(bufs, sizes); n != 0 || err != nil {
			t.Fatalf("ReadBatch on empty = %d, %v; want 0, nil", n, err)
		}
		// Buffers of different lengths: read(2) one by one, same result.
		mixed := [][]byte{make([]byte, 64), make([]byte, 2048), make([]byte, 128)}
		a.WriteBatch([][]byte{frames[1], frames[90], frames[2]}, nil)
		if n, err := b.ReadBatch(mixed, sizes); n != 3 || err != nil || sizes[1] != len(frames[90]) {
			t.Fatalf("ReadBatch into mixed buffers = %d, %v, sizes %v", n, err, sizes[:3])
		}
		a.WriteBatch(frames[:2], nil)
		a.Close()
		n, err := b.ReadBatch(bufs, sizes)
		if n != 2 || !errors.Is(err, ErrDeviceGone) {
			t.Fatalf("ReadBatch after the peer closed = %d, %v; want 2 frames, then ErrDeviceGone", n, err)
		}
	})
}

// A frame longer than its buffer is dropped and counted (RxOversize), on
// both read paths; no size exceeds its buffer; the frames around it, one
// that fills its buffer exactly among them, come through intact, and the
// batch goes on after a drop. A SOCK_SEQPACKET read truncates silently,
// as a TAP's does (TestReadBatchDropsFrameLongerThanBuffer is the TAP).
func TestReadBatchDropsFrameLongerThanBufferSocketpair(t *testing.T) {
	readPaths(t, func(t *testing.T, a, b *Dev) {
		const bufSize = 1600
		var frames, want [][]byte
		for i, size := range []int{100, 3000, 200, 300, 3000, 400, bufSize, bufSize + 1, 500} {
			f := bytes.Repeat([]byte{byte(i)}, size)
			frames = append(frames, f)
			if size <= bufSize {
				want = append(want, f)
			}
		}
		if n, err := a.WriteBatch(frames, nil); n != len(frames) || err != nil {
			t.Fatalf("WriteBatch = %d, %v", n, err)
		}
		var got [][]byte
		readAll(t, b, bufSize, func(f []byte) { got = append(got, bytes.Clone(f)) })
		if len(got) != len(want) {
			t.Fatalf("read %d frames, want the %d that fit", len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Errorf("frame %d: %d bytes of %d, want %d bytes of %d", i, len(got[i]), got[i][0], len(want[i]), want[i][0])
			}
		}
		if c := b.Counters(); c.RxOversize != 3 {
			t.Errorf("Counters().RxOversize = %d, want 3", c.RxOversize)
		}
	})
}

// A short submit: io_uring_enter takes fewer SQEs than it is given (it
// could not allocate a request or, without IORING_SETUP_SUBMIT_ALL, an SQE
// failed its prep) and returns at once, without waiting, leaving the rest
// in the SQ. The seam (uring.enter) makes the real kernel take only two of
// the four ring reads of a batch. readBatch must submit the rest before it
// reaps (all frames read, in order), or, when the kernel then refuses
// (EAGAIN, or ENOMEM for the first call: it could not allocate a request),
// take them back, and ReadBatch reads those frames with read(2) instead,
// with no error to the reader (the reader used to get the EAGAIN as a read
// error, and the frames waited for the next wake-up). A call that takes
// none and names no error is such a refusal too, not an empty queue (the
// frames not taken used to wait for the next wake-up). Either way no SQE
// outlives the call, so the next batch never runs a read into the
// previous batch's buffers or takes a completion with a stale index.
func TestURingShortSubmit(t *testing.T) {
	for _, tc := range []struct {
		name   string
		taken  uint32     // how many SQEs the first call takes (0: it takes none, answering refuse)
		stall  bool       // after those, a call takes none, answering refuse (else the rest is taken)
		refuse unix.Errno // the errno of a call that takes none (0: none)
	}{
		{"rest submitted", 2, false, 0},
		{"rest refused", 2, true, unix.EAGAIN},
		{"all refused", 0, true, unix.ENOMEM},
		{"rest not taken, no error", 2, true, 0},
		{"none taken, no error", 0, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := socketpair(t)
			requireRing(t, b)
			r := b.ring
			real := r.enter
			calls := 0
			r.enter = func(toSubmit, minComplete uint32) (int, unix.Errno) {
				calls++
				switch {
				case calls == 1 && tc.taken == 0:
					return 0, tc.refuse // the kernel could not allocate a request: takes none
				case calls == 1 && toSubmit > tc.taken:
					return real(tc.taken, tc.taken) // takes two SQEs and waits for their two completions
				case calls == 2 && tc.stall:
					return 0, tc.refuse // and then takes none
				}
				return real(toSubmit, minComplete)
			}
			frame := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 60+i) }
			write := func(from, to int) {
				t.Helper()
				for i := from; i < to; i++ {
					if n, err := a.WriteBatch([][]byte{frame(i)}, nil); n != 1 || err != nil {
						t.Fatalf("WriteBatch frame %d = %d, %v", i, n, err)
					}
				}
			}
			var got []int // frame numbers read, in order
			read := func(bufs [][]byte, sizes []int) {
				t.Helper()
				n, err := b.ReadBatch(bufs, sizes)
				if err != nil {
					t.Fatalf("ReadBatch = %d, %v; want no error (a refused submit is read with read(2))", n, err)
				}
				for i := range n {
					f := bufs[i][:sizes[i]]
					if len(f) == 0 || !bytes.Equal(f, frame(int(f[0]))) {
						t.Fatalf("ReadBatch frame %d: %d bytes, not one written", i, len(f))
					}
					got = append(got, int(f[0]))
				}
				if h, tl := atomic.LoadUint32(r.sqHead), atomic.LoadUint32(r.sqTail); h != tl {
					t.Fatalf("after ReadBatch the SQ still holds %d SQEs (head %d, tail %d)", tl-h, h, tl)
				}
			}
			// Two frames by read(2), then the ring's four reads, two of
			// them taken (or none); what the ring did not take is read
			// with read(2).
			write(0, 6)
			first, sizes := makeBufs(6, 2048)
			read(first, sizes)
			if tc.taken > 0 && calls < 2 || calls < 1 {
				t.Fatalf("%d io_uring_enter calls: the seam did not shorten a submit", calls)
			}
			if len(got) != 6 {
				t.Fatalf("first ReadBatch read frames %v, want all six", got)
			}
			// The first batch's buffers are the caller's again: mark them.
			for _, buf := range first {
				for i := range buf {
					buf[i] = 0xee
				}
			}
			write(6, 12)
			second, sizes := makeBufs(8, 2048)
			read(second, sizes)
			read(second, sizes) // the rest, if any; then empty
			if n, err := b.ReadBatch(second, sizes); n != 0 || err != nil {
				t.Fatalf("ReadBatch on empty = %d, %v", n, err)
			}
			want := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("frames read %v, want %v", got, want)
			}
			for j, buf := range first {
				if bytes.Count(buf, []byte{0xee}) != len(buf) {
					t.Errorf("the first batch's buffer %d was written after that batch returned", j)
				}
			}
		})
	}
}

// BenchmarkReadBatch: a batch of 64-byte frames read with one system call
// per frame (read) against one per batch (io_uring), per batch size; the
// frames are written outside the timer.
func BenchmarkReadBatch(b *testing.B) {
	for _, ring := range []bool{false, true} {
		for _, batch := range []int{1, 8, 64} {
			name := fmt.Sprintf("%s/batch=%d", map[bool]string{true: "io_uring", false: "read"}[ring], batch)
			b.Run(name, func(b *testing.B) {
				SetIOURing(ring)
				defer SetIOURing(true)
				x, y, err := Socketpair()
				if err != nil {
					b.Fatal(err)
				}
				defer x.Close()
				defer y.Close()
				if ring && y.ReadPath() != "io_uring" {
					b.Skip(y.ReadPath())
				}
				out, _ := makeBufs(batch, 64)
				in, sizes := makeBufs(batch+1, 2048) // one more: the read that finds the queue empty
				b.ReportAllocs()
				loops := 0
				for b.Loop() {
					b.StopTimer()
					x.WriteBatch(out, nil)
					b.StartTimer()
					if n, _ := y.ReadBatch(in, sizes); n != batch {
						b.Fatalf("read %d frames, want %d", n, batch)
					}
					loops++
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(loops*batch), "ns/frame")
			})
		}
	}
}

// readAll reads d with batches of 8 bufSize-byte buffers until it has
// nothing more, failing on an error or a size larger than its buffer, and
// calls each with every frame read (valid only during the call).
func readAll(t *testing.T, d *Dev, bufSize int, each func(frame []byte)) {
	t.Helper()
	bufs, sizes := makeBufs(8, bufSize)
	for read := 0; ; {
		n, err := d.ReadBatch(bufs, sizes)
		if err != nil {
			t.Fatalf("ReadBatch after %d frames: %v", read, err)
		}
		if n == 0 {
			return
		}
		for i := range n {
			if sizes[i] > len(bufs[i]) {
				t.Fatalf("sizes[%d] = %d for a %d-byte buffer", i, sizes[i], len(bufs[i]))
			}
			each(bufs[i][:sizes[i]])
		}
		read += n
	}
}

// A poll(2) that fails for want of memory is tried again, not taken for a
// dead device: the interrupt goroutine used to end on it, and with it the
// receive path, while the adapter stayed Running. A Close during such a
// shortage still ends the wait.
func TestInterruptWaitRetriesENOMEM(t *testing.T) {
	a, b := socketpair(t)
	fails := 0
	poll = func(fds []unix.PollFd, timeout int) (int, error) {
		if fails < 2 {
			fails++
			return 0, unix.ENOMEM
		}
		return unix.Poll(fds, timeout)
	}
	defer func() { poll = unix.Poll }()
	if n, err := a.WriteBatch([][]byte{make([]byte, 60)}, nil); n != 1 || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	if err := b.Interrupt().Wait(); err != nil || fails != 2 {
		t.Fatalf("Wait after two ENOMEM polls = %v (%d failed polls); want nil: readable", err, fails)
	}
	poll = func([]unix.PollFd, int) (int, error) { return 0, unix.ENOMEM } // for good
	done := make(chan error, 1)
	go func() { done <- b.Interrupt().Wait() }()
	time.Sleep(20 * time.Millisecond)
	go b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("Wait during a shortage when the Dev closed = %v, want os.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close during a poll shortage: Wait did not return in 5 s")
	}
}
