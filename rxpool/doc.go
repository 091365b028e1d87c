// Package rxpool owns the miniport's receive blocks, in the shape of
// NetVMini's receive control blocks (RCBs): a slab of receive buffers, one
// preallocated NBL with one NetBuffer per buffer, the free list, the
// in-flight ledger and the drain wait at halt.
//
// # What it owns
//
// Everything is allocated through the shim, so the verifier sees it:
//
//   - one slab per size class (Resources.AllocateSharedMemory, the analog of
//     NdisMAllocateSharedMemory): Count buffers of BufferSize bytes, and, when
//     asked, LargeCount buffers of LargeSize bytes for 64 KiB offload frames;
//   - one NBL pool (Resources.AllocateNBLPool with WithNB) of Count+LargeCount
//     NBLs, every one allocated at New and kept for the pool's whole life.
//     NBL i (nbl.Index()) is block i: regular blocks are 0..Count-1, large
//     blocks follow. Its FirstNB.Data is block i's buffer (len BufferSize or
//     LargeSize, capacity capped so it can never reach the next buffer); the
//     frame goes in at Data[Headroom:], the room before it is for a
//     virtio-net header.
//
// Free undoes New in reverse: the NBLs go back to the NBL pool, then the
// NBL pool is freed, then the slabs are unmapped.
//
// # Who owns a block
//
//	pool (free list)                  filler                      stack
//	free, returned ──Get, GetLarge──► filling ──MarkIndicated──► indicated
//	   ▲  ▲                             │                          │  │
//	   │  └───────── Recycle ───────────┘                          │  │
//	   ├──────────── Recycle (the indication failed) ──────────────┘  │
//	   └──────────── Return (ReturnNetBufferLists) ───────────────────┘
//
// Free and returned: the pool owns the block; it is on its class's free
// list. "Returned" only remembers that the stack gave it back (and to whom
// and when it had been indicated), for the error about a second return.
//
// Filling: the filler (the miniport's receive DPC) owns the block from Get
// until MarkIndicated, or until Recycle for a frame it drops. A chain
// indicated with RESOURCES is not marked: it stays filling, the stack must
// copy what it keeps, and the filler recycles it when IndicateReceive
// returns.
//
// Indicated: the stack (the protocol the shim gave the chain to) owns the
// block until it comes back through the miniport's ReturnNetBufferLists,
// which calls Return. A marked chain whose indication fails (the adapter
// is not ready) is still the filler's: it recycles it.
//
// Return refuses, counts and names (in one error per chain) every block
// that is not indicated: a second return, a block that was got but never
// indicated, an NBL of another pool. Refused blocks are left as they are.
//
// # Free list and concurrency
//
// One filler (the receive DPC) and many returners (the protocols'
// goroutines) work at once. A returner takes no lock and never waits for
// the filler (only naming a refused block takes the filler lock); the
// filler never waits for a returner.
//
// Each class has one free list: a LIFO stack of blocks linked through the
// pool's own per-block link (not through NBL.Next: a buggy returner that
// chains a block it no longer owns rewrites Next, and must not be able to
// corrupt the free list), whose head is one atomic pointer. Return links
// the good blocks of its chain into a run and pushes the whole run with one
// compare-and-swap. Get walks up to len(dst) blocks down from the head and
// cuts them off with one compare-and-swap; if runs were pushed meanwhile it
// unlinks its blocks from under them instead of walking again. Only Get
// removes blocks, so the stack has no ABA problem. LIFO keeps the most
// recently returned buffers, still in cache, in use.
//
// The filler's own operations (Get, GetLarge, MarkIndicated, Recycle) take
// the filler lock once per call: uncontended with one filler, and it lets
// several fillers share a pool safely. Under it each block's "filling"
// flag is kept, so Get costs no atomic operation per block. What the
// returners see is one atomic word per block (free, indicated or returned,
// with the holder and time of the indication): MarkIndicated stores it,
// Return compare-and-swaps it, so of two goroutines returning the same
// block at once exactly one gets it back. Counters (in use, indicated,
// high-water mark, exhaustions) are updated once per call. Nothing on the
// path allocates: pool_bench_test.go measures it against a channel and a
// mutex-guarded slice.
package rxpool
