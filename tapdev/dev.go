package tapdev

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// ErrDeviceGone is wrapped by every error that means the device has gone
// away under an open Dev: the TAP's link was deleted (EBADFD, ENODEV, EIO,
// ENXIO from read, EBADFD, ENODEV, ENXIO from write, POLLERR from poll) or
// a socketpair's peer was closed (EOF, EPIPE, POLLHUP). It is the
// miniport's surprise removal.
var ErrDeviceGone = errors.New("device gone")

// ErrLinkDown is wrapped by the error WriteBatch returns when the TAP's
// link is set down (`ip link set DEV down`): the kernel refuses every
// write with EIO until it is set up again. It is a pulled cable, not a
// removal: the device is still there and writes work again once the link
// is up.
var ErrLinkDown = errors.New("link down")

// FrameDevice is the seam the miniport (its hardware TAP) and the protocol
// binding (its NIC TAP) drive: a frame-oriented descriptor with batch I/O
// and an interrupt line. *Dev satisfies it; tests wrap or fake it.
type FrameDevice interface {
	Name() string
	// ReadBatch reads frames until len(bufs) or nothing is left; 0, nil
	// means nothing to read.
	ReadBatch(bufs [][]byte, sizes []int) (int, error)
	// WriteBatch writes one frame per buffer and returns how many it
	// wrote. res is nil or at least len(bufs) long: WriteBatch then sets
	// res[i] to what became of bufs[i], for every i (Dev.WriteBatch).
	WriteBatch(bufs [][]byte, res []TxResult) (int, error)
	// Interrupt is the device's interrupt line (readable fd + stop fd).
	Interrupt() ndisshim.InterruptSource
	Close() error
}

var _ FrameDevice = (*Dev)(nil)

// Options chooses how a TAP queue is opened.
type Options struct {
	// MultiQueue opens one queue of an IFF_MULTI_QUEUE TAP; each OpenTAP
	// call attaches one more queue. It must match how the TAP was created.
	MultiQueue bool
	// VnetHdr sets IFF_VNET_HDR and TUNSETVNETHDRSZ = VnetHdrLen: every
	// frame read or written is prefixed with a struct virtio_net_hdr.
	// water cannot set IFF_VNET_HDR (and clears it when it attaches), so
	// this path opens /dev/net/tun itself.
	VnetHdr bool
}

// VnetHdrLen is the size of the virtio-net header that prefixes each frame
// when Options.VnetHdr is set (struct virtio_net_hdr, without num_buffers).
const VnetHdrLen = 12

// TxResult is what became of one frame given to WriteBatch.
type TxResult uint8

const (
	// TxUnwritten: an error ended the batch at this frame or before it,
	// so it was not written (the zero value).
	TxUnwritten TxResult = iota
	// TxWritten: the device took the frame.
	TxWritten
	// TxNoRoom: the device had no room and dropped it (EAGAIN, ENOBUFS;
	// counted in Counters.TxDropped).
	TxNoRoom
	// TxRefused: the device refused it as malformed (EINVAL, EMSGSIZE, an
	// empty buffer; counted in Counters.TxErrors).
	TxRefused
)

func (r TxResult) String() string {
	switch r {
	case TxUnwritten:
		return "unwritten"
	case TxWritten:
		return "written"
	case TxNoRoom:
		return "no-room"
	case TxRefused:
		return "refused"
	}
	return fmt.Sprintf("TxResult(%d)", uint8(r))
}

// Counters are a Dev's own drop counts (the kernel's counts are in LinkStats).
type Counters struct {
	// TxDropped counts frames WriteBatch dropped because the device was
	// full (EAGAIN, ENOBUFS): a TAP drops rather than pushes back.
	TxDropped uint64
	// TxErrors counts frames the device refused as malformed (EINVAL,
	// EMSGSIZE, or an empty buffer): a NIC's tx error, not a failure of
	// the batch.
	TxErrors uint64
	// RxOversize counts frames ReadBatch dropped because they were longer
	// than the buffer they were read into (a jumbo frame on a TAP whose
	// MTU was raised past what the reader's buffers hold). The kernel
	// does not say so itself: a TAP's read copies what fits and returns
	// at most the buffer's length (tun_chr_read_iter), and a
	// SOCK_SEQPACKET read truncates the same way, so ReadBatch reads each
	// frame with one guard byte behind the buffer and a read that reaches
	// the guard is a frame that did not fit. A NIC's "frame too long"
	// receive error: the adapter adds it to its RxDropOversize.
	RxOversize uint64
}

// CounterWatch follows a device's Counters for one user: Since says how
// much each grew since its last call. The adapter's and the binding's
// readers fold the device's receive drops (RxOversize) into their own
// counters this way (each watch used by one goroutine at a time); their
// send drops come from WriteBatch's per-frame results. A device without
// Counters (a test's fake) gives a watch whose Since returns zeros.
type CounterWatch struct {
	read func() Counters
	last Counters
}

// WatchCounters watches dev's Counters, if it has them.
func WatchCounters(dev FrameDevice) CounterWatch {
	if d, ok := dev.(interface{ Counters() Counters }); ok {
		return CounterWatch{read: d.Counters}
	}
	return CounterWatch{}
}

// Since returns how much each counter grew since the last call. It
// allocates nothing.
func (w *CounterWatch) Since() Counters {
	if w.read == nil {
		return Counters{}
	}
	now := w.read()
	d := Counters{TxDropped: now.TxDropped - w.last.TxDropped, TxErrors: now.TxErrors - w.last.TxErrors, RxOversize: now.RxOversize - w.last.RxOversize}
	w.last = now
	return d
}

// Dev is one frame-oriented fd: a TAP queue, or one end of a SOCK_SEQPACKET
// socketpair (the fake hardware for unit tests). The fd is non-blocking and
// close-on-exec and is not registered with the Go runtime poller.
//
// ReadBatch, WriteBatch and Interrupt().Wait may run concurrently with each
// other (one reader, one writer, one waiter); Close may be called at any
// time and waits for the calls in flight.
type Dev struct {
	name string
	fd   int
	efd  int // eventfd: the stop doorbell for Wait

	// gate: RLock around every use of fd/efd, Lock to close them
	// (gVisor's waitable gate).
	gate    sync.RWMutex
	closed  bool        // under gate (write side)
	closing atomic.Bool // set first by Close

	intr interruptSource

	// ring batches ReadBatch's reads (nil: read(2) per frame); ringErr
	// says why there is none.
	ring    *uring
	ringErr error
	// ringRefused: the device refused a read through the ring
	// (EOPNOTSUPP: a kernel whose TAP does not take RWF_NOWAIT); the
	// reader uses read(2) from then on. Only the reader touches it.
	ringRefused bool

	// guard is the byte read(2) may reach behind a buffer (see
	// readFrame); its content is never looked at. Only the reader
	// touches it.
	guard [1]byte

	offloads   atomic.Uint64 // TUN_F_* flags SetOffload set
	txDropped  atomic.Uint64
	txErrors   atomic.Uint64
	rxOversize atomic.Uint64
}

// newDev wraps fd (already non-blocking and close-on-exec) and makes the
// stop eventfd. On error it closes fd.
func newDev(name string, fd int) (*Dev, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tapdev %s: eventfd: %w", name, err)
	}
	d := &Dev{name: name, fd: fd, efd: efd}
	d.intr.d = d
	if useURing.Load() {
		d.ring, d.ringErr = newURing(uringEntries)
	} else {
		d.ringErr = errURingOff
	}
	return d, nil
}

// Name is the TAP's interface name, or "socketpairN.a"/"socketpairN.b".
func (d *Dev) Name() string { return d.name }

// Counters returns the frames WriteBatch dropped or refused and the
// frames ReadBatch dropped so far.
func (d *Dev) Counters() Counters {
	return Counters{TxDropped: d.txDropped.Load(), TxErrors: d.txErrors.Load(), RxOversize: d.rxOversize.Load()}
}

// errClosed is what every call on a closed Dev returns.
func (d *Dev) errClosed(op string) error {
	return fmt.Errorf("tapdev %s: %s: %w", d.name, op, os.ErrClosed)
}

// gone reports whether errno means the device has disappeared.
func gone(err error) bool {
	switch err {
	case unix.EBADFD, unix.ENODEV, unix.EIO, unix.ENXIO, unix.EPIPE, unix.ECONNRESET, unix.ENOTCONN, unix.ESHUTDOWN:
		return true
	}
	return false
}

func (d *Dev) opError(op string, err error) error {
	if gone(err) {
		return fmt.Errorf("tapdev %s: %s: %w (%w)", d.name, op, ErrDeviceGone, err)
	}
	return fmt.Errorf("tapdev %s: %s: %w", d.name, op, err)
}

// ReadBatch reads one frame into each of bufs[0], bufs[1], ... until
// len(bufs) frames are read or the device has nothing more (EAGAIN), and
// stores each frame's length in sizes[i]. It returns the number of frames
// read; 0 with a nil error means nothing to read. On an error the frames
// before it are valid: handle n frames, then the error. An error that means
// the device is gone wraps ErrDeviceGone. Each buffer should hold a whole
// frame (MTU + 14, plus VnetHdrLen with Options.VnetHdr; 65536 + VnetHdrLen
// with offloads): a frame longer than its buffer is dropped and counted
// (Counters.RxOversize), and the next frame is read into that buffer, so
// sizes[i] <= len(bufs[i]) always and n < len(bufs) still means the
// device had nothing more.
//
// The caller owns bufs before, during and after the call; nothing is
// retained and nothing is allocated.
func (d *Dev) ReadBatch(bufs [][]byte, sizes []int) (int, error) {
	d.gate.RLock()
	defer d.gate.RUnlock()
	if d.closed {
		return 0, d.errClosed("read")
	}
	if len(sizes) < len(bufs) {
		return 0, fmt.Errorf("tapdev %s: read: %d sizes for %d buffers", d.name, len(sizes), len(bufs))
	}
	// The first frames come by read(2): a wake-up that finds one frame (a
	// ping, an ACK) costs two system calls, not a ring of reads that
	// mostly find nothing. A queue that still has frames after
	// ringAfter reads is drained through the ring.
	n := 0
	ring := d.ring != nil && !d.ringRefused
	for n < len(bufs) {
		if ring && n == ringAfter && sameLen(bufs[n:]) {
			ring = false
			m, refused, err := d.readRing(bufs[n:], sizes[n:])
			n += m
			if !refused {
				return n, err
			}
			// the ring refused the reads (for good, or for this
			// call): go on with read(2)
		}
		m, err := d.readFrame(bufs[n])
		switch {
		case err == nil && m > len(bufs[n]): // did not fit: truncated by the kernel
			d.rxOversize.Add(1)
		case err == nil && m > 0:
			sizes[n] = m
			n++
		case err == nil: // m == 0: EOF, only a socketpair whose peer has closed
			return n, fmt.Errorf("tapdev %s: read: %w (peer closed)", d.name, ErrDeviceGone)
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			return n, nil
		default:
			return n, d.opError("read", err)
		}
	}
	return n, nil
}

// readFrame reads one frame into buf: readv(2) into buf and the guard
// byte behind it. The kernel copies what fits and returns how much it
// copied (a TAP never returns more than the iovecs hold), so a result of
// len(buf)+1 is a frame longer than buf, truncated; anything up to
// len(buf) is the whole frame. It allocates nothing.
func (d *Dev) readFrame(buf []byte) (int, error) {
	iov := [2][]byte{buf, d.guard[:]}
	return unix.Readv(d.fd, iov[:])
}

// ringAfter is how many frames ReadBatch reads with read(2) before it
// drains the rest through the ring.
const ringAfter = 2

// readRing is ReadBatch through the io_uring: up to uringEntries reads per
// system call, until bufs are full or a read finds the queue empty. Frames
// longer than their buffer are dropped and counted, as with read(2). It
// reports refused when the ring would not take the reads that are left:
// the device does not take RWF_NOWAIT (EOPNOTSUPP; ringRefused is set, for
// good), or the kernel could not take the requests this time (EAGAIN,
// ENOMEM from io_uring_enter when it could not allocate them, EBUSY; a
// call that takes none and names no error reads as EAGAIN). The
// caller then reads the rest with read(2): a frame is never left unread,
// and a reader is never told of an error, because the ring was short of
// something. (A read's own EAGAIN, the queue found empty, is not an error:
// readBatch reports it as a hole.)
func (d *Dev) readRing(bufs [][]byte, sizes []int) (n int, refused bool, err error) {
	for n < len(bufs) {
		k := min(len(bufs)-n, uringEntries)
		got, oversize, eof, errno := d.ring.readBatch(d.fd, bufs[n:n+k], sizes[n:n+k])
		n += got
		if oversize > 0 {
			d.rxOversize.Add(uint64(oversize))
		}
		switch {
		case eof:
			return n, false, fmt.Errorf("tapdev %s: read: %w (peer closed)", d.name, ErrDeviceGone)
		case errno == unix.EOPNOTSUPP && got == 0:
			d.ringRefused = true
			return n, true, nil
		case errno == unix.EAGAIN || errno == unix.ENOMEM || errno == unix.EBUSY:
			return n, true, nil
		case errno != 0:
			return n, false, d.opError("read", errno)
		case got+oversize < k: // a read found the queue empty
			return n, false, nil
		}
	}
	return n, false, nil
}

// sameLen reports whether every buffer is as long as the first (the ring
// moves a frame down over a hole; see uring.readBatch).
func sameLen(bufs [][]byte) bool {
	for _, b := range bufs[1:] {
		if len(b) != len(bufs[0]) {
			return false
		}
	}
	return true
}

// ReadPath says how ReadBatch reads: "io_uring" (batched), or "read(2)"
// and why the ring is missing.
func (d *Dev) ReadPath() string {
	if d.ring != nil {
		return "io_uring"
	}
	return "read(2) (" + d.ringErr.Error() + ")"
}

// ReadPathOf is dev's ReadPath, "unknown" for a device without one (a
// test's fake).
func ReadPathOf(dev FrameDevice) string {
	if r, ok := dev.(interface{ ReadPath() string }); ok {
		return r.ReadPath()
	}
	return "unknown"
}

// WriteBatch writes each of bufs as one frame (one write(2) each: a TAP has
// no batch write, and a TAP write runs the receiving kernel stack in the
// caller's context). It returns the number of frames written. A frame the
// device has no room for (EAGAIN, ENOBUFS) is dropped and counted
// (Counters.TxDropped), a frame the device refuses (EINVAL, EMSGSIZE, empty)
// is counted as a tx error, and the batch goes on: neither is an error, so
// n < len(bufs) with a nil error means drops. An error ends the batch at
// the frame that met it: that frame and the rest were not written. An
// error that means the device is gone wraps ErrDeviceGone; one that means
// the link is down (EIO from a TAP) wraps ErrLinkDown, and the caller
// decides what the unwritten frames become (nothing is counted here).
//
// When res is not nil (it must then be at least len(bufs) long), res[i]
// says which of those bufs[i] met: TxWritten, TxNoRoom, TxRefused, or
// TxUnwritten for the frame an error ended the batch at and every frame
// after it. That is how a caller completes each frame's send with its own
// outcome and counts exactly the bytes written.
//
// The caller owns bufs; the kernel has copied each frame when WriteBatch
// returns. Nothing is allocated.
func (d *Dev) WriteBatch(bufs [][]byte, res []TxResult) (int, error) {
	d.gate.RLock()
	defer d.gate.RUnlock()
	if d.closed {
		markUnwritten(res, 0, len(bufs))
		return 0, d.errClosed("write")
	}
	n := 0
	for i := 0; i < len(bufs); i++ {
		r := TxWritten
		b := bufs[i]
		if len(b) == 0 { // an empty record would read as EOF on a socketpair
			d.txErrors.Add(1)
			r = TxRefused
		} else {
			_, err := unix.Write(d.fd, b)
			switch err {
			case nil:
				n++
			case unix.EINTR:
				i-- // retry this frame
				continue
			case unix.EAGAIN, unix.ENOBUFS:
				d.txDropped.Add(1)
				r = TxNoRoom
			case unix.EINVAL, unix.EMSGSIZE:
				d.txErrors.Add(1)
				r = TxRefused
			case unix.EIO:
				// tun_get_user refuses a write to a link that is not up;
				// a deleted TAP's fd gives EBADFD instead.
				markUnwritten(res, i, len(bufs))
				return n, fmt.Errorf("tapdev %s: write: %w (EIO: the link is set down)", d.name, ErrLinkDown)
			default:
				markUnwritten(res, i, len(bufs))
				return n, d.opError("write", err)
			}
		}
		if res != nil {
			res[i] = r
		}
	}
	return n, nil
}

// markUnwritten sets res[from:to] to TxUnwritten (res may be nil).
func markUnwritten(res []TxResult, from, to int) {
	if res != nil {
		clear(res[from:to])
	}
}

// Close stops the interrupt (a Wait in progress returns an os.ErrClosed
// error), waits for the calls in flight, and closes the fd and the eventfd.
// Closing a TAP queue detaches it; the kernel deletes a non-persistent TAP
// when its last queue closes. Close is idempotent: later calls return nil.
func (d *Dev) Close() error {
	if !d.closing.CompareAndSwap(false, true) {
		return nil
	}
	d.kick()
	d.gate.Lock()
	defer d.gate.Unlock()
	d.closed = true
	var errs []error
	if err := unix.Close(d.fd); err != nil {
		errs = append(errs, fmt.Errorf("tapdev %s: close: %w", d.name, err))
	}
	if err := unix.Close(d.efd); err != nil {
		errs = append(errs, fmt.Errorf("tapdev %s: close eventfd: %w", d.name, err))
	}
	if d.ring != nil {
		d.ring.close()
	}
	return errors.Join(errs...)
}

// kick makes the eventfd readable (for good: nobody reads it), which wakes
// every Wait, present and future.
func (d *Dev) kick() {
	d.gate.RLock()
	defer d.gate.RUnlock()
	if d.closed {
		return
	}
	one := [8]byte{1} // a native-endian uint64 1 on little-endian machines; any non-zero value works
	_, _ = unix.Write(d.efd, one[:])
}

var socketpairs atomic.Uint64

// Socketpair returns two connected SOCK_SEQPACKET ends: what one writes
// with WriteBatch the other reads with ReadBatch, frame boundaries kept.
// It is the fake hardware for tests without root. A full peer drops like a
// TAP (EAGAIN, counted in TxDropped); closing one end is the other's
// surprise removal (ErrDeviceGone).
func Socketpair() (*Dev, *Dev, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("tapdev: socketpair: %w", err)
	}
	id := socketpairs.Add(1) - 1
	a, err := newDev(fmt.Sprintf("socketpair%d.a", id), fds[0])
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	b, err := newDev(fmt.Sprintf("socketpair%d.b", id), fds[1])
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

// TAP offload flags for SetOffload (TUN_F_*): what the kernel may hand the
// TAP unsegmented or without checksums. They need Options.VnetHdr.
const (
	OffloadCsum uint = unix.TUN_F_CSUM // partial checksums
	OffloadTSO4 uint = unix.TUN_F_TSO4 // TCP segmentation, IPv4
	OffloadTSO6 uint = unix.TUN_F_TSO6 // TCP segmentation, IPv6
	OffloadUSO4 uint = 0x20            // UDP segmentation, IPv4 (TUN_F_USO4, Linux 6.2)
	OffloadUSO6 uint = 0x40            // UDP segmentation, IPv6 (TUN_F_USO6)
)

// SetOffload tells the kernel which offloads this TAP's reader handles
// (TUNSETOFFLOAD takes the value, not a pointer). The kernel refuses
// flags it does not know with EINVAL.
func (d *Dev) SetOffload(flags uint) error {
	d.gate.RLock()
	defer d.gate.RUnlock()
	if d.closed {
		return d.errClosed("set offload")
	}
	if err := unix.IoctlSetInt(d.fd, unix.TUNSETOFFLOAD, int(flags)); err != nil {
		return fmt.Errorf("tapdev %s: TUNSETOFFLOAD 0x%x: %w", d.name, flags, err)
	}
	d.offloads.Store(uint64(flags))
	return nil
}

// NegotiateOffload sets want, or, when the kernel refuses it (EINVAL: a
// kernel before 6.2 does not know USO), want without the USO flags. It
// returns what the TAP took.
func (d *Dev) NegotiateOffload(want uint) (uint, error) {
	err := d.SetOffload(want)
	if err != nil && errors.Is(err, unix.EINVAL) && want&(OffloadUSO4|OffloadUSO6) != 0 {
		want &^= OffloadUSO4 | OffloadUSO6
		err = d.SetOffload(want)
	}
	if err != nil {
		return 0, err
	}
	return want, nil
}

// BaseOffloads is what a TAP with IFF_VNET_HDR takes on any kernel:
// checksum, TSO4, TSO6. AllOffloads adds UDP segmentation (Linux 6.2+).
const (
	BaseOffloads = OffloadCsum | OffloadTSO4 | OffloadTSO6
	AllOffloads  = BaseOffloads | OffloadUSO4 | OffloadUSO6
)

// DeviceOffloads is what dev says it took (a Dev, or a wrapper with an
// Offloads method), else BaseOffloads: a device that does not say (a
// socketpair in unit tests) is taken to do what any TAP does.
func DeviceOffloads(dev FrameDevice) uint {
	if o, ok := dev.(interface{ Offloads() uint }); ok && o.Offloads() != 0 {
		return o.Offloads()
	}
	return BaseOffloads
}

// Offloads is what the last successful SetOffload set (0: none was set).
func (d *Dev) Offloads() uint { return uint(d.offloads.Load()) }

// OffloadNames spells offload flags as ethtool-like names, for logs.
func OffloadNames(f uint) string {
	if f == 0 {
		return "none"
	}
	var out []string
	for _, n := range []struct {
		bit  uint
		name string
	}{{OffloadCsum, "csum"}, {OffloadTSO4, "tso4"}, {OffloadTSO6, "tso6"}, {OffloadUSO4, "uso4"}, {OffloadUSO6, "uso6"}} {
		if f&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	return strings.Join(out, ",")
}
