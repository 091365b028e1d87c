package rxpool

// Benchmarks: the pool against two baselines, all in the same run (with
// -count N the contenders interleave, as PERF-NOTES asks):
//
//   - chan:  a buffered channel of *NBL as the free list (one channel
//     operation per block);
//   - mutex: a slice of *NBL guarded by a sync.Mutex (one lock per batch).
//
// Neither baseline keeps a ledger (no states, no indication time, no
// double-return detection): they are the floor of a free list, not an
// equivalent. Every contender does the caller's share the same way: link
// the batch into a chain, "indicate" it (the pool marks it; the baselines
// do nothing), and take the chain back in one call.
//
//	go test -run '^$' -bench . -benchmem -count 3 ./rxpool/

import (
	"runtime"
	"sync"
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
)

const (
	benchBlocks = 1024
	benchBatch  = 64
)

// freeList is what the benchmarks drive.
type freeList interface {
	get(dst []*ndisshim.NetBufferList) int
	indicate(head *ndisshim.NetBufferList)
	put(head *ndisshim.NetBufferList) error
}

type poolList struct{ p *Pool }

func (l poolList) get(dst []*ndisshim.NetBufferList) int  { return l.p.Get(dst) }
func (l poolList) indicate(head *ndisshim.NetBufferList)  { l.p.MarkIndicated(head) }
func (l poolList) put(head *ndisshim.NetBufferList) error { return l.p.Return(head) }

// chanList is the channel baseline.
type chanList struct{ ch chan *ndisshim.NetBufferList }

func (l *chanList) get(dst []*ndisshim.NetBufferList) int {
	for k := range dst {
		select {
		case n := <-l.ch:
			dst[k] = n
		default:
			return k
		}
	}
	return len(dst)
}

func (l *chanList) indicate(*ndisshim.NetBufferList) {}

func (l *chanList) put(head *ndisshim.NetBufferList) error {
	for n := head; n != nil; {
		next := n.Next
		l.ch <- n
		n = next
	}
	return nil
}

// mutexList is the mutex-guarded slice baseline.
type mutexList struct {
	mu   sync.Mutex
	free []*ndisshim.NetBufferList
}

func (l *mutexList) get(dst []*ndisshim.NetBufferList) int {
	l.mu.Lock()
	k := min(len(dst), len(l.free))
	copy(dst, l.free[len(l.free)-k:])
	l.free = l.free[:len(l.free)-k]
	l.mu.Unlock()
	return k
}

func (l *mutexList) indicate(*ndisshim.NetBufferList) {}

func (l *mutexList) put(head *ndisshim.NetBufferList) error {
	l.mu.Lock()
	for n := head; n != nil; n = n.Next {
		l.free = append(l.free, n)
	}
	l.mu.Unlock()
	return nil
}

// contenders makes the three free lists of benchBlocks blocks on one
// adapter; the baselines get their NBLs from a plain shim NBL pool.
func contenders(b *testing.B) []struct {
	name string
	fl   freeList
} {
	e := newEnv(b)
	p := e.pool(Config{Name: "bench rx", Count: benchBlocks, BufferSize: 2048, Headroom: 12})
	nblPool := func() []*ndisshim.NetBufferList {
		np, err := e.res().AllocateNBLPool(ndisshim.NBLPoolParams{Tag: ndisshim.MakeTag("TMbn"), Count: benchBlocks, WithNB: true})
		if err != nil {
			b.Fatal(err)
		}
		nbls := make([]*ndisshim.NetBufferList, benchBlocks)
		if np.AllocateBatch(nbls) != benchBlocks {
			b.Fatal("short NBL pool")
		}
		b.Cleanup(func() {
			np.FreeChain(ndisshim.Chain(nbls...))
			if err := np.Free(); err != nil {
				b.Error(err)
			}
		})
		return nbls
	}
	ch := &chanList{ch: make(chan *ndisshim.NetBufferList, benchBlocks)}
	for _, n := range nblPool() {
		ch.ch <- n
	}
	mu := &mutexList{free: nblPool()}
	return []struct {
		name string
		fl   freeList
	}{{"pool", poolList{p}}, {"chan", ch}, {"mutex", mu}}
}

func link(dst []*ndisshim.NetBufferList) *ndisshim.NetBufferList {
	for i := 0; i < len(dst)-1; i++ {
		dst[i].Next = dst[i+1]
	}
	dst[len(dst)-1].Next = nil
	return dst[0]
}

// BenchmarkGetReturn64: one goroutine gets 64 blocks, links them, marks
// them indicated and returns the chain. One op is one batch of 64.
func BenchmarkGetReturn64(b *testing.B) {
	for _, c := range contenders(b) {
		b.Run(c.name, func(b *testing.B) {
			dst := make([]*ndisshim.NetBufferList, benchBatch)
			for b.Loop() {
				if c.fl.get(dst) != benchBatch {
					b.Fatal("short get")
				}
				head := link(dst)
				c.fl.indicate(head)
				if err := c.fl.put(head); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchBatch), "ns/block")
		})
	}
}

// BenchmarkParallel: one filler (the benchmark's goroutine) gets batches
// of up to 64, marks them and hands each chain to one of GOMAXPROCS
// returners, which return it in one call; when nothing is free the filler
// yields. One op is one batch.
func BenchmarkParallel(b *testing.B) {
	for _, c := range contenders(b) {
		b.Run(c.name, func(b *testing.B) {
			r := runtime.GOMAXPROCS(0)
			chans := make([]chan *ndisshim.NetBufferList, r)
			var wg sync.WaitGroup
			for i := range chans {
				chans[i] = make(chan *ndisshim.NetBufferList, 4)
				wg.Go(func() {
					for head := range chans[i] {
						if err := c.fl.put(head); err != nil {
							panic(err)
						}
					}
				})
			}
			dst := make([]*ndisshim.NetBufferList, benchBatch)
			blocks, empty, i := 0, 0, 0
			for b.Loop() {
				n := c.fl.get(dst)
				for ; n == 0; n = c.fl.get(dst) {
					empty++
					runtime.Gosched()
				}
				head := link(dst[:n])
				c.fl.indicate(head)
				chans[i%r] <- head
				i++
				blocks += n
			}
			elapsed := b.Elapsed()
			for _, ch := range chans {
				close(ch)
			}
			wg.Wait()
			b.ReportMetric(float64(elapsed.Nanoseconds())/float64(blocks), "ns/block")
			b.ReportMetric(float64(empty)/float64(b.N), "empty/op")
		})
	}
}
