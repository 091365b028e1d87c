package ndisshim_test

import (
	"errors"
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// fillRig is a device with queued frames and a pool of free NBLs, each
// with a 64-byte buffer.
type fillRig struct {
	frames [][]byte // queued on the device, first out first
	err    error    // returned by the read after the queue runs dry
	free   []*ndisshim.NetBufferList
	taken  []int // how many NBLs each take asked for
	given  int   // NBLs given back
}

func newFillRig(nbls int) *fillRig {
	r := &fillRig{taken: []int{}}
	for range nbls {
		r.free = append(r.free, &ndisshim.NetBufferList{FirstNB: &ndisshim.NetBuffer{Data: make([]byte, 64)}})
	}
	return r
}

func (r *fillRig) read(bufs [][]byte, sizes []int) (int, error) {
	n := 0
	for n < len(bufs) && len(r.frames) > 0 {
		sizes[n] = copy(bufs[n], r.frames[0])
		r.frames = r.frames[1:]
		n++
	}
	if n < len(bufs) && r.err != nil {
		return n, r.err
	}
	return n, nil
}

func (r *fillRig) take(dst []*ndisshim.NetBufferList) int {
	if r.taken != nil {
		r.taken = append(r.taken, len(dst))
	}
	n := min(len(dst), len(r.free))
	copy(dst, r.free[len(r.free)-n:]) // a stack: give's appends reuse its room
	r.free = r.free[:len(r.free)-n]
	return n
}

func (r *fillRig) give(chain *ndisshim.NetBufferList) {
	for ; chain != nil; chain = chain.Next {
		r.free = append(r.free, chain)
		r.given++
	}
}

func (r *fillRig) queue(n int) {
	for i := range n {
		r.frames = append(r.frames, []byte{byte(i), 0xee})
	}
}

func TestBatchFiller(t *testing.T) {
	const batch, offset = 32, 10
	newFiller := func(r *fillRig) *ndisshim.BatchFiller {
		return ndisshim.NewBatchFiller(batch, make([]byte, 64), r.read, r.take, r.give)
	}

	t.Run("a lone frame takes FirstBatch NBLs and gives back the rest", func(t *testing.T) {
		r := newFillRig(100)
		f := newFiller(r)
		r.queue(1)
		got, dropped, empty, err := f.Fill(offset)
		if got != 1 || dropped != 0 || !empty || err != nil {
			t.Fatalf("Fill = %d, %d, %v, %v; want 1 frame, none dropped, empty", got, dropped, empty, err)
		}
		if len(r.taken) != 1 || r.taken[0] != ndisshim.FirstBatch || r.given != ndisshim.FirstBatch-1 {
			t.Errorf("took %v, gave back %d; want one take of %d and %d back", r.taken, r.given, ndisshim.FirstBatch, ndisshim.FirstBatch-1)
		}
		nb := f.Batch[0].FirstNB
		if f.Sizes[0] != 2 || nb.Data[offset] != 0 || nb.Data[offset+1] != 0xee {
			t.Errorf("frame not read at the offset: size %d, data %x", f.Sizes[0], nb.Data[:offset+2])
		}
	})

	t.Run("a burst fills the batch, the next Fill takes the rest", func(t *testing.T) {
		r := newFillRig(100)
		f := newFiller(r)
		r.queue(batch + 5)
		got, _, empty, err := f.Fill(offset)
		if got != batch || empty || err != nil {
			t.Fatalf("first Fill = %d, empty %v, %v; want a full batch of %d, not empty", got, empty, err, batch)
		}
		if len(r.taken) != 2 || r.taken[0] != ndisshim.FirstBatch || r.taken[1] != batch-ndisshim.FirstBatch {
			t.Errorf("takes %v; want %d then the rest of the batch", r.taken, ndisshim.FirstBatch)
		}
		for i := range got {
			if d := f.Batch[i].FirstNB.Data[offset]; d != byte(i) {
				t.Fatalf("Batch[%d] holds frame %d: order lost", i, d)
			}
		}
		got, _, empty, _ = f.Fill(offset)
		if got != 5 || !empty {
			t.Errorf("second Fill = %d, empty %v; want the 5 left and empty", got, empty)
		}
	})

	t.Run("FillUpTo reads no more than its limit and leaves the rest", func(t *testing.T) {
		for _, limit := range []int{3, ndisshim.FirstBatch, 20, batch} {
			r := newFillRig(100)
			f := newFiller(r)
			r.queue(batch + 5)
			got, dropped, empty, err := f.FillUpTo(offset, limit)
			if got != limit || dropped != 0 || empty || err != nil || len(r.frames) != batch+5-limit {
				t.Fatalf("FillUpTo(%d) = %d, %d, %v, %v with %d left; want %d frames, not empty, %d left",
					limit, got, dropped, empty, err, len(r.frames), limit, batch+5-limit)
			}
			if len(r.free) != 100-limit {
				t.Errorf("FillUpTo(%d): %d NBLs free; want %d (none taken beyond the limit kept)", limit, len(r.free), 100-limit)
			}
		}
	})

	t.Run("an empty pool drops one frame so the device drains", func(t *testing.T) {
		r := newFillRig(0)
		f := newFiller(r)
		r.queue(3)
		got, dropped, empty, err := f.Fill(offset)
		if got != 0 || dropped != 1 || empty || err != nil || len(r.frames) != 2 {
			t.Fatalf("Fill = %d, %d, %v, %v with %d left; want 1 dropped, 2 left", got, dropped, empty, err, len(r.frames))
		}
		r.frames = nil
		if got, dropped, empty, _ = f.Fill(offset); got != 0 || dropped != 0 || !empty {
			t.Errorf("on an empty device Fill = %d, %d, %v; want nothing and empty", got, dropped, empty)
		}
	})

	t.Run("a pool that runs out mid-batch goes up with what it has", func(t *testing.T) {
		r := newFillRig(ndisshim.FirstBatch)
		f := newFiller(r)
		r.queue(20)
		got, dropped, empty, err := f.Fill(offset)
		if got != ndisshim.FirstBatch || dropped != 0 || empty || err != nil || len(r.frames) != 20-ndisshim.FirstBatch {
			t.Errorf("Fill = %d, %d, %v, %v; want %d frames, nothing dropped, the rest left on the device", got, dropped, empty, err, ndisshim.FirstBatch)
		}
	})

	t.Run("a read error comes with the frames before it", func(t *testing.T) {
		r := newFillRig(100)
		f := newFiller(r)
		r.queue(3)
		r.err = errors.New("device gone")
		got, _, _, err := f.Fill(offset)
		if got != 3 || err == nil {
			t.Errorf("Fill = %d, %v; want the 3 frames and the error", got, err)
		}
		if len(r.free) != 100-3 {
			t.Errorf("%d NBLs free; want the %d unfilled ones back", len(r.free), 100-3)
		}
	})

	t.Run("no allocation per Fill", func(t *testing.T) {
		r := newFillRig(100)
		r.taken = nil // no record
		f := newFiller(r)
		r.queue(3)
		burst := r.frames
		allocs := testing.AllocsPerRun(100, func() {
			r.frames = burst
			got, _, _, _ := f.Fill(offset)
			r.give(ndisshim.Chain(f.Batch[:got]...))
		})
		if allocs > 0 {
			t.Errorf("%.1f allocations per Fill", allocs)
		}
	})
}
