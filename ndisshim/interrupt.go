package ndisshim

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
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

	// dpcMu is held while the DPC runs, on the interrupt goroutine or
	// through TryRunDPC; dead (under dpcMu) once Deregister has joined.
	dpcMu sync.Mutex
	dead  bool
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
		in.dpcMu.Lock()
		dpc()
		in.dpcMu.Unlock()
	}
}

// TryRunDPC runs dpc (a DPC body of this interrupt's device) now, on the
// caller's goroutine, under the interrupt's DPC exclusion: never at the
// same time as the interrupt's own DPC or another TryRunDPC. It does not
// wait: when the DPC is running, or the interrupt is deregistered, it
// returns false without running dpc. Since it never waits it may be called
// from another interrupt's DPC (the binding polls the NIC TAP's reader
// from within the miniport's receive DPC, and a send from that poll may
// try the miniport's: it finds that DPC running and returns false).
//
// This is how a miniport polls its receive ring from its send path (as a
// NIC whose one interrupt serves both send completion and receive does
// its receive work in the send-complete DPC): the reply to a small send is
// often in the ring before the send returns, and polling for it saves the
// interrupt goroutine's wake-up.
func (in *Interrupt) TryRunDPC(dpc func()) bool {
	if !in.dpcMu.TryLock() {
		return false
	}
	defer in.dpcMu.Unlock()
	if in.dead {
		return false
	}
	dpc()
	return true
}

// Deregister stops the source and joins the goroutine
// (NdisMDeregisterInterruptEx), then waits for a TryRunDPC in progress:
// after it returns the DPC never runs again.
// It must not be called from the DPC itself.
func (in *Interrupt) Deregister() error {
	in.once.Do(in.src.Stop)
	<-in.done
	in.dpcMu.Lock()
	in.dead = true
	in.dpcMu.Unlock()
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
//
// With OneWay the DPC waits only while the opposite direction is quiet (it
// moved fewer than one frame per ReverseRatio of this wake-up's since the
// DPC's previous wake-up): a one-way flood of small frames (UDP streaming)
// is moderated, but not the ACKs of a TCP transfer or any other traffic
// whose sender waits for what comes back, where a wait costs throughput.
//
// With Budget the wake-up after a wait takes at most Budget frames (the
// DPC asks Moderator.Limit), as a NIC whose interrupt is held back for the
// delay has only its receive ring to hold what arrives meanwhile. What
// arrives beyond it stays in the TAP's queue, which drops what overflows
// at the sending end (the kernel counts it as the TAP's tx_dropped). A
// one-way flood of small frames is then forwarded at most Budget frames
// per Delay and the wake-up's run, and the frames dropped at the TAP cost
// the DPC nothing; without a budget it forwards what the receiver cannot
// take either and drops it there, after the work (receive livelock: the
// work done for frames the consumer then drops takes the CPU the consumer
// needs). While the wake-ups do not wait (TCP, a ping, a slower flood)
// there is no budget.
type Moderation struct {
	Delay      time.Duration
	Frames     int
	SmallFrame int // 0: any size
	OneWay     bool
	Budget     int // 0: no budget
}

// ReverseRatio is how many frames of a wake-up one frame of the opposite
// direction may come with for the link to count as one-way.
const ReverseRatio = 16

// Moderator is one DPC's moderation: the settings and what the opposite
// direction had moved at the DPC's previous wake-up. Only its DPC uses it.
type Moderator struct {
	m           Moderation
	reverse     func() int64
	lastReverse int64
	waits       *atomic.Int64
	spent       *atomic.Int64
	waited      bool // the last After waited: the next run has the budget
}

// NewModerator returns the moderation of one DPC; reverse counts the frames
// the opposite direction has moved (it is read once per busy wake-up, and
// only with OneWay); waits, if not nil, counts the DPC's waits and spent
// the runs after a wait that took exactly their budget, all of it (DPCs
// may share counters).
func (m Moderation) NewModerator(reverse func() int64, waits, spent *atomic.Int64) *Moderator {
	d := &Moderator{m: m, reverse: reverse, waits: waits, spent: spent}
	if m.OneWay && reverse != nil {
		d.lastReverse = reverse()
	}
	return d
}

// Limit is how many frames the DPC's next run may take: the budget after
// a wait (Moderation.Budget), else limit, the DPC's own bound.
func (d *Moderator) Limit(limit int) int {
	if d.waited && d.m.Budget > 0 {
		return min(d.m.Budget, limit)
	}
	return limit
}

// After is called by the DPC at the end of a wake-up that handled frames
// frames of bytes bytes in all; it waits when the wake-up calls for it.
func (d *Moderator) After(frames, bytes int) {
	if d.waited && d.m.Budget > 0 && frames == d.m.Budget && d.spent != nil {
		d.spent.Add(1)
	}
	d.waited = d.wait(frames, bytes)
	if d.waited {
		if d.waits != nil {
			d.waits.Add(1)
		}
		moderationSleep(d.m.Delay)
	}
}

// wait reports whether a wake-up of frames frames and bytes bytes calls
// for a wait.
func (d *Moderator) wait(frames, bytes int) bool {
	m := d.m
	if m.Delay <= 0 || frames < max(m.Frames, 1) {
		return false
	}
	if m.SmallFrame > 0 && bytes > frames*m.SmallFrame {
		return false
	}
	if m.OneWay && d.reverse != nil {
		r := d.reverse()
		moved := r - d.lastReverse
		d.lastReverse = r
		if moved*ReverseRatio >= int64(frames) {
			return false
		}
	}
	return true
}

// moderationSleep is preciseSleep; tests record the calls instead.
var moderationSleep = preciseSleep

// preciseSleep waits d with nanosleep(2) on the calling thread, again for
// what is left when a signal cuts it short. Not time.Sleep: a Go timer
// whose goroutine's thread has nothing else to run waits in the runtime's
// epoll_pwait, whose timeout is in whole milliseconds, so time.Sleep(50µs)
// slept 1.05–1.13 ms on this machine, and every moderation delay under a
// millisecond was about one millisecond (BenchmarkModerationWait has the
// figures). The DPC's thread blocks for d, as it blocks in its interrupt
// source's poll(2) between wake-ups; nothing else waits on it then.
// After calls it only with a positive delay.
func preciseSleep(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}

// BulkRun is how many bytes one DPC run must read for its ring to count as
// carrying a bulk stream (about five full-size frames; adaptive interrupt
// moderation classes traffic by bytes per interrupt the same way). The
// polls after a small exchange skip a ring that carries one: the small
// frames are then the stream's ACKs, their "reply" is the stream's next
// large frames, and the poll would move that work onto the polling
// goroutine while the ring's own DPC, woken by the same frames, waits for
// it (measured: TCP 3-5 % slower that way).
const BulkRun = 8 << 10

// Poller is the handle another goroutine uses to run a ring's DPC body
// once after a small exchange (the miniport's receive poll after a small
// send, the binding's NIC TAP poll after a small indication). Arm it
// after RegisterInterrupt and Disarm it before Deregister; the DPC body
// reports every run with Ran, so a ring that carries a bulk stream (a run
// of more than BulkRun bytes) is left to its own DPC. Poll allocates
// nothing.
type Poller struct {
	intr atomic.Pointer[Interrupt]
	fn   func()
	bulk atomic.Bool
}

// Arm lets Poll run fn under in's DPC exclusion.
func (p *Poller) Arm(in *Interrupt, fn func()) {
	p.fn = fn
	p.intr.Store(in)
}

// Disarm stops new polls; Deregister then waits for one in progress.
func (p *Poller) Disarm() { p.intr.Store(nil) }

// Ran records one run of the DPC body (its own or a poll's) that read
// frames and bytes; a run that read nothing changes nothing.
func (p *Poller) Ran(frames, bytes int) {
	if bulk := bytes > BulkRun; frames > 0 && bulk != p.bulk.Load() {
		p.bulk.Store(bulk)
	}
}

// Poll runs the DPC body once on the caller's goroutine (TryRunDPC) unless
// the poller is disarmed, the ring carries a bulk stream, or the DPC is
// running; it reports whether it ran.
func (p *Poller) Poll() bool {
	in := p.intr.Load()
	if in == nil || p.bulk.Load() {
		return false
	}
	return in.TryRunDPC(p.fn)
}
