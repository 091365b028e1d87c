package sniffer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/tapminiport/tapminiport/adapter"
	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/tapdev"
)

// rig is a wrapped socketpair end: dev (the wrapped inner) is the
// miniport's hardware, peer is the wire.
type rig struct {
	w     *Writer
	path  string
	dev   adapter.Device
	inner *tapdev.Dev
	peer  *tapdev.Dev
}

func newRig(t *testing.T, maxBytes int64) *rig {
	t.Helper()
	a, b, err := tapdev.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "capture.pcap")
	w, err := Create(path, maxBytes)
	if err != nil {
		a.Close()
		b.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		w.Close()
		a.Close()
		b.Close()
	})
	return &rig{w: w, path: path, dev: w.Wrap(a), inner: a, peer: b}
}

// frame makes an Ethernet frame of size bytes (at least 14) whose payload
// is tagged with tag.
func frame(tag string, size int) []byte {
	f := make([]byte, size)
	copy(f[0:6], []byte{0x02, 0, 0, 0, 0, 0x02})  // dst
	copy(f[6:12], []byte{0x02, 0, 0, 0, 0, 0x01}) // src
	f[12], f[13] = 0x88, 0xb5                     // local experimental EtherType
	copy(f[14:], tag)
	for i := 14 + len(tag); i < size; i++ {
		f[i] = byte(i)
	}
	return f
}

func bufs(n, size int) ([][]byte, []int) {
	b := make([][]byte, n)
	for i := range b {
		b[i] = make([]byte, size)
	}
	return b, make([]int, n)
}

// readAll reads dev until it has want frames (the peer wrote them before).
func readAll(t *testing.T, dev adapter.Device, want int) [][]byte {
	t.Helper()
	b, sizes := bufs(want+1, 70000)
	n, err := dev.ReadBatch(b, sizes)
	if err != nil || n != want {
		t.Fatalf("%s: ReadBatch = %d, %v; want %d frames", dev.Name(), n, err, want)
	}
	out := make([][]byte, n)
	for i := range out {
		out[i] = b[i][:sizes[i]]
	}
	return out
}

func writeAll(t *testing.T, dev adapter.Device, frames ...[]byte) {
	t.Helper()
	if n, err := dev.WriteBatch(frames, nil); err != nil || n != len(frames) {
		t.Fatalf("%s: WriteBatch = %d, %v; want %d", dev.Name(), n, err, len(frames))
	}
}

type record struct {
	ci   gopacket.CaptureInfo
	data []byte
}

// readBack parses the pcap file: Ethernet, snaplen 65535, whole records
// only (a clean io.EOF at the end).
func readBack(t *testing.T, path string) []record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if r.LinkType() != layers.LinkTypeEthernet || r.Snaplen() != DefaultSnaplen {
		t.Fatalf("%s: link type %v snaplen %d; want Ethernet, %d", path, r.LinkType(), r.Snaplen(), DefaultSnaplen)
	}
	var recs []record
	for {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			return recs
		}
		if err != nil {
			t.Fatalf("%s: record %d: %v", path, len(recs), err)
		}
		recs = append(recs, record{ci, data})
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func checkStats(t *testing.T, w *Writer, frames, bytes, skipped int64) {
	t.Helper()
	if f, b, s := w.Stats(); f != frames || b != bytes || s != skipped {
		t.Errorf("Stats() = %d frames, %d bytes, %d skipped; want %d, %d, %d", f, b, s, frames, bytes, skipped)
	}
}

func TestRecordsBothDirectionsInOrder(t *testing.T) {
	r := newRig(t, 0)
	start := time.Now()
	rx1, rx2, rx3 := frame("rx1", 60), frame("rx2", 1514), frame("rx3", 99)
	tx1, tx2, tx3 := frame("tx1", 64), frame("tx2", 9018), frame("tx3", 14)

	writeAll(t, r.peer, rx1, rx2) // wire → host: one batch of two
	got := readAll(t, r.dev, 2)
	if !bytes.Equal(got[0], rx1) || !bytes.Equal(got[1], rx2) {
		t.Fatal("wrapped ReadBatch changed the frames")
	}
	writeAll(t, r.dev, tx1, tx2, tx3) // host → wire: one batch of three
	got = readAll(t, r.peer, 3)
	for i, want := range [][]byte{tx1, tx2, tx3} {
		if !bytes.Equal(got[i], want) {
			t.Fatalf("peer got frame %d wrong", i)
		}
	}
	writeAll(t, r.peer, rx3)
	readAll(t, r.dev, 1)
	if err := r.w.Close(); err != nil {
		t.Fatal(err)
	}
	end := time.Now()

	want := [][]byte{rx1, rx2, tx1, tx2, tx3, rx3}
	batch := []int{0, 0, 1, 1, 1, 2}
	recs := readBack(t, r.path)
	if len(recs) != len(want) {
		t.Fatalf("file holds %d records; want %d", len(recs), len(want))
	}
	var size int64 = FileHeaderLen
	for i, rec := range recs {
		if !bytes.Equal(rec.data, want[i]) || rec.ci.CaptureLength != len(want[i]) || rec.ci.Length != len(want[i]) {
			t.Errorf("record %d: %d/%d bytes %q...; want %d bytes %q...", i, rec.ci.CaptureLength, rec.ci.Length, rec.data[14:17], len(want[i]), want[i][14:17])
		}
		ts := rec.ci.Timestamp
		if ts.Before(start.Truncate(time.Microsecond)) || ts.After(end) {
			t.Errorf("record %d: timestamp %v outside the test's run %v..%v", i, ts, start, end)
		}
		if i > 0 {
			prev := recs[i-1].ci.Timestamp
			if ts.Before(prev) {
				t.Errorf("record %d: timestamp %v before the previous one %v", i, ts, prev)
			}
			if batch[i] == batch[i-1] && !ts.Equal(prev) {
				t.Errorf("record %d: timestamp %v differs from %v in the same batch", i, ts, prev)
			}
		}
		size += RecordHeaderLen + int64(len(want[i]))
	}
	if fs := fileSize(t, r.path); fs != size {
		t.Errorf("file is %d bytes; want %d", fs, size)
	}
	checkStats(t, r.w, 6, size, 0)
}

func TestFlushedAtEveryBatch(t *testing.T) {
	r := newRig(t, 0)
	if recs := readBack(t, r.path); len(recs) != 0 {
		t.Fatalf("new file holds %d records", len(recs))
	}
	writeAll(t, r.dev, frame("a", 60), frame("b", 60))
	readAll(t, r.peer, 2)
	if recs := readBack(t, r.path); len(recs) != 2 { // before Close
		t.Fatalf("after a batch, before Close: file holds %d records; want 2", len(recs))
	}
	writeAll(t, r.peer, frame("c", 60))
	readAll(t, r.dev, 1)
	if recs := readBack(t, r.path); len(recs) != 3 {
		t.Fatalf("after the second batch: file holds %d records; want 3", len(recs))
	}
}

func TestSnaplenTruncatesLongFrames(t *testing.T) {
	r := newRig(t, 0)
	big := frame("big", 70000) // an LSO-sized frame: longer than snaplen
	writeAll(t, r.dev, big)
	if got := readAll(t, r.peer, 1); !bytes.Equal(got[0], big) {
		t.Fatal("the long frame was changed on the wire")
	}
	recs := readBack(t, r.path)
	if len(recs) != 1 {
		t.Fatalf("file holds %d records; want 1", len(recs))
	}
	if ci := recs[0].ci; ci.CaptureLength != DefaultSnaplen || ci.Length != len(big) || !bytes.Equal(recs[0].data, big[:DefaultSnaplen]) {
		t.Errorf("record: captured %d of %d bytes; want %d of %d", ci.CaptureLength, ci.Length, DefaultSnaplen, len(big))
	}
	checkStats(t, r.w, 1, FileHeaderLen+RecordHeaderLen+DefaultSnaplen, 0)
}

func TestSizeCap(t *testing.T) {
	const rec = RecordHeaderLen + 100
	maxBytes := int64(FileHeaderLen + 2*rec + 50) // room for two records, and slack for a small one
	r := newRig(t, maxBytes)
	frames := [][]byte{frame("f0", 100), frame("f1", 100), frame("f2", 100), frame("f3", 100)}
	writeAll(t, r.dev, frames...) // the device still writes all four
	readAll(t, r.peer, 4)
	writeAll(t, r.peer, frame("small", 20)) // would fit the slack: the cap is sticky
	readAll(t, r.dev, 1)
	checkStats(t, r.w, 2, FileHeaderLen+2*rec, 3)
	if err := r.w.Close(); err != nil {
		t.Fatal(err)
	}
	if fs := fileSize(t, r.path); fs != FileHeaderLen+2*rec || fs > maxBytes {
		t.Errorf("file is %d bytes; want %d (cap %d)", fs, FileHeaderLen+2*rec, maxBytes)
	}
	recs := readBack(t, r.path) // whole records, then a clean EOF
	if len(recs) != 2 || !bytes.Equal(recs[0].data, frames[0]) || !bytes.Equal(recs[1].data, frames[1]) {
		t.Errorf("file holds %d records; want the first two frames", len(recs))
	}
}

func TestCapOfHeaderOnly(t *testing.T) {
	r := newRig(t, FileHeaderLen)
	writeAll(t, r.dev, frame("x", 60))
	readAll(t, r.peer, 1)
	checkStats(t, r.w, 0, FileHeaderLen, 1)
	if recs := readBack(t, r.path); len(recs) != 0 {
		t.Errorf("file holds %d records; want none", len(recs))
	}
}

func TestCreateErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name     string
		path     string
		maxBytes int64
		want     string
	}{
		{"negative cap", filepath.Join(dir, "a.pcap"), -1, "size cap -1 bytes"},
		{"cap below the header", filepath.Join(dir, "b.pcap"), FileHeaderLen - 1, "size cap 23 bytes"},
		{"missing directory", filepath.Join(dir, "no", "such", "c.pcap"), 0, "no such file or directory"},
		{"a directory", dir, 0, "is a directory"},
		{"a full disk", "/dev/full", 0, "no space left on device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := os.Stat(tc.path); tc.path == "/dev/full" && err != nil {
				t.Skip(err)
			}
			w, err := Create(tc.path, tc.maxBytes)
			if err == nil {
				w.Close()
				t.Fatalf("Create(%q, %d) succeeded", tc.path, tc.maxBytes)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.path) || !strings.Contains(msg, tc.want) {
				t.Errorf("error %q should name the path %s and say %q", msg, tc.path, tc.want)
			}
		})
	}
}

func TestCreateTruncates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.pcap")
	if err := os.WriteFile(path, bytes.Repeat([]byte("old"), 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := Create(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if fs := fileSize(t, path); fs != FileHeaderLen {
		t.Errorf("file is %d bytes; want just the %d-byte header", fs, FileHeaderLen)
	}
	if recs := readBack(t, path); len(recs) != 0 {
		t.Errorf("file holds %d records", len(recs))
	}
}

func TestCloseIdempotentAndRecordingAfterIsNoOp(t *testing.T) {
	r := newRig(t, 0)
	writeAll(t, r.dev, frame("before", 60))
	readAll(t, r.peer, 1)
	for i := 0; i < 3; i++ {
		if err := r.w.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	size := fileSize(t, r.path)
	// The wrapped device goes on working; nothing is recorded or counted.
	writeAll(t, r.dev, frame("after", 60))
	readAll(t, r.peer, 1)
	writeAll(t, r.peer, frame("after", 60))
	readAll(t, r.dev, 1)
	checkStats(t, r.w, 1, FileHeaderLen+RecordHeaderLen+60, 0)
	if fs := fileSize(t, r.path); fs != size {
		t.Errorf("file grew after Close: %d → %d bytes", size, fs)
	}
	if err := r.w.Err(); err != nil {
		t.Errorf("Err() = %v", err)
	}
}

// fakeDev returns canned results, to check that the wrapper returns
// exactly what the inner device returned.
type fakeDev struct {
	frames   [][]byte // what ReadBatch fills, in order
	readErr  error
	wrote    []tapdev.TxResult // what WriteBatch says of each frame; the rest TxUnwritten
	writeErr error
	closeErr error
}

func (f *fakeDev) Name() string                        { return "fake0" }
func (f *fakeDev) Interrupt() ndisshim.InterruptSource { return nil }
func (f *fakeDev) Close() error                        { return f.closeErr }
func (f *fakeDev) ReadBatch(bufs [][]byte, sizes []int) (int, error) {
	n := 0
	for ; n < len(f.frames) && n < len(bufs); n++ {
		sizes[n] = copy(bufs[n], f.frames[n])
	}
	return n, f.readErr
}
func (f *fakeDev) WriteBatch(bufs [][]byte, res []tapdev.TxResult) (int, error) {
	n := 0
	for i := range bufs {
		r := tapdev.TxUnwritten
		if i < len(f.wrote) {
			r = f.wrote[i]
		}
		if r == tapdev.TxWritten {
			n++
		}
		if res != nil {
			res[i] = r
		}
	}
	return n, f.writeErr
}

func TestInnerResultsPassThroughUnchanged(t *testing.T) {
	errRead := fmt.Errorf("fake0: read: %w", tapdev.ErrDeviceGone)
	errWrite := errors.New("fake0: write: boom")
	errClose := errors.New("fake0: close: boom")
	f0, f1, f2 := frame("f0", 60), frame("f1", 61), frame("f2", 62)
	for _, tc := range []struct {
		name   string
		fake   fakeDev
		read   bool
		send   [][]byte
		wantN  int
		want   error
		logged [][]byte
	}{
		{"read: frames then an error", fakeDev{frames: [][]byte{f0, f1}, readErr: errRead}, true, nil, 2, errRead, [][]byte{f0, f1}},
		{"read: an error alone", fakeDev{readErr: errRead}, true, nil, 0, errRead, nil},
		{"read: nothing to read", fakeDev{}, true, nil, 0, nil, nil},
		{"write: an error after one frame", fakeDev{wrote: []tapdev.TxResult{tapdev.TxWritten}, writeErr: errWrite}, false, [][]byte{f0, f1, f2}, 1, errWrite, [][]byte{f0}},
		{"write: an error at once", fakeDev{writeErr: errWrite}, false, [][]byte{f0, f1}, 0, errWrite, nil},
		{"write: empty buffers are never written", fakeDev{wrote: []tapdev.TxResult{tapdev.TxRefused, tapdev.TxWritten, tapdev.TxRefused, tapdev.TxWritten}}, false, [][]byte{nil, f0, {}, f1}, 2, nil, [][]byte{f0, f1}},
		// The frames written are recorded wherever the misses are (the
		// seam once said only how many, and the first n were recorded).
		{"write: drops and refusals mid-batch are not recorded", fakeDev{wrote: []tapdev.TxResult{tapdev.TxNoRoom, tapdev.TxWritten, tapdev.TxRefused, tapdev.TxWritten}}, false, [][]byte{f0, f1, f2, f0}, 2, nil, [][]byte{f1, f0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.pcap")
			w, err := Create(path, 0)
			if err != nil {
				t.Fatal(err)
			}
			fake := tc.fake
			fake.closeErr = errClose
			dev := w.Wrap(&fake)
			var n int
			if tc.read {
				b, sizes := bufs(4, 100)
				n, err = dev.ReadBatch(b, sizes)
			} else {
				// The caller's results are the inner device's.
				res := make([]tapdev.TxResult, len(tc.send))
				for i := range res {
					res[i] = 99 // not a result: each must be set
				}
				n, err = dev.WriteBatch(tc.send, res)
				for i, r := range res {
					want := tapdev.TxUnwritten
					if i < len(tc.fake.wrote) {
						want = tc.fake.wrote[i]
					}
					if r != want {
						t.Errorf("res[%d] = %v; want the device's %v", i, r, want)
					}
				}
			}
			if n != tc.wantN || err != tc.want { // the very same error value
				t.Errorf("got %d, %v; want %d, %v", n, err, tc.wantN, tc.want)
			}
			if err := dev.Close(); err != errClose {
				t.Errorf("Close() = %v; want the inner device's %v", err, errClose)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			recs := readBack(t, path)
			if len(recs) != len(tc.logged) {
				t.Fatalf("file holds %d records; want %d", len(recs), len(tc.logged))
			}
			for i := range recs {
				if !bytes.Equal(recs[i].data, tc.logged[i]) {
					t.Errorf("record %d is %q...; want %q...", i, recs[i].data[14:16], tc.logged[i][14:16])
				}
			}
		})
	}
}

func TestPeerGoneErrorPassesThrough(t *testing.T) {
	r := newRig(t, 0)
	writeAll(t, r.peer, frame("last", 60))
	r.peer.Close() // surprise removal
	b, sizes := bufs(4, 100)
	n, err := r.dev.ReadBatch(b, sizes)
	if n != 1 || !errors.Is(err, tapdev.ErrDeviceGone) {
		t.Fatalf("ReadBatch = %d, %v; want 1 frame, then ErrDeviceGone", n, err)
	}
	if _, err2 := r.inner.ReadBatch(b, sizes); err2.Error() != err.Error() {
		t.Errorf("wrapped error %q differs from the device's %q", err, err2)
	}
	r.dev.Close()
	n, err = r.dev.WriteBatch([][]byte{frame("x", 60)}, nil)
	if n != 0 || !errors.Is(err, os.ErrClosed) {
		t.Errorf("WriteBatch on a closed device = %d, %v; want 0, os.ErrClosed", n, err)
	}
	checkStats(t, r.w, 1, FileHeaderLen+RecordHeaderLen+60, 0)
}

// A frame the device refuses in the middle of a batch (too big for the
// socket: EMSGSIZE; empty) is not recorded, and the frames written after
// it are: the file holds what the wire got. (The seam once said only how
// many were written, and the first n non-empty frames were recorded: the
// refused frame instead of the last one written.)
func TestRefusedFramesAreNotRecorded(t *testing.T) {
	r := newRig(t, 0)
	f0, f1 := frame("f0", 60), frame("f1", 61)
	n, err := r.dev.WriteBatch([][]byte{f0, frame("hg", 8<<20), {}, f1}, nil)
	if n != 2 || err != nil {
		t.Fatalf("WriteBatch(frame, 8 MiB, empty, frame) = %d, %v; want 2, nil", n, err)
	}
	got := readAll(t, r.peer, 2)
	recs := readBack(t, r.path)
	if len(recs) != 2 {
		t.Fatalf("file holds %d records; the device wrote 2", len(recs))
	}
	for i, want := range [][]byte{f0, f1} {
		if !bytes.Equal(recs[i].data, want) || !bytes.Equal(got[i], want) {
			t.Errorf("frame %d: recorded %d bytes, the wire got %d; want both the %d written", i, len(recs[i].data), len(got[i]), len(want))
		}
	}
}

// A full peer drops frames (EAGAIN): only what was written is recorded.
func TestDroppedFramesAreNotRecorded(t *testing.T) {
	r := newRig(t, 0)
	frames := make([][]byte, 2000)
	for i := range frames {
		frames[i] = frame(fmt.Sprintf("%04d", i), 1000)
	}
	n, err := r.dev.WriteBatch(frames, nil)
	if err != nil || n == 0 || n == len(frames) {
		t.Fatalf("WriteBatch = %d, %v; want some of %d written and the rest dropped", n, err, len(frames))
	}
	if c := r.inner.Counters(); c.TxDropped != uint64(len(frames)-n) {
		t.Fatalf("device dropped %d; want %d", c.TxDropped, len(frames)-n)
	}
	got := readAll(t, r.peer, n)
	recs := readBack(t, r.path)
	if len(recs) != n {
		t.Fatalf("file holds %d records; the device wrote %d", len(recs), n)
	}
	for i := range recs {
		if !bytes.Equal(recs[i].data, got[i]) {
			t.Fatalf("record %d is %q; the wire got %q", i, recs[i].data[14:18], got[i][14:18])
		}
	}
	checkStats(t, r.w, int64(n), FileHeaderLen+int64(n)*(RecordHeaderLen+1000), 0)
}

func TestWrapPassesNameAndInterrupt(t *testing.T) {
	r := newRig(t, 0)
	if r.dev.Name() != r.inner.Name() {
		t.Errorf("Name() = %q; want %q", r.dev.Name(), r.inner.Name())
	}
	if r.dev.Interrupt() != r.inner.Interrupt() {
		t.Error("Interrupt() is not the inner device's")
	}
	if Unwrap(r.dev) != adapter.Device(r.inner) {
		t.Error("Unwrap does not give the inner device")
	}
	if Unwrap(r.inner) != nil {
		t.Error("Unwrap of an unwrapped device is not nil")
	}
}

// Both directions at once from their own goroutines, Stats polled, and
// Close in the middle: run under -race.
func TestConcurrentBatchesAndClose(t *testing.T) {
	for _, closeEarly := range []bool{false, true} {
		t.Run(fmt.Sprintf("close early %v", closeEarly), func(t *testing.T) {
			r := newRig(t, 0)
			const rounds, batch = 200, 4
			var wg sync.WaitGroup
			var sent, received int64
			var txDone sync.WaitGroup
			txDone.Add(1)
			wg.Add(4)
			go func() { // host → wire
				defer wg.Done()
				defer txDone.Done()
				out := make([][]byte, batch)
				for i := 0; i < rounds; i++ {
					for j := range out {
						out[j] = frame(fmt.Sprintf("tx%d.%d", i, j), 80)
					}
					n, err := r.dev.WriteBatch(out, nil)
					if err != nil {
						t.Error(err)
						return
					}
					sent += int64(n)
				}
			}()
			go func() { // wire → host
				defer wg.Done()
				in, sizes := bufs(batch, 100)
				for i := 0; i < rounds; i++ {
					out := make([][]byte, batch)
					for j := range out {
						out[j] = frame(fmt.Sprintf("rx%d.%d", i, j), 90)
					}
					if n, err := r.peer.WriteBatch(out, nil); err != nil || n != batch {
						t.Errorf("peer WriteBatch = %d, %v", n, err)
						return
					}
					for got := 0; got < batch; {
						n, err := r.dev.ReadBatch(in, sizes)
						if err != nil {
							t.Error(err)
							return
						}
						got += n
						received += int64(n)
						if n == 0 {
							runtime.Gosched()
						}
					}
				}
			}()
			go func() { // the wire drains what the host sent
				defer wg.Done()
				in, sizes := bufs(16, 100)
				done := make(chan struct{})
				go func() { txDone.Wait(); close(done) }()
				for {
					n, err := r.peer.ReadBatch(in, sizes)
					if err != nil {
						t.Error(err)
						return
					}
					if n == 0 {
						select {
						case <-done:
							if n, _ := r.peer.ReadBatch(in, sizes); n == 0 {
								return
							}
						default:
							runtime.Gosched()
						}
					}
				}
			}()
			go func() { // an operator polling the counters
				defer wg.Done()
				for i := 0; i < 100; i++ {
					r.w.Stats()
					if closeEarly && i == 10 {
						if err := r.w.Close(); err != nil {
							t.Error(err)
						}
					}
					runtime.Gosched()
				}
			}()
			wg.Wait()
			if err := r.w.Close(); err != nil {
				t.Fatal(err)
			}
			frames, size, skipped := r.w.Stats()
			recs := readBack(t, r.path)
			if int64(len(recs)) != frames || fileSize(t, r.path) != size || skipped != 0 {
				t.Errorf("Stats() = %d frames, %d bytes, %d skipped; file holds %d records in %d bytes", frames, size, skipped, len(recs), fileSize(t, r.path))
			}
			if !closeEarly && frames != sent+received {
				t.Errorf("recorded %d frames; the device sent %d and received %d", frames, sent, received)
			}
			if closeEarly && frames > sent+received {
				t.Errorf("recorded %d frames; more than the %d that crossed", frames, sent+received)
			}
			for i := 1; i < len(recs); i++ {
				if recs[i].ci.Timestamp.Before(recs[i-1].ci.Timestamp) {
					t.Fatalf("record %d: timestamp goes backwards", i)
				}
			}
		})
	}
}

// Recording allocates nothing per frame or per batch in steady state.
func TestNoAllocations(t *testing.T) {
	const batch = 8
	frames := make([][]byte, batch)
	for i := range frames {
		frames[i] = frame(fmt.Sprintf("f%d", i), 60+100*i)
	}
	in, sizes := bufs(batch, 2048)
	for _, tc := range []struct {
		name     string
		maxBytes int64
		close    bool
	}{
		{"recording", 0, false},
		{"over the cap", FileHeaderLen, false},
		{"after close", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, tc.maxBytes)
			if tc.close {
				r.w.Close()
			}
			bad := ""
			rx := func() { // the wire sends a batch; the wrapped device reads it
				if n, err := r.peer.WriteBatch(frames, nil); n != batch || err != nil {
					bad = fmt.Sprintf("peer WriteBatch = %d, %v", n, err)
				}
				if n, err := r.dev.ReadBatch(in, sizes); n != batch || err != nil {
					bad = fmt.Sprintf("ReadBatch = %d, %v", n, err)
				}
			}
			tx := func() { // the wrapped device sends a batch; the wire reads it
				if n, err := r.dev.WriteBatch(frames, nil); n != batch || err != nil {
					bad = fmt.Sprintf("WriteBatch = %d, %v", n, err)
				}
				if n, err := r.peer.ReadBatch(in, sizes); n != batch || err != nil {
					bad = fmt.Sprintf("peer ReadBatch = %d, %v", n, err)
				}
			}
			const runs = 200
			rxAllocs := testing.AllocsPerRun(runs, rx)
			txAllocs := testing.AllocsPerRun(runs, tx)
			if bad != "" {
				t.Fatal(bad)
			}
			t.Logf("allocations per wrapped batch of %d frames: ReadBatch %.2f, WriteBatch %.2f (peer's unwrapped call included)", batch, rxAllocs, txAllocs)
			if rxAllocs != 0 || txAllocs != 0 {
				t.Errorf("allocations per batch: ReadBatch %v, WriteBatch %v; want 0", rxAllocs, txAllocs)
			}
			f, _, s := r.w.Stats()
			switch {
			case tc.close && (f != 0 || s != 0):
				t.Errorf("after Close: %d frames, %d skipped counted", f, s)
			case !tc.close && f+s != 2*(runs+1)*batch:
				t.Errorf("%d frames + %d skipped; want %d", f, s, 2*(runs+1)*batch)
			}
		})
	}
}

// A write to the file fails (the disk is full): recording stops, the
// device goes on, the error is kept and Close returns it.
func TestWriteErrorStopsRecording(t *testing.T) {
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skip(err)
	}
	r := newRig(t, 0)
	writeAll(t, r.dev, frame("kept", 60))
	readAll(t, r.peer, 1)
	good := FileHeaderLen + RecordHeaderLen + 60

	r.w.mu.Lock() // the disk fills up
	r.w.f.Close()
	r.w.f = full
	r.w.buf.Reset(full)
	r.w.mu.Unlock()

	writeAll(t, r.dev, frame("lost1", 60), frame("lost2", 60)) // the device is unaffected
	readAll(t, r.peer, 2)
	writeAll(t, r.peer, frame("lost3", 60))
	readAll(t, r.dev, 1)
	checkStats(t, r.w, 1, int64(good), 3)
	err = r.w.Err()
	if err == nil || !strings.Contains(err.Error(), r.path) || !strings.Contains(err.Error(), "no space left on device") {
		t.Errorf("Err() = %v; want the path and ENOSPC", err)
	}
	if cerr := r.w.Close(); cerr == nil || cerr.Error() != err.Error() {
		t.Errorf("Close() = %v; want the write error %v", cerr, err)
	}
	if cerr := r.w.Close(); cerr != nil {
		t.Errorf("second Close() = %v", cerr)
	}
	if recs := readBack(t, r.path); len(recs) != 1 || fileSize(t, r.path) != int64(good) {
		t.Errorf("file holds %d records; want the one before the failure", len(recs))
	}
}

// The wrapper passes the device's counters through (the miniport reads
// RxOversize from its queues' devices, captured or not): a frame longer
// than its buffer is dropped and counted by the device, not recorded.
func TestCountersPassThrough(t *testing.T) {
	r := newRig(t, 0)
	writeAll(t, r.peer, frame("long", 300), frame("fits", 60))
	b, sizes := bufs(4, 100)
	n, err := r.dev.ReadBatch(b, sizes)
	if n != 1 || err != nil || sizes[0] != 60 {
		t.Fatalf("ReadBatch = %d, %v (sizes %v); want the 60-byte frame only", n, err, sizes[:n])
	}
	c, ok := r.dev.(interface{ Counters() tapdev.Counters })
	if !ok {
		t.Fatal("the wrapped device has no Counters")
	}
	if got, want := c.Counters(), r.inner.Counters(); got != want || got.RxOversize != 1 {
		t.Errorf("wrapped Counters %+v, device's %+v; want the same, RxOversize 1", got, want)
	}
	checkStats(t, r.w, 1, FileHeaderLen+RecordHeaderLen+60, 0)
}
