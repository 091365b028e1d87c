// Package sniffer records what crosses the miniport's hardware — every frame
// the hardware TAP gives the miniport (wire → host) and every frame the
// miniport gives it (host → wire) — in a classic pcap file (LinkTypeEthernet)
// that tcpdump -r and Wireshark read. Like gVisor's link/sniffer it is a
// wrapper around the hardware seam, not a flag threaded through the adapter:
// an adapter.Device that is not wrapped pays nothing.
//
//	adapter.Miniport ── ReadBatch / WriteBatch ──▶ Wrap(dev) ──▶ dev (tapdev.Dev)
//	                                                  │ one lock per batch
//	                                                  ▼
//	                                  Writer: pcapgo.Writer → bufio.Writer → file
//
// # Who owns a frame
//
// The wrapper never owns one. ReadBatch's buffers belong to the caller (the
// DPC's receive blocks); the wrapper copies the frames the inner device
// filled into the file's buffer before it returns, so nothing refers to a
// block by the time it is indicated. WriteBatch's buffers belong to the
// caller (the protocol's send NBLs, lent to the miniport until the send
// completes); they are copied before WriteBatch returns, so before
// SendNetBufferListsComplete. No reference is kept after a call returns.
//
// # Locking and order
//
// A Writer has one mutex, taken once per batch, not per frame: a batch gets
// one time.Now() (every frame of a batch carries the same timestamp), its
// records, and one flush. Several devices (e.g. the queues of a multi-queue
// TAP) may share one Writer. ReadBatch calls the inner device without the
// lock and records what it returned. WriteBatch holds the lock across the
// inner write: the wire's kernel stack answers inside write(2) (a TAP write
// runs the receiving stack in the writer's context), so the reader goroutine
// can read the reply before the write returns; holding the lock keeps every
// sent frame ahead of any frame read because of it, so the file is in causal
// order and its timestamps never go backwards. The inner WriteBatch must
// therefore not wait for a ReadBatch wrapped by the same Writer (a tapdev.Dev
// never blocks: a full device drops). Once the Writer is closed, full or
// failed, batches take no lock at all. Stats are atomics and never wait.
//
// # Flush policy
//
// Every batch ends with a flush: the bufio.Writer turns a batch's 2×N small
// writes (record header, frame) into one write(2), and the flush makes the
// file complete up to the last batch, so a live `tcpdump -r`, a crash, or
// the forced exit that never reaches Close loses nothing. The cost is one
// write(2) to the page cache per batch, against the inner device's one
// syscall per frame: batches grow under load, so the extra share shrinks
// exactly when throughput matters.
//
// # Which sent frames are recorded
//
// A frame is recorded when the inner WriteBatch wrote it: the Device seam
// reports each frame's outcome (tapdev.TxResult), so a frame the device
// dropped for want of room, refused as malformed, or never tried because
// an error ended the batch is not recorded, wherever it was in the batch.
//
// Classic pcap has no direction field: tell the directions apart by the
// Ethernet addresses (the miniport's MAC is the host side).
package sniffer

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

const (
	// DefaultSnaplen is the snapshot length in the file header: a longer
	// frame (only with large send offload) is recorded truncated, with its
	// real length in the record header, as tcpdump -s 65535 would.
	DefaultSnaplen = 65535
	// FileHeaderLen and RecordHeaderLen are the sizes of classic pcap's
	// headers: the file holds FileHeaderLen + Σ (RecordHeaderLen +
	// captured bytes).
	FileHeaderLen   = 24
	RecordHeaderLen = 16

	bufSize = 64 << 10
)

// Writer states; only Close leaves closed, and nothing leaves it.
const (
	recording int32 = iota
	full            // the next record would have passed the cap: skip the rest
	failed          // a write to the file failed: skip the rest, Close reports it
	closed
)

// Writer records Ethernet frames to a classic pcap file (LinkTypeEthernet,
// snaplen DefaultSnaplen), with an optional size cap. Its methods and the
// devices it wraps may be used from any goroutines.
type Writer struct {
	path     string
	maxBytes int64 // 0: no cap

	mu      sync.Mutex
	f       *os.File
	buf     *bufio.Writer
	pw      *pcapgo.Writer
	err     error // the first write error, named
	size    int64 // bytes given to the file, flushed or buffered: what the cap limits
	pending int64 // frames of this batch not yet flushed

	state   atomic.Int32 // recording, full, failed, closed; changed under mu
	frames  atomic.Int64 // frames flushed to the file; changed under mu
	bytes   atomic.Int64 // the file's size after the last good flush; changed under mu
	skipped atomic.Int64
}

// Create makes (or truncates) the pcap file at path and writes its header.
// maxBytes > 0 caps the file's size: once the next record would pass the
// cap, that frame and every later one are counted as skipped and not
// written, so the file stays valid and holds only whole records — a
// contiguous beginning of the capture. maxBytes == 0 means no cap; a cap
// smaller than the file header is an error. Errors name the path.
func Create(path string, maxBytes int64) (*Writer, error) {
	if maxBytes < 0 || (maxBytes > 0 && maxBytes < FileHeaderLen) {
		return nil, fmt.Errorf("sniffer %s: size cap %d bytes: must be 0 (no cap) or at least the %d-byte pcap file header", path, maxBytes, FileHeaderLen)
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("sniffer: create pcap file: %w", err) // *PathError names the path
	}
	buf := bufio.NewWriterSize(f, bufSize)
	pw := pcapgo.NewWriter(buf)
	err = pw.WriteFileHeader(DefaultSnaplen, layers.LinkTypeEthernet)
	if err == nil {
		err = buf.Flush() // an empty capture is a valid file from the start
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("sniffer %s: write pcap file header: %w", path, err)
	}
	w := &Writer{path: path, maxBytes: maxBytes, f: f, buf: buf, pw: pw, size: FileHeaderLen}
	w.bytes.Store(FileHeaderLen)
	return w, nil
}

// Path is the file's path as given to Create.
func (w *Writer) Path() string { return w.path }

// Stats returns the frames written to the file, the file's size in bytes
// (the file header, and a record header plus the captured bytes per frame:
// what the cap limits and what ls -l shows after Close), and the frames not
// written because the cap was reached or a write to the file failed. They
// change when a batch has been flushed; the frames of a batch whose flush
// failed count as skipped. Frames offered after Close are not counted.
func (w *Writer) Stats() (frames, bytes, skipped int64) {
	return w.frames.Load(), w.bytes.Load(), w.skipped.Load()
}

// Err returns the first error writing the file (recording stopped then),
// or nil.
func (w *Writer) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close flushes and closes the file and returns the first write error, if
// any, with those of the flush and the close. It waits for a batch being
// recorded. Later calls return nil, and recording after Close is a no-op
// (wrapped devices go on working). Close the Writer after the devices it
// wraps (after the adapter's halt) to keep their last frames.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	prev := w.state.Load()
	if prev == closed {
		return nil
	}
	w.state.Store(closed)
	var errs []error
	if w.err != nil {
		errs = append(errs, w.err)
	}
	if prev != failed {
		if err := w.buf.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("sniffer %s: flush: %w", w.path, err))
		}
	}
	if err := w.f.Close(); err != nil {
		errs = append(errs, fmt.Errorf("sniffer %s: close: %w", w.path, err))
	}
	return errors.Join(errs...)
}

// skip counts n frames offered while the Writer is not recording (nothing
// is counted after Close). It takes no lock.
func (w *Writer) skip(state int32, n int) {
	if state != closed && n > 0 {
		w.skipped.Add(int64(n))
	}
}

// now starts a batch under mu: it reports whether the Writer is recording
// and gives the batch's timestamp.
func (w *Writer) now() (time.Time, bool) {
	if w.state.Load() != recording {
		return time.Time{}, false
	}
	return time.Now(), true
}

// recordLocked writes one frame's record, or counts it as skipped when the
// Writer is full or failed (or becomes so with this frame). Caller holds mu
// and has checked that the Writer is not closed.
func (w *Writer) recordLocked(ts time.Time, frame []byte) {
	if w.state.Load() != recording {
		w.skipped.Add(1)
		return
	}
	capLen := min(len(frame), DefaultSnaplen)
	rec := int64(RecordHeaderLen + capLen)
	if w.maxBytes > 0 && w.size+rec > w.maxBytes {
		w.state.Store(full)
		w.skipped.Add(1)
		return
	}
	ci := gopacket.CaptureInfo{Timestamp: ts, CaptureLength: capLen, Length: len(frame)}
	if err := w.pw.WritePacket(ci, frame[:capLen]); err != nil {
		w.failLocked(err)
		w.skipped.Add(1)
		return
	}
	w.size += rec
	w.pending++
}

// endBatchLocked flushes the batch to the file and counts it: written when
// the flush succeeded, skipped when it (or a write before it) failed.
// Caller holds mu.
func (w *Writer) endBatchLocked() {
	if s := w.state.Load(); s == recording || s == full {
		if err := w.buf.Flush(); err != nil {
			w.failLocked(err)
		}
	}
	if w.state.Load() == failed {
		w.skipped.Add(w.pending)
	} else {
		w.frames.Add(w.pending)
		w.bytes.Store(w.size)
	}
	w.pending = 0
}

// failLocked stops recording after a write error; the file may end in a
// partial record (readers report a truncated file after the whole ones).
func (w *Writer) failLocked(err error) {
	if w.err == nil {
		w.err = fmt.Errorf("sniffer %s: write: %w", w.path, err)
	}
	w.state.Store(failed)
}
