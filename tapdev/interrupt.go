package tapdev

import (
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tapminiport/tapminiport/ndisshim"
)

var _ ndisshim.InterruptSource = (*interruptSource)(nil)

// interruptSource is a Dev's interrupt line: poll(2) on the data fd and the
// Dev's eventfd (gVisor's stopfd).
type interruptSource struct {
	d       *Dev
	stopped atomic.Bool
	fds     [2]unix.PollFd // used only by the one waiter; kept here so Wait does not allocate
}

// Interrupt returns the Dev's interrupt line for ndisshim.RegisterInterrupt.
// There is one per Dev: every call returns the same source, and once
// stopped it stays stopped. It is level-triggered: Wait returns nil again
// at once while frames are left, so the DPC should drain with ReadBatch
// until it returns 0.
//
//   - Wait blocks until the fd is readable (returns nil), Stop is called
//     (ndisshim.ErrInterruptStopped), the Dev is closed (an os.ErrClosed
//     error), or the device is gone: POLLERR/POLLHUP/POLLNVAL on the fd
//     (an ErrDeviceGone error naming the device and the revents). Device
//     gone wins over readable: frames still queued on a socketpair whose
//     peer hung up are not delivered. Only one goroutine may Wait at a time.
//   - Stop writes the eventfd, so a Wait in progress returns and every later
//     Wait returns at once. It never closes the fd. It is idempotent and
//     safe after Close.
func (d *Dev) Interrupt() ndisshim.InterruptSource { return &d.intr }

// Wait implements ndisshim.InterruptSource.
func (s *interruptSource) Wait() error {
	d := s.d
	if s.stopped.Load() {
		return ndisshim.ErrInterruptStopped
	}
	d.gate.RLock()
	defer d.gate.RUnlock()
	if d.closed {
		return d.errClosed("interrupt wait")
	}
	s.fds[0] = unix.PollFd{Fd: int32(d.fd), Events: unix.POLLIN}
	s.fds[1] = unix.PollFd{Fd: int32(d.efd), Events: unix.POLLIN}
	for {
		_, err := poll(s.fds[:], -1)
		if err == unix.EINTR {
			continue
		}
		if err == unix.ENOMEM {
			// The kernel could not allocate poll's tables this time:
			// not a dead device, so try again shortly rather than end
			// the receive path for good on a passing shortage. A stop
			// or a Close (which waits for this read lock) still ends
			// the wait: poll would have seen their eventfd.
			time.Sleep(time.Millisecond)
			if s.stopped.Load() {
				return ndisshim.ErrInterruptStopped
			}
			if d.closing.Load() {
				return d.errClosed("interrupt wait")
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("tapdev %s: interrupt wait: poll: %w", d.name, err)
		}
		if s.fds[1].Revents != 0 || s.stopped.Load() {
			if d.closing.Load() && !s.stopped.Load() {
				return d.errClosed("interrupt wait")
			}
			return ndisshim.ErrInterruptStopped
		}
		r := s.fds[0].Revents
		if r&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			return fmt.Errorf("tapdev %s: interrupt wait: %w (poll revents %#x)", d.name, ErrDeviceGone, r)
		}
		if r&unix.POLLIN != 0 {
			return nil
		}
	}
}

// Stop implements ndisshim.InterruptSource.
func (s *interruptSource) Stop() {
	if s.stopped.CompareAndSwap(false, true) {
		s.d.kick()
	}
}

// poll is unix.Poll; a variable so that a test can make it fail.
var poll = unix.Poll
