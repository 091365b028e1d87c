//go:build !race

package rxpool

import (
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// TestZeroAllocs: a get, mark, return cycle and a get, recycle cycle
// allocate nothing (the race detector allocates, hence the build tag).
func TestZeroAllocs(t *testing.T) {
	e := newEnv(t)
	p := e.pool(Config{Name: "allocs", Count: 128, BufferSize: 2048, Headroom: 12, LargeCount: 4})
	dst := make([]*ndisshim.NetBufferList, 64)
	link := func(n int) *ndisshim.NetBufferList {
		for i := 0; i < n-1; i++ {
			dst[i].Next = dst[i+1]
		}
		return dst[0]
	}
	cycle := func() {
		n := p.Get(dst)
		head := link(n)
		p.MarkIndicated(head)
		if err := p.Return(head); err != nil {
			t.Fatal(err)
		}
		n = p.GetLarge(dst[:2])
		p.Recycle(link(n))
	}
	if a := testing.AllocsPerRun(1000, cycle); a != 0 {
		t.Fatalf("%v allocations per get/mark/return cycle, want 0", a)
	}
	if a := testing.AllocsPerRun(1000, func() { p.MarkIndicatedBy(nil, "x"); _ = p.LowResources() }); a != 0 {
		t.Fatalf("%v allocations", a)
	}
}
