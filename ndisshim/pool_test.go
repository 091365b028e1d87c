package ndisshim_test

import (
	"errors"
	"os"
	"testing"
	"unsafe"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// TestNBLPool: allocation hands out distinct NBLs with their index, reset
// (no stale status, reserved or link), with a NetBuffer when asked; an
// empty pool gives nil; a pool refuses to be freed while NBLs are out and
// gives nothing once freed.
func TestNBLPool(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	if _, err := r.a.AllocateNBLPool(ndisshim.NBLPoolParams{Tag: ndisshim.MakeTag("Zero")}); err == nil {
		t.Error("pool of 0 NBLs allocated")
	}
	p, err := r.a.AllocateNBLPool(ndisshim.NBLPoolParams{Tag: ndisshim.MakeTag("Test"), Count: 4})
	if err != nil {
		t.Fatal(err)
	}
	if p.Size() != 4 || p.InUse() != 0 || p.String() != `NBL pool "Test" of adapter tm0` {
		t.Fatalf("pool %s: size %d in use %d", p, p.Size(), p.InUse())
	}
	a := p.Allocate()
	if a.Index() != 0 || a.Pool() != p || p.NBL(0) != a || a.FirstNB != nil || a.Bytes() != nil {
		t.Errorf("first NBL: index %d, FirstNB %v", a.Index(), a.FirstNB)
	}
	a.Status, a.MiniportReserved[1], a.ProtocolReserved[3], a.Info.LSO.MSS = ndisshim.StatusFailure, 7, 8, 1448
	batch := make([]*ndisshim.NetBufferList, 5)
	if n := p.AllocateBatch(batch); n != 3 || p.InUse() != 4 {
		t.Fatalf("batch of 5 from 3 free: got %d, in use %d", n, p.InUse())
	}
	if p.Allocate() != nil || p.AllocateBatch(batch) != 0 {
		t.Error("an empty pool handed out an NBL")
	}
	seen := map[int]bool{0: true}
	for _, n := range batch[:3] {
		if seen[n.Index()] {
			t.Errorf("NBL %d handed out twice", n.Index())
		}
		seen[n.Index()] = true
	}
	if err := p.Free(); !errors.Is(err, ndisshim.ErrPoolInUse) {
		t.Errorf("Free with 4 out: %v", err)
	}
	p.FreeNBL(a)
	again := p.Allocate()
	if again != a || again.Status != ndisshim.StatusSuccess || again.MiniportReserved != [2]uintptr{} ||
		again.ProtocolReserved != [4]uintptr{} || again.Info != (ndisshim.NBLInfo{}) || again.Next != nil {
		t.Errorf("reallocated NBL not reset: %+v", again)
	}
	p.FreeChain(ndisshim.Chain(append(batch[:3], again)...))
	if p.InUse() != 0 {
		t.Errorf("in use %d after freeing all", p.InUse())
	}
	if err := p.Free(); err != nil {
		t.Fatal(err)
	}
	if p.Allocate() != nil {
		t.Error("freed pool handed out an NBL")
	}
	// Only the deliberate Free above is a finding.
	if fs := r.found.get(); len(fs) != 1 || fs[0].Kind != ndisshim.FindPoolFreedInUse {
		t.Errorf("findings %v", fs)
	}

	wnb, _ := r.a.AllocateNBLPool(ndisshim.NBLPoolParams{Tag: ndisshim.MakeTag("WiNB"), Count: 1, WithNB: true})
	n := wnb.Allocate()
	if n.FirstNB == nil || n.FirstNB.Data != nil {
		t.Fatalf("WithNB: FirstNB %+v", n.FirstNB)
	}
	n.FirstNB.Data = []byte("..headerpayload")
	n.FirstNB.SetBytes(2, 6)
	if string(n.Bytes()) != "header" || string(n.FirstNB.Bytes()) != "header" {
		t.Errorf("view %q", n.Bytes())
	}
	wnb.FreeNBL(n)
	if err := wnb.Free(); err != nil {
		t.Fatal(err)
	}
	if err := r.a.Halt(t.Context(), ndisshim.HaltDeviceDisabled); err != nil {
		t.Fatal(err)
	}
	_ = r.d.Deregister() // the deliberate pool-in-use finding
}

// TestChain: Chain links in order (dropping old links) and ChainLen counts.
func TestChain(t *testing.T) {
	var ns [3]ndisshim.NetBufferList
	ns[2].Next = &ns[0] // a stale link Chain must drop
	h := ndisshim.Chain(&ns[1], &ns[2])
	if h != &ns[1] || ns[1].Next != &ns[2] || ns[2].Next != nil || ndisshim.ChainLen(h) != 2 {
		t.Errorf("Chain: %p -> %p -> %p", h, h.Next, h.Next.Next)
	}
	if ndisshim.Chain() != nil || ndisshim.ChainLen(nil) != 0 {
		t.Error("empty chain")
	}
}

// TestSharedMemoryAndPorts: shared memory is page-aligned and zeroed;
// ports are numbered from 1, can be activated and freed once; unknown
// ports are ErrNoSuchPort.
func TestSharedMemoryAndPorts(t *testing.T) {
	r := newRig(t, nil, ndisshim.AdapterOptions{})
	if _, err := r.a.AllocateSharedMemory(0); err == nil {
		t.Error("0 bytes of shared memory allocated")
	}
	sm, err := r.a.AllocateSharedMemory(5000)
	if err != nil {
		t.Fatal(err)
	}
	if addr := uintptr(unsafe.Pointer(unsafe.SliceData(sm.Bytes))); addr%uintptr(os.Getpagesize()) != 0 {
		t.Errorf("shared memory at %#x is not page-aligned", addr)
	}
	for i, c := range sm.Bytes {
		if c != 0 {
			t.Fatalf("shared memory byte %d is %d", i, c)
		}
	}
	sm.Bytes[4999] = 0xAA
	if err := sm.Free(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.a.AllocateTagged(0, ndisshim.MakeTag("Zero")); err == nil {
		t.Error("0 bytes of tagged memory allocated")
	}
	p1, _ := r.a.AllocatePort()
	p2, _ := r.a.AllocatePort()
	if p1 == ndisshim.DefaultPort || p2 != p1+1 {
		t.Errorf("ports %d, %d", p1, p2)
	}
	if err := r.a.ActivatePort(p2); err != nil {
		t.Error(err)
	}
	for _, p := range []ndisshim.PortNumber{p1, p2} {
		if err := r.a.FreePort(p); err != nil {
			t.Error(err)
		}
	}
	if err := r.a.FreePort(p1); !errors.Is(err, ndisshim.ErrNoSuchPort) {
		t.Errorf("second FreePort: %v", err)
	}
	if err := r.a.ActivatePort(99); !errors.Is(err, ndisshim.ErrNoSuchPort) {
		t.Errorf("ActivatePort of an unknown port: %v", err)
	}
	r.finish()
}
