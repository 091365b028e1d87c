// Package ndisshim is an NDIS 6-like layer in Go: the contract between a
// miniport driver (the NIC) and protocol drivers (the kernel stack) that
// Windows' ndis.sys keeps, with Go names and the NDIS name in each doc
// comment.
//
// It owns the types (NetBufferList, NetBuffer, Status, OID requests),
// miniport and protocol registration, the adapter state machine, the
// routing of receive indications, returns, sends and send completions, the
// NBL ownership ledger, timers, interrupts, tagged and shared memory, NBL
// pools, ports, the device registration, the watchdog that reports held
// NBLs while pause or halt waits, and the verifier.
//
// # States
//
//	          AddAdapter (InitializeEx)
//	Halted ─────────────► Initializing ──fail──► Halted
//	                           │ ok
//	                           ▼
//	   ┌──────────────────► Paused ◄───────────── Pausing ◄──┐
//	   │ Halt (HaltEx)        │ Restart                 ▲    │ Pause
//	   ▼                      ▼                         │    │
//	Halted               Restarting ──ok──► Running ────┘────┘
//	                         │ fail → Paused
//
// Shutdown (ShutdownEx) is reachable from Paused, Restarting, Running and
// Pausing; it frees nothing and is the way out of a forced exit. Sends are
// accepted only in Running; receive indications in Running and in Pausing
// until the miniport's PauseEx returns. Halt only from Paused, with every
// binding closed. An illegal call returns an error wrapping ErrIllegalState
// that names the call, the adapter and its state.
//
// # Who owns a buffer
//
// Receive: the miniport owns its NBLs; IndicateReceive without
// ReceiveFlagResources gives them to the (last) bound protocol, which owns
// them until Binding.ReturnNetBufferLists, after which the shim hands them
// to the miniport's ReturnNetBufferLists. With ReceiveFlagResources the
// miniport owns them again as soon as IndicateReceive returns. Send: the
// protocol's NBLs belong to the miniport from Binding.SendNetBufferLists
// until Adapter.SendNetBufferListsComplete, which routes each NBL back to
// the binding that sent it. The ledger is one atomic word per NBL; a wrong
// transition (double return, a return by a binding that does not hold the
// NBL, an NBL from another adapter, a second completion) is a verifier
// finding and the NBL is not passed on.
//
// # Pause and halt
//
// Pause: sends refused with StatusPaused; each binding gets NetEventPause;
// the miniport's PauseEx stops indicating and completes pending sends; the
// shim waits until every indicated NBL is back and every send completed,
// reporting what is held (by whom, how old) every WatchdogInterval; a
// context deadline gives up with that report and frees nothing.
//
// Halt waits, like NDIS, until no OID request or send cancel is running in
// the miniport before it calls HaltEx (request.go); a request made after
// its binding is closed is refused without reaching the miniport.
//
// Halt order, which a miniport's HaltEx follows (the reverse of its
// InitializeEx): free ports; cancel timers and wait for a handler already
// running; deregister the interrupt (stop and join the reader); fail queued
// sends; wait for every outstanding receive indication; stop the NIC; close
// the hardware; free NBLs, then their pool; free shared memory; free tagged
// memory; release the device registration. After HaltEx the verifier lists
// everything the adapter still has allocated.
package ndisshim
