package ndisshim

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// InterruptSource is the hardware's interrupt line. Wait blocks until the
// device has work, and returns ErrInterruptStopped once Stop has been called
// (or another error when the device failed). Stop must unblock a Wait in
// progress; it is called once, from DeregisterInterrupt. For a TAP the
// source is a poll on the TAP fd plus an eventfd that Stop writes (gVisor's
// stopfd): the fd is never closed under a blocked reader.
type InterruptSource interface {
	Wait() error
	Stop()
}

// ErrInterruptStopped is what InterruptSource.Wait returns after Stop.
var ErrInterruptStopped = errors.New("interrupt stopped")

// Interrupt is a registered interrupt (NdisMRegisterInterruptEx): one
// goroutine that waits on the source and runs the DPC after each wake-up,
// so the DPC never runs concurrently with itself.
type Interrupt struct {
	owner *Resources
	name  string
	src   InterruptSource
	where string
	at    time.Time
	done  chan struct{}
	err   error // why the loop ended, when not by Deregister

	once sync.Once
}

// RegisterInterrupt starts the interrupt's goroutine (NdisMRegisterInterruptEx):
// it calls dpc each time src.Wait returns nil. If Wait fails with anything
// but ErrInterruptStopped the loop ends and onError (if not nil) is called
// with the error: that is how a miniport learns its device is gone.
func (r *Resources) RegisterInterrupt(name string, src InterruptSource, dpc func(), onError func(error)) (*Interrupt, error) {
	if src == nil || dpc == nil {
		return nil, fmt.Errorf("ndisshim: interrupt %q: source and DPC are required", name)
	}
	if err := r.live("RegisterInterrupt"); err != nil {
		return nil, err
	}
	in := &Interrupt{owner: r, name: name, src: src, where: callerSite(1), at: time.Now(), done: make(chan struct{})}
	r.mu.Lock()
	r.interrupts[in] = struct{}{}
	r.mu.Unlock()
	go in.routine(dpc, onError)
	return in, nil
}

// routine is the long-lived interrupt goroutine (the ISR + DPC).
func (in *Interrupt) routine(dpc func(), onError func(error)) {
	defer close(in.done)
	for {
		err := in.src.Wait()
		if errors.Is(err, ErrInterruptStopped) {
			return
		}
		if err != nil {
			in.err = err
			if onError != nil {
				onError(err)
			}
			return
		}
		dpc()
	}
}

// Deregister stops the source and joins the goroutine
// (NdisMDeregisterInterruptEx): after it returns the DPC never runs again.
// It must not be called from the DPC itself.
func (in *Interrupt) Deregister() error {
	in.once.Do(in.src.Stop)
	<-in.done
	r := in.owner
	r.mu.Lock()
	_, ok := r.interrupts[in]
	delete(r.interrupts, in)
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("ndisshim: interrupt %q deregistered twice", in.name)
	}
	return nil
}

// Err is why the interrupt loop ended on its own (nil if it did not).
// Valid after Deregister.
func (in *Interrupt) Err() error { return in.err }

// Moderation is interrupt moderation (a NIC's *InterruptModeration
// keyword, adaptive as NICs do it): after a wake-up whose DPC handled at
// least Frames frames averaging at most SmallFrame bytes (a flood of small
// frames, where every frame costs a syscall), the DPC waits Delay before
// it returns, so that the next wake-up finds a bigger batch: fewer
// wake-ups, fewer and bigger indications and sends, and CPU left to the
// rest of the machine. Large frames (64 KiB TCP sends) and a quiet link (a
// ping) never wait. The zero value is off.
type Moderation struct {
	Delay      time.Duration
	Frames     int
	SmallFrame int // 0: any size
}

// After is called by a DPC at the end of a wake-up that handled frames
// frames of bytes bytes in all.
func (m Moderation) After(frames, bytes int) {
	if m.Delay <= 0 || frames < max(m.Frames, 1) {
		return
	}
	if m.SmallFrame > 0 && bytes > frames*m.SmallFrame {
		return
	}
	moderationSleep(m.Delay)
}

// moderationSleep is time.Sleep; tests record the calls instead.
var moderationSleep = time.Sleep
