package ndisshim

// FirstBatch is how many NBLs the first read of a Fill takes from the
// pool: a wake-up usually finds one frame or a few (a ping, ACKs).
const FirstBatch = 8

// BatchFiller is the read half of a DPC that reads frames from a device
// straight into NBLs of a pool, a batch per call. The miniport's receive
// DPC (receive NBLs from its receive pool) and the protocol binding's NIC
// TAP reader (send NBLs from its send pool) are both one. Only its DPC
// uses it; it allocates nothing after NewBatchFiller.
type BatchFiller struct {
	// After Fill, Batch[:got] are the NBLs read into and Sizes[i] the
	// bytes read into Batch[i] (from the offset on). len(Batch) is the
	// batch size.
	Batch []*NetBufferList
	Sizes []int

	bufs        [][]byte
	scratch     [][]byte
	scratchSize []int
	read        func(bufs [][]byte, sizes []int) (int, error)
	take        func(dst []*NetBufferList) int
	give        func(chain *NetBufferList)
}

// NewBatchFiller returns a filler of up to batch frames a call. read is
// the device's batch read (one frame per buffer; tapdev.Dev.ReadBatch);
// take fills dst with free NBLs of the pool and returns how many, give
// puts a chain of them back; scratch holds the largest frame (a frame
// read when the pool is empty lands there and is dropped).
func NewBatchFiller(batch int, scratch []byte,
	read func(bufs [][]byte, sizes []int) (int, error),
	take func(dst []*NetBufferList) int,
	give func(chain *NetBufferList)) *BatchFiller {
	return &BatchFiller{
		Batch: make([]*NetBufferList, batch), Sizes: make([]int, batch),
		bufs: make([][]byte, batch), scratch: [][]byte{scratch}, scratchSize: make([]int, 1),
		read: read, take: take, give: give,
	}
}

// Fill reads up to a batch of frames, each into FirstNB.Data[offset:] of
// an NBL from the pool, and returns how many it read (Batch[:got],
// Sizes[:got]), whether the device is empty, and a read error (the frames
// before it are good: handle them, then the error). It takes FirstBatch
// NBLs first and the rest of the batch only when those fill up, so a
// lone frame does not take and give back a whole batch and a burst still
// goes up as one chain; the NBLs it took and did not fill go back to the
// pool. With no NBL free it reads one frame into the scratch buffer and
// drops it (dropped = 1, for the caller to count), so that the device does
// not stay readable for ever while the stack holds the pool.
func (f *BatchFiller) Fill(offset int) (got, dropped int, empty bool, err error) {
	return f.FillUpTo(offset, len(f.Batch))
}

// FillUpTo is Fill reading at most limit frames (1..len(Batch)): the
// last batch of a DPC run that has a budget (Moderator.Limit).
func (f *BatchFiller) FillUpTo(offset, limit int) (got, dropped int, empty bool, err error) {
	limit = min(max(limit, 1), len(f.Batch))
	want := min(FirstBatch, limit)
	for {
		n := f.take(f.Batch[got:want])
		if n == 0 {
			if got > 0 {
				return got, 0, false, nil // go up with what we have; the next run finds the pool
			}
			k, err := f.Discard()
			return 0, k, k == 0, err
		}
		for i := got; i < got+n; i++ {
			f.bufs[i] = f.Batch[i].FirstNB.Data[offset:]
		}
		k, err := f.read(f.bufs[got:got+n], f.Sizes[got:got+n])
		if k < n {
			f.give(Chain(f.Batch[got+k : got+n]...))
		}
		got += k
		if err != nil || k < n {
			return got, 0, k < n, err
		}
		if got == limit {
			return got, 0, false, nil
		}
		want = limit
	}
}

// Discard reads one frame into the scratch buffer and drops it: n is 1
// when there was one (the caller counts it), 0 when the device is empty.
func (f *BatchFiller) Discard() (n int, err error) {
	return f.read(f.scratch, f.scratchSize)
}
