package tapdev

// Batched reads through io_uring: one io_uring_enter(2) reads up to
// uringEntries frames (one IORING_OP_READV per buffer, RWF_NOWAIT), where
// read(2) costs one system call per frame. A TAP has no batch read (no
// recvmmsg on a character device), and with speculative-execution
// mitigations the system call entry and exit are a large part of moving a
// small frame. A read that finds the queue empty costs about as much in
// the ring as read(2) does, so ReadBatch reads the first ringAfter frames
// of a call with read(2) and only a queue still deep after them goes
// through the ring (measured: BenchmarkReadBatch, and in the UDP 64-byte
// flood of scripts/bench.sh).
//
// The ring is private to one Dev's reader (ReadBatch has one caller at a
// time), so it needs no lock. Every read completes inline: RWF_NOWAIT
// makes an empty queue answer -EAGAIN at once instead of arming a poll, so
// when io_uring_enter returns no read is in flight and the caller owns its
// buffers again, as with read(2). Each read is a readv into the buffer and
// one guard byte behind it, as Dev.readFrame does with read(2): the kernel
// never reports more than the iovecs hold, so a read that reaches the
// guard is a frame longer than its buffer (dropped, counted as
// RxOversize). Where io_uring is missing or refused
// (ENOSYS, EPERM from kernel.io_uring_disabled or a seccomp filter), or
// TAPDEV_IO_URING=0 is in the environment, the Dev reads with read(2); a
// ring the kernel cannot take reads into for the moment (io_uring_enter:
// EAGAIN, ENOMEM, EBUSY, or no read taken and no error) has that call's
// remaining frames read with read(2).

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The io_uring ABI (include/uapi/linux/io_uring.h): what x/sys/unix lacks.
const (
	sysIOURingSetup = 425
	sysIOURingEnter = 426

	ioringOpReadv          = 1
	ioringEnterGetevents   = 1 << 0
	ioringSetupSubmitAll   = 1 << 7
	ioringSetupCoopTaskrun = 1 << 8
	ioringFeatSingleMmap   = 1 << 0
	ioringOffSQRing        = 0
	ioringOffCQRing        = 0x8000000
	ioringOffSQEs          = 0x10000000
	rwfNowait              = 0x8
)

type ioSQRingOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type ioCQRingOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type ioURingParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  ioSQRingOffsets
	cqOff                                                                  ioCQRingOffsets
}

type ioURingSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	rwFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	pad2        uint64
}

type ioURingCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// uringEntries is the most reads one io_uring_enter submits (the largest
// batch tapminiport's --batch allows is read in chunks of it).
const uringEntries = 64

var errURingOff = errors.New("io_uring turned off")

// uring is one io_uring instance sized for a batch of reads.
type uring struct {
	fd      int
	entries uint32
	rings   []byte // the SQ and CQ rings (one mapping: IORING_FEAT_SINGLE_MMAP)
	sqeMem  []byte

	sqHead, sqTail, cqHead, cqTail *uint32
	sqMask, cqMask                 uint32
	sqArray                        []uint32
	sqes                           []ioURingSQE
	cqes                           []ioURingCQE

	// iovs: two per read, the caller's buffer and the guard byte
	// (readBatch sets the first and clears it when the reads are done,
	// so no buffer is referenced between calls; the second always points
	// at guard, whose content is never looked at).
	iovs  []unix.Iovec
	guard [1]byte

	// enter is io_uring_enter(2) with IORING_ENTER_GETEVENTS on this
	// ring: it returns how many SQEs the kernel took. A field so that a
	// test can make the kernel take fewer than asked (a short submit).
	enter func(toSubmit, minComplete uint32) (int, unix.Errno)
}

// useURing is on unless TAPDEV_IO_URING=0 (bench.sh's tapminiport-read) or
// SetIOURing(false) (tests); a Dev opened while it is off reads with
// read(2).
var useURing atomic.Bool

func init() { useURing.Store(os.Getenv("TAPDEV_IO_URING") != "0") }

// SetIOURing chooses whether Devs opened from now on batch their reads
// through io_uring (the default) or read with read(2).
func SetIOURing(on bool) { useURing.Store(on) }

// newURing sets up a ring for batches of up to n reads.
func newURing(n int) (*uring, error) {
	var p ioURingParams
	p.flags = ioringSetupSubmitAll | ioringSetupCoopTaskrun
	fd, _, errno := unix.Syscall(sysIOURingSetup, uintptr(n), uintptr(unsafe.Pointer(&p)), 0)
	if errno == unix.EINVAL { // a kernel older than 5.19 refuses the setup flags
		p = ioURingParams{}
		fd, _, errno = unix.Syscall(sysIOURingSetup, uintptr(n), uintptr(unsafe.Pointer(&p)), 0)
	}
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &uring{fd: int(fd), entries: p.sqEntries}
	// io_uring_setup's fd is O_CLOEXEC already (io_uring_install_fd).
	fail := func(op string, err error) (*uring, error) {
		r.close()
		return nil, fmt.Errorf("io_uring %s: %w", op, err)
	}
	if p.features&ioringFeatSingleMmap == 0 {
		return fail("setup", fmt.Errorf("kernel without IORING_FEAT_SINGLE_MMAP (older than 5.4)"))
	}
	size := max(int(p.sqOff.array)+int(p.sqEntries)*4, int(p.cqOff.cqes)+int(p.cqEntries)*int(unsafe.Sizeof(ioURingCQE{})))
	var err error
	r.rings, err = unix.Mmap(r.fd, ioringOffSQRing, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fail("mmap rings", err)
	}
	r.sqeMem, err = unix.Mmap(r.fd, ioringOffSQEs, int(p.sqEntries)*int(unsafe.Sizeof(ioURingSQE{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fail("mmap sqes", err)
	}
	base := unsafe.Pointer(&r.rings[0])
	u32 := func(off uint32) *uint32 { return (*uint32)(unsafe.Add(base, off)) }
	r.sqHead, r.sqTail = u32(p.sqOff.head), u32(p.sqOff.tail)
	r.cqHead, r.cqTail = u32(p.cqOff.head), u32(p.cqOff.tail)
	r.sqMask, r.cqMask = *u32(p.sqOff.ringMask), *u32(p.cqOff.ringMask)
	r.sqArray = unsafe.Slice(u32(p.sqOff.array), p.sqEntries)
	r.sqes = unsafe.Slice((*ioURingSQE)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.cqes = unsafe.Slice((*ioURingCQE)(unsafe.Add(base, p.cqOff.cqes)), p.cqEntries)
	r.enter = r.sysEnter
	r.iovs = make([]unix.Iovec, 2*p.sqEntries)
	for i := 1; i < len(r.iovs); i += 2 {
		r.iovs[i] = unix.Iovec{Base: &r.guard[0], Len: 1}
	}
	return r, nil
}

// readBatch reads into bufs[:k] with k = min(len(bufs), entries) reads in
// one io_uring_enter: frames land in bufs in order, sizes[i] for bufs[i].
// It returns how many frames were read, how many were dropped as longer
// than their buffer (oversize; their buffer is a hole like an EAGAIN's)
// and, for the first read that failed with something other than EAGAIN,
// its errno (and whether it was EOF). Reads after an EAGAIN or a dropped
// frame that found a frame are kept: their frame is moved down so bufs[:n]
// has no hole, which is why every buffer of the batch must be as long as
// the first. n+oversize < k with errno 0 means some read found the queue
// empty. When io_uring_enter did not take every read, errno is what it
// failed with, EAGAIN if it took none and named no error: the reads not
// taken are holes that say nothing about the queue.
func (r *uring) readBatch(fd int, bufs [][]byte, sizes []int) (n, oversize int, eof bool, errno unix.Errno) {
	k := min(len(bufs), int(r.entries))
	tail := atomic.LoadUint32(r.sqTail)
	for i := 0; i < k; i++ {
		idx := (tail + uint32(i)) & r.sqMask
		iov := &r.iovs[2*i]
		iov.Base = nil
		if len(bufs[i]) > 0 {
			iov.Base = &bufs[i][0]
		}
		iov.SetLen(len(bufs[i]))
		r.sqes[idx] = ioURingSQE{opcode: ioringOpReadv, fd: int32(fd), addr: uint64(uintptr(unsafe.Pointer(iov))), len: 2, rwFlags: rwfNowait, userData: uint64(i)}
		r.sqArray[idx] = idx
	}
	end := tail + uint32(k)
	atomic.StoreUint32(r.sqTail, end)
	// min_complete k: the kernel returns once all k reads have completed,
	// which they do inline. It may take fewer SQEs than it is given (it
	// could not allocate a request or, without IORING_SETUP_SUBMIT_ALL, an
	// SQE failed its prep): then it returns that count at once, without
	// waiting, and the rest stay in the SQ, so submit them again until
	// all k are taken. It fails only when it took nothing in that call
	// (EINTR: a signal during the wait, so retry). A failure, or a call
	// that takes nothing, ends it: the SQEs not taken are taken back (the
	// tail moves back to the head; only this reader submits), so that no
	// SQE of this batch, with its buffer and its read index, is ever
	// submitted by a later call. Their reads are holes, like an EAGAIN's,
	// but unlike one they say nothing about the queue, so the call
	// reports an errno: the failure's, or EAGAIN for a call that took
	// nothing and named no error (the kernel could not take them now).
	// Otherwise the caller would take the holes for an empty queue and
	// leave frames queued until the next wake-up.
	for {
		head := atomic.LoadUint32(r.sqHead)
		if head == end {
			break
		}
		taken, e := r.enter(end-head, uint32(k))
		if e == unix.EINTR {
			continue
		}
		if e == 0 && taken > 0 {
			continue
		}
		if e == 0 {
			e = unix.EAGAIN
		}
		head = atomic.LoadUint32(r.sqHead)
		atomic.StoreUint32(r.sqTail, head)
		if head == tail { // nothing taken at all
			r.clearIovs(k)
			return 0, 0, false, e
		}
		// Some reads were taken: reap what completed.
		errno = e
		break
	}
	runtime.KeepAlive(bufs)
	r.clearIovs(k)
	// Every read completes inline (RWF_NOWAIT), so all k completions are
	// posted: sizes by read index first, then compacted in order.
	for i := range k {
		sizes[i] = -1
	}
	head := atomic.LoadUint32(r.cqHead)
	ctail := atomic.LoadUint32(r.cqTail)
	for ; head != ctail; head++ {
		c := &r.cqes[head&r.cqMask]

		i := int(c.userData)
		if i >= k {
			continue
		}
		switch {
		case int(c.res) > len(bufs[i]): // reached the guard: the frame did not fit
			sizes[i] = -1
			oversize++
		case c.res > 0:
			sizes[i] = int(c.res)
		case c.res == 0:
			sizes[i] = 0
		default:
			sizes[i] = -1
			if e := unix.Errno(-c.res); e != unix.EAGAIN && e != unix.EINTR && errno == 0 {
				errno = e
			}
		}
	}
	atomic.StoreUint32(r.cqHead, head)
	for i := range k {
		switch s := sizes[i]; {
		case s > 0:
			if i != n {
				copy(bufs[n], bufs[i][:s])
			}
			sizes[n] = s
			n++
		case s == 0:
			eof = true
		}
	}
	return n, oversize, eof, errno
}

// sysEnter is io_uring_enter(r.fd, toSubmit, minComplete,
// IORING_ENTER_GETEVENTS): the number of SQEs taken, or the errno.
func (r *uring) sysEnter(toSubmit, minComplete uint32) (int, unix.Errno) {
	n, _, e := unix.Syscall6(sysIOURingEnter, uintptr(r.fd), uintptr(toSubmit), uintptr(minComplete), ioringEnterGetevents, 0, 0)
	return int(n), e
}

// clearIovs drops the references to the caller's buffers of the first k
// reads.
func (r *uring) clearIovs(k int) {
	for i := range k {
		r.iovs[2*i] = unix.Iovec{}
	}
}

func (r *uring) close() {
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	if r.rings != nil {
		unix.Munmap(r.rings)
	}
	unix.Close(r.fd)
}
