package adapter

// Benchmarks of the adapter's datapath under the real shim, its hardware a
// tapdev socketpair (no root needed): the receive path (interrupt, DPC,
// pool, indication, return) and the send path (SendNetBufferLists, the
// frames written, the completion). Each runs next to its baseline in the
// same run: the bare device moving the same frames in one goroutine, no
// shim. ns/frame and allocs/frame (every goroutine's heap allocations
// across the loop: the interrupt's and the timers' too) are per frame;
// B/op and allocs/op are per batch of benchBatch frames, rounded down.
// The claim is no heap allocation per packet in steady state.
//
//	go test -run '^$' -bench Datapath -benchtime 2s ./adapter

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
	"github.com/tapminiport/tapminiport/tapdev"
)

const benchBatch = 32

// benchProto is a protocol that does no more than a stack must and
// allocates nothing: it gives each indication back at once and counts its
// frames, telling the benchmark when want have come; its sends come back
// to it complete and are counted.
type benchProto struct {
	got, want atomic.Int64
	done      chan struct{}
	completed atomic.Int64
	failed    atomic.Int64 // sends completed with a status other than SUCCESS
}

var _ ndisshim.Protocol = (*benchProto)(nil)

func (p *benchProto) ReceiveNetBufferLists(b *ndisshim.Binding, nbls *ndisshim.NetBufferList, _ ndisshim.PortNumber, count int, flags ndisshim.ReceiveFlags) {
	if !flags.Has(ndisshim.ReceiveFlagResources) {
		b.ReturnNetBufferLists(nbls, 0)
	}
	if p.got.Add(int64(count)) == p.want.Load() && p.done != nil {
		p.done <- struct{}{}
	}
}

func (p *benchProto) SendNetBufferListsComplete(_ *ndisshim.Binding, nbls *ndisshim.NetBufferList, _ ndisshim.SendCompleteFlags) {
	n := int64(0)
	for nbl := nbls; nbl != nil; nbl = nbl.Next {
		if nbl.Status != ndisshim.StatusSuccess {
			p.failed.Add(1)
		}
		n++
	}
	p.completed.Add(n)
}

func (p *benchProto) StatusEx(*ndisshim.Binding, ndisshim.StatusIndication)     {}
func (p *benchProto) NetPnPEvent(*ndisshim.Binding, ndisshim.NetPnPEvent) error { return nil }

// benchFrames is a batch of size-byte frames to the adapter's address.
func benchFrames(size int) (f [][]byte) {
	for i := range benchBatch {
		f = append(f, frame(ourMAC, size, i))
	}
	return f
}

// benchRig is a running adapter on a socketpair with a benchProto bound
// and the directed packet filter set; silent: the hardware's interrupt
// never fires (the benchmark runs the DPC itself) and the protocol's done
// is nil.
func benchRig(b *testing.B, silent bool) (*rig, *benchProto) {
	p := &benchProto{}
	if !silent {
		p.done = make(chan struct{}, 1)
	}
	r := newRig(b, rigOptions{proto: p, silent: silent, cfg: func(c *Config) {
		c.RxBuffers = 4 * benchBatch
		c.Batch = benchBatch
	}})
	r.restart()
	r.setFilter(ndisshim.PacketTypeDirected)
	return r, p
}

// readAllPeer reads exactly n frames from dev into bufs (n ≤ len(bufs)),
// failing the benchmark on an error or a short read.
func readAllPeer(b *testing.B, dev *tapdev.Dev, bufs [][]byte, sizes []int, n int) {
	got, err := dev.ReadBatch(bufs[:n], sizes)
	if err != nil || got != n {
		b.Fatalf("read %d of %d frames: %v", got, n, err)
	}
}

func newBufs(n, size int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	return bufs, make([]int, n)
}

// meter measures a benchmark's loop: the time and the heap allocations
// (all goroutines': the interrupt's and the adapter's timers' too) per
// frame moved. Start it just before the loop, count the loops, report
// after it.
type meter struct {
	b     *testing.B
	start runtime.MemStats
	loops int
}

func newMeter(b *testing.B) *meter {
	m := &meter{b: b}
	runtime.ReadMemStats(&m.start)
	return m
}

func (m *meter) report() {
	m.b.StopTimer()
	if m.loops == 0 {
		return
	}
	var end runtime.MemStats
	runtime.ReadMemStats(&end)
	frames := float64(m.loops * benchBatch)
	m.b.ReportMetric(float64(m.b.Elapsed().Nanoseconds())/frames, "ns/frame")
	m.b.ReportMetric(float64(end.Mallocs-m.start.Mallocs)/frames, "allocs/frame")
}

// benchBare is the baseline of both directions: the frames written on one
// end of a socketpair and read off the other in the same goroutine, no
// shim.
func benchBare(b *testing.B, frames [][]byte) {
	x, y, err := tapdev.Socketpair()
	if err != nil {
		b.Fatal(err)
	}
	defer x.Close()
	defer y.Close()
	bufs, sizes := newBufs(benchBatch, 2048)
	b.SetBytes(int64(benchBatch * len(frames[0])))
	b.ReportAllocs()
	m := newMeter(b)
	for b.Loop() {
		if n, err := x.WriteBatch(frames, nil); err != nil || n != benchBatch {
			b.Fatalf("wrote %d of %d frames: %v", n, benchBatch, err)
		}
		readAllPeer(b, y, bufs, sizes, benchBatch)
		m.loops++
	}
	m.report()
}

// wireBatch has the wire write frames and p expect them.
func wireBatch(b *testing.B, r *rig, p *benchProto, frames [][]byte) {
	p.want.Add(int64(len(frames)))
	if n, err := r.peer.WriteBatch(frames, nil); err != nil || n != len(frames) {
		b.Fatalf("the wire wrote %d of %d frames: %v", n, len(frames), err)
	}
}

// receivedAll checks that the adapter counted every frame p saw and has
// every receive buffer back, then halts. The interrupt's DPC counts a
// batch after its indication returns and may be in its next read, so
// the counters are given a moment to settle.
func receivedAll(b *testing.B, r *rig, p *benchProto) {
	shimtest.WaitFor(b, "the counters to match the protocol's frames, no buffer in use", func() bool {
		c := r.counters()
		return c.RxFrames == p.got.Load() && c.PoolInUse == 0
	})
	r.halt()
}

// BenchmarkDatapathReceive: the wire writes a batch of frames and they
// are read. "bare" reads them straight off the device in the writing
// goroutine (the baseline). "adapter-polled" runs the receive DPC in the
// writing goroutine until the protocol has had them all indicated and has
// returned them (the DPC's batched read into the pool, classification,
// the indication, the return): its difference from bare is the shim's
// work per frame. "adapter-interrupt" waits instead for the hardware's
// interrupt goroutine to run the DPC, as the adapter does: it adds a
// thread wake-up or more per batch each way.
func BenchmarkDatapathReceive(b *testing.B) {
	for _, size := range []int{64, 1514} {
		frames := benchFrames(size)
		b.Run(fmt.Sprintf("%dB/bare", size), func(b *testing.B) { benchBare(b, frames) })
		b.Run(fmt.Sprintf("%dB/adapter-polled", size), func(b *testing.B) {
			r, p := benchRig(b, true)
			q := r.mp.queues[0]
			dpc := func() { q.receive(dpcRounds, dpcRounds*len(q.rx.Batch)) }
			b.SetBytes(int64(benchBatch * size))
			b.ReportAllocs()
			m := newMeter(b)
			for b.Loop() {
				wireBatch(b, r, p, frames)
				for try := 0; p.got.Load() != p.want.Load(); try++ {
					if try == 100 || !q.intr.TryRunDPC(dpc) {
						b.Fatalf("%d of %d frames indicated after %d DPC runs", p.got.Load(), p.want.Load(), try)
					}
				}
				m.loops++
			}
			m.report()
			receivedAll(b, r, p)
		})
		b.Run(fmt.Sprintf("%dB/adapter-interrupt", size), func(b *testing.B) {
			r, p := benchRig(b, false)
			timeout := time.NewTimer(time.Hour)
			defer timeout.Stop()
			b.SetBytes(int64(benchBatch * size))
			b.ReportAllocs()
			m := newMeter(b)
			for b.Loop() {
				wireBatch(b, r, p, frames)
				timeout.Reset(10 * time.Second)
				select {
				case <-p.done:
				case <-timeout.C:
					b.Fatalf("%d of %d frames indicated after 10s", p.got.Load(), p.want.Load())
				}
				m.loops++
			}
			m.report()
			receivedAll(b, r, p)
		})
	}
}

// BenchmarkDatapathSend: the protocol sends a chain of benchBatch NBLs
// and the wire reads the frames; "adapter" is SendNetBufferLists down to
// the device write and the completion back (the NBLs are reused, as a
// stack recycles its send NBLs), "bare" writes the same frames straight to
// the device. Both include the wire's read.
func BenchmarkDatapathSend(b *testing.B) {
	for _, size := range []int{64, 1514} {
		frames := benchFrames(size)
		b.Run(fmt.Sprintf("%dB/bare", size), func(b *testing.B) { benchBare(b, frames) })
		b.Run(fmt.Sprintf("%dB/adapter", size), func(b *testing.B) {
			r, p := benchRig(b, false)
			pool, err := r.b.AllocateNBLPool(ndisshim.NBLPoolParams{Tag: ndisshim.MakeTag("BPtx"), Count: benchBatch, WithNB: true})
			if err != nil {
				b.Fatal(err)
			}
			nbls := make([]*ndisshim.NetBufferList, benchBatch)
			k := pool.AllocateBatch(nbls)
			// freePool runs before the unbind, also after a Fatalf
			// (Cleanup runs before the rig's; sends complete before
			// SendNetBufferLists returns, so the NBLs are ours again)
			freed := false
			freePool := func() {
				if !freed {
					freed = true
					pool.FreeChain(ndisshim.Chain(nbls[:k]...))
					if err := pool.Free(); err != nil {
						b.Error(err)
					}
				}
			}
			b.Cleanup(freePool)
			if k != benchBatch {
				b.Fatalf("send pool gave %d of %d NBLs", k, benchBatch)
			}
			for i, nbl := range nbls {
				nbl.FirstNB.Data = frames[i]
				nbl.FirstNB.SetBytes(0, len(frames[i]))
			}
			bufs, sizes := newBufs(benchBatch, 2048)
			b.SetBytes(int64(benchBatch * size))
			b.ReportAllocs()
			m := newMeter(b)
			for b.Loop() {
				r.b.SendNetBufferLists(ndisshim.Chain(nbls...), ndisshim.DefaultPort, 0)
				readAllPeer(b, r.peer, bufs, sizes, benchBatch)
				m.loops++
				if p.completed.Load() != int64(m.loops*benchBatch) {
					b.Fatalf("%d sends completed after %d sent", p.completed.Load(), m.loops*benchBatch)
				}
			}
			m.report()
			if p.failed.Load() != 0 {
				b.Errorf("%d sends completed with a failure status", p.failed.Load())
			}
			if c := r.counters(); c.TxFrames != p.completed.Load() {
				b.Errorf("TxFrames = %d for %d sends completed", c.TxFrames, p.completed.Load())
			}
			freePool()
			r.halt()
		})
	}
}
