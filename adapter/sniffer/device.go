package sniffer

import (
	"github.com/tapminiport/tapminiport/adapter"
	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/tapdev"
)

// device is an adapter.Device that records what crosses it into a Writer.
type device struct {
	w      *Writer
	dev    adapter.Device
	prefix int // bytes before each frame that are not Ethernet (a virtio-net header)
	// res is WriteBatch's scratch for a caller that passes no results
	// (under w.mu)
	res []tapdev.TxResult
}

var _ adapter.Device = (*device)(nil)

// Wrap returns a Device that records every frame dev's ReadBatch returns
// (wire → host) and every frame dev's WriteBatch writes (host → wire), and
// otherwise is dev: the same name, interrupt, counts and errors, unchanged.
// Close closes dev, not the Writer (which several devices may share).
// Recording costs one lock per batch and allocates nothing.
func (w *Writer) Wrap(dev adapter.Device) adapter.Device {
	return &device{w: w, dev: dev}
}

// WrapPrefixed is Wrap for a device whose frames carry prefix bytes before
// the Ethernet header (tapdev.VnetHdrLen on a TAP opened with IFF_VNET_HDR):
// only the Ethernet frame is recorded.
func (w *Writer) WrapPrefixed(dev adapter.Device, prefix int) adapter.Device {
	return &device{w: w, dev: dev, prefix: prefix}
}

// Unwrap returns the device under a wrapped one, or nil when dev is not a
// sniffer's: for callers that need the concrete device (e.g. its counters).
func Unwrap(dev adapter.Device) adapter.Device {
	if d, ok := dev.(*device); ok {
		return d.dev
	}
	return nil
}

func (d *device) Name() string                        { return d.dev.Name() }
func (d *device) Interrupt() ndisshim.InterruptSource { return d.dev.Interrupt() }
func (d *device) Close() error                        { return d.dev.Close() }

// ReadPath is the wrapped device's (how its ReadBatch reads).
func (d *device) ReadPath() string { return tapdev.ReadPathOf(d.dev) }

// Offloads is the wrapped device's (0 when it does not say), so the
// miniport offers the same offloads with or without a capture.
func (d *device) Offloads() uint {
	if o, ok := d.dev.(interface{ Offloads() uint }); ok {
		return o.Offloads()
	}
	return 0
}

// Counters is the wrapped device's (zero when it has none), so the
// miniport counts the device's drops with or without a capture.
func (d *device) Counters() tapdev.Counters {
	if c, ok := d.dev.(interface{ Counters() tapdev.Counters }); ok {
		return c.Counters()
	}
	return tapdev.Counters{}
}

// ReadBatch reads from the inner device, then records the n frames it
// returned — also when it returns an error, since the frames before an
// error are valid — and returns exactly what the inner device returned.
// The frames are copied before it returns; the caller keeps its buffers.
func (d *device) ReadBatch(bufs [][]byte, sizes []int) (int, error) {
	n, err := d.dev.ReadBatch(bufs, sizes)
	if n <= 0 {
		return n, err
	}
	w := d.w
	if s := w.state.Load(); s != recording {
		w.skip(s, n)
		return n, err
	}
	w.mu.Lock()
	if ts, ok := w.now(); ok {
		for i := 0; i < n && i < len(bufs) && i < len(sizes); i++ {
			size := sizes[i]
			if size < d.prefix || size > len(bufs[i]) { // not a frame: record nothing rather than panic
				continue
			}
			w.recordLocked(ts, bufs[i][d.prefix:size])
		}
		w.endBatchLocked()
	} else {
		w.skip(w.state.Load(), n)
	}
	w.mu.Unlock()
	return n, err
}

// WriteBatch writes through the inner device with the Writer's lock held
// (see the package doc: a sent frame is recorded before any frame read
// because of it), records the frames the inner device says it wrote
// (TxWritten), and returns exactly what the inner device returned, res
// included. The frames are copied before it returns.
func (d *device) WriteBatch(bufs [][]byte, res []tapdev.TxResult) (int, error) {
	w := d.w
	if s := w.state.Load(); s != recording {
		n, err := d.dev.WriteBatch(bufs, res)
		w.skip(s, n)
		return n, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if res == nil {
		// The caller does not want the outcomes, the recording does: the
		// device's scratch, used only under w.mu (grown, not allocated,
		// in the steady state).
		if cap(d.res) < len(bufs) {
			d.res = make([]tapdev.TxResult, len(bufs))
		}
		res = d.res[:len(bufs)]
	}
	n, err := d.dev.WriteBatch(bufs, res)
	if n <= 0 {
		return n, err
	}
	ts, ok := w.now()
	if !ok { // closed, full or failed while this call waited for the lock
		w.skip(w.state.Load(), n)
		return n, err
	}
	for i, b := range bufs {
		if res[i] == tapdev.TxWritten && len(b) >= d.prefix {
			w.recordLocked(ts, b[d.prefix:])
		}
	}
	w.endBatchLocked()
	return n, err
}
