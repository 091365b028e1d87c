// Package adapter is the TAP miniport: a miniport driver for the ndisshim
// whose hardware is a Linux TAP device (the "hardware TAP", tmhw0 by
// default). Its structure follows NetVMini: miniport.go is
// MiniportInitializeEx / MiniportHaltEx / pause / restart / shutdown,
// datapath.go is receive and send, oid.go is the control path.
//
// The interrupt is a goroutine blocked in poll(2) on the TAP fd and a stop
// eventfd; its DPC reads a batch of frames straight into receive blocks of
// an rxpool.Pool and makes one indication per batch. With Config.Queues
// above 1 (RSS, queue.go) the TAP is a multi-queue TAP and each queue has
// its own fd, interrupt and DPC, all filling the one pool; sends leave on
// the queue of their flow's hash. Who owns a receive
// block: the pool (free) → the DPC (filling) → the stack (indicated, until
// ReturnNetBufferLists) → the pool. A send chain belongs to the miniport
// from SendNetBufferLists until it is written and completed, on the
// caller's goroutine.
//
// Halt undoes InitializeEx in reverse: cancel the statistics timer and wait
// for a running handler, deregister the interrupts (stop and join each
// queue's reader), wait for the sends in progress, drain the receive pool, put the
// link down, close the TAP's queues (which deletes it only when this adapter created
// it), free the pool (NBLs, NBL pool, slab), the tagged context block and
// the device registration. A failing InitializeEx runs the same teardown
// over what it had set up.
package adapter
