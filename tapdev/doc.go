// Package tapdev is the one place in tapminiport that speaks ioctl and
// netlink. It owns three things:
//
//   - Dev: one frame-oriented file descriptor — a TAP queue (OpenTAP) or one
//     end of a SOCK_SEQPACKET socketpair (Socketpair, the fake hardware for
//     tests without root) — with batch reads and writes and an interrupt
//     line (Interrupt) for ndisshim.RegisterInterrupt.
//   - Link and namespace helpers over netlink: ConfigureLink, MoveLink,
//     DeleteLink, LinkStats, WatchLinkRemoval, CreateNetns, DeleteNetns ...
//   - Test helpers for privileged tests (privtest.go): RequireRoot,
//     RequireTool, TempNetns, RandomName.
//
// # The fd
//
// A Dev holds a plain, non-blocking, close-on-exec fd that is NOT
// registered with the Go runtime poller: reads and writes are direct
// syscalls that return EAGAIN instead of parking the goroutine, and waiting
// is the Interrupt's job. TAPs are opened through github.com/songgao/water;
// water hands back an *os.File whose fd has no FD_CLOEXEC and is registered
// with the poller, so OpenTAP duplicates it with F_DUPFD_CLOEXEC inside
// (*os.File).SyscallConn().Control (never (*os.File).Fd(), which would turn
// the shared file description blocking) and closes water's file. The dup
// shares the open file description, so the queue stays attached to the TAP.
// All of it happens under syscall.ForkLock (read side), so no exec in
// another goroutine inherits the brief non-cloexec fd.
//
// # Data flow and buffer ownership
//
//	device ──read(2)──▶ ReadBatch(bufs) ──▶ caller      (caller owns bufs throughout)
//	caller ──WriteBatch(bufs, res)──write(2)──▶ device  (bufs are free again on return)
//
// Neither call keeps a reference to any buffer after it returns, allocates,
// or takes a lock other than the Dev's read-side gate (one RLock per batch,
// not per frame). The kernel copies on both sides.
//
// A frame longer than the buffer it is read into never reaches the caller:
// the kernel would copy what fits and report at most the buffer's length
// (a TAP's read returns min(frame, buffer)), so each read is a readv(2)
// into the buffer plus one guard byte, and a read that reaches the guard
// is dropped and counted (Counters.RxOversize). sizes[i] <= len(bufs[i]).
//
// # Interrupt and teardown (gVisor's stopfd)
//
// Interrupt().Wait blocks in poll(2) on the data fd and an eventfd. Stop
// writes the eventfd; the data fd is never closed under a blocked Wait.
// Teardown order for a user: Interrupt().Stop → join the waiter → Close.
// Close itself is safe against calls in flight: it kicks the eventfd, then
// takes the gate exclusively (waiting for ReadBatch/WriteBatch/Wait in
// progress), then closes both fds; later calls fail with os.ErrClosed.
//
// # Surprise removal
//
// When the TAP's link is deleted under an open queue (ip link del, or its
// namespace going away) the kernel detaches the queue: poll(2) reports
// POLLERR (revents 0x8), and read(2) and write(2) fail with EBADFD ("file
// descriptor in bad state"). Wait, ReadBatch and WriteBatch report that as
// an error wrapping ErrDeviceGone (and the errno), naming the device. For a
// socketpair end the same happens when the peer is closed: poll reports
// POLLHUP, read returns 0 (EOF) and write fails with EPIPE.
// WatchLinkRemoval tells the same story from the netlink side.
//
// # Namespaces
//
// Network namespaces belong to OS threads. This package never switches a
// pooled thread's namespace: netlink work goes through
// netlink.NewHandleAt(ns), and the few things that must run inside a
// namespace (creating one, opening a TAP in one) run on a throwaway
// goroutine that locks its OS thread, switches back to the original
// namespace when done, and exits without unlocking so the runtime discards
// the thread. ns == "" means the current (root) namespace everywhere.
package tapdev
