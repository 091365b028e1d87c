// Package hoststack is the protocol binding that plays the kernel stack
// (tcpip.sys): it binds to an adapter through ndisshim and joins it to a
// second TAP, the "NIC TAP" (tm0 by default) that the host's own kernel
// stack sees as the network interface. ping, iperf3 and ssh run on tm0.
//
// Receive (wire → host): the miniport's indication arrives on the
// miniport's DPC goroutine, which writes every frame of the chain to tm0 at
// once, in order (RESOURCES or not, so frames are never reordered). With
// RESOURCES that is all: ownership returns when the call returns. Without
// it the protocol owns the chain until it returns it: at once when
// ReturnDelay is 0; otherwise the chain goes into a bounded queue (one entry
// per indication) and the returner goroutine (routineReturn) holds it at
// least ReturnDelay, checks its bytes when CheckHeld is set, and returns the
// whole chain with one ReturnNetBufferLists. A full queue returns the chain
// at once (counted as ReturnedEarly).
//
// Send (host → wire): the reader goroutine (an ndisshim interrupt on tm0's
// fd, one per queue with Config.Queues) reads frames the host sends
// straight into NBLs of the binding's own send pool, chains a batch and
// sends it with one SendNetBufferLists; the completion frees the chain back
// to the pool in one call. What the miniport does not offload, the binding
// segments and checksums in software, and it joins a flow's small UDP
// datagrams into one USO send (queue.go, coalesce.go).
package hoststack

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/tapdev"
)

// ProtocolName is the binding's name in reports ("held by hoststack").
const ProtocolName = "hoststack"

// Device is the NIC TAP seam (a *tapdev.Dev, or a socketpair end in tests).
type Device = tapdev.FrameDevice

// Config is the binding's blueprint.
type Config struct {
	NICName     string         // the NIC TAP, e.g. "tm0"
	Netns       string         // namespace for the NIC TAP ("" = the current one)
	Addrs       []netip.Prefix // addresses for the NIC TAP
	ReturnDelay time.Duration  // hold each indicated NBL at least this long
	QueueLen    int            // indications queued for the writer (default 1024)
	SendNBLs    int            // NBLs in the send pool (default 512)
	Batch       int            // frames per send chain (default 64)
	// CheckHeld hashes every held frame on receive and checks the hash
	// before writing it: a buffer freed or reused under the stack shows up
	// as CorruptHeld (or a fault, since the slab is mmap'd).
	CheckHeld bool
	// VnetHdr asks for checksum and segmentation offload on the NIC TAP
	// (IFF_VNET_HDR + TUNSETOFFLOAD csum, TSO4, TSO6, and USO4, USO6 where
	// the kernel takes them): large frames and partial checksums cross
	// between the host's kernel and the binding. What the miniport does not
	// offer (OID_TCP_OFFLOAD_CURRENT_CONFIG) the binding segments and
	// checksums in software before sending, as tcpip.sys does for a NIC
	// without LSO; without VnetHdr it does the same for what the miniport
	// indicates (large receives, partial checksums), since a plain TAP can
	// take neither.
	VnetHdr bool
	// CoalesceUDP joins consecutive same-size datagrams of one flow read
	// from the NIC TAP into one USO send when the miniport offers USO and
	// checksum offload (see coalesce.go).
	CoalesceUDP bool
	// Moderation is the NIC TAP reader's interrupt moderation.
	Moderation ndisshim.Moderation
	// PollOnReceive: after writing a small indication
	// (ndisshim.SmallExchange: an echo request, a SYN, a DNS query) to the
	// NIC TAP, run the reader of the queue it was written on once, on the
	// indicating goroutine, when that reader is idle. The host's kernel
	// answers inside the TAP write, so its reply goes down without waiting
	// for the reader's wake-up, as tcpip.sys sends such a reply from
	// within its receive handler.
	PollOnReceive bool
	// Queues is the NIC TAP's number of queues (a multi-queue TAP, one
	// reader per queue); 0 means 1.
	Queues int
	// Open opens queue `queue` of the NIC TAP (default: tapdev, created
	// when missing). A device that says nothing of its offloads
	// (Offloads() uint) is taken to do checksum, TSO4 and TSO6.
	Open func(name string, queue int) (Device, bool, error)
	// Configure sets up the NIC TAP: namespace, MAC, MTU, addresses, up
	// (default: tapdev/netlink). nil with Open set skips it.
	Configure func(c Config, mac net.HardwareAddr, mtu int) error
	Log       *slog.Logger
}

// Validate checks the blueprint; errors name the field.
func (c Config) Validate() error {
	switch {
	case c.NICName == "" || len(c.NICName) > 15:
		return fmt.Errorf("hoststack: NIC TAP name %q must be 1..15 characters", c.NICName)
	case c.ReturnDelay < 0:
		return fmt.Errorf("hoststack: return delay %s is negative", c.ReturnDelay)
	case c.Queues < 0 || c.Queues > 16:
		return fmt.Errorf("hoststack: queues %d out of range 1..16", c.Queues)
	case c.QueueLen < 0 || c.SendNBLs < 0 || c.Batch < 0:
		return errors.New("hoststack: queue length, send NBLs and batch must not be negative")
	}
	return nil
}

// Counters are the binding's statistics.
type Counters struct {
	// Frames count what crosses the NIC TAP and the miniport as the far
	// side sees it (segments of a frame cut in software, each datagram of a
	// coalesced send); ToHostBytes counts the frames as indicated,
	// ToWireBytes as sent down (a frame cut in software: its segments,
	// headers included).
	ToHostFrames, ToHostBytes int64 // written to the NIC TAP
	ToWireFrames, ToWireBytes int64 // read from the NIC TAP and sent down
	ReturnedEarly             int64 // NBLs returned at once, not held: the hold queue was full
	DropPaused                int64 // host frames read while the binding was paused
	DropNoSendBuffer          int64 // host frames dropped, or the rest of one cut in software: every send NBL in flight
	SendFailed                int64 // sends completed with a failure status
	ResourcesWrites           int64 // frames written during a RESOURCES indication
	CorruptHeld               int64 // held frames whose bytes changed (CheckHeld)
	WriteErrors               int64 // frames to the host a write failed or the NIC TAP refused (EINVAL)
	ToHostNoRoom              int64 // frames to the host the NIC TAP had no room for (EAGAIN, ENOBUFS)
	DropBadVnetHdr            int64 // host frames with a malformed virtio-net header
	DropOversize              int64 // host frames longer than a send buffer (the NIC TAP's MTU raised past the adapter's): dropped by the read
	// Software offload: frames the binding segmented or checksummed
	// because the other side could not take them as they were.
	SegmentedToHost, SegmentedToWire     int64 // large frames cut into segments
	ChecksummedToHost, ChecksummedToWire int64 // partial checksums finished
	DropSegment                          int64 // large frames that could not be cut (malformed, or no room)
	Coalesced                            int64 // host datagrams sent inside another's USO send
	ModerationWaits                      int64 // NIC TAP reader waits for interrupt moderation (all queues)
	ModerationSpent                      int64 // NIC TAP reader runs after a wait that took the whole budget (all queues)
	// PollOnReceive: reader runs after small indications, and the host
	// frames they read and sent down
	Polls, PollFrames int64
}

type held struct {
	head *ndisshim.NetBufferList
	n    int
	at   time.Time
}

// Stack is the binding. It implements ndisshim.Protocol.
type Stack struct {
	cfg     Config
	log     *slog.Logger
	b       *ndisshim.Binding
	queues  []*nicQueue // the NIC TAP's queues, queue 0 first
	created bool
	mtu     int
	vnet    int // bytes of virtio-net header before each frame on the NIC TAP
	// nicOffloads: TUN_F_* offloads the NIC TAP took (with vnet);
	// caps: what the miniport offers (OID_TCP_OFFLOAD_CURRENT_CONFIG).
	nicOffloads uint
	caps        ndisshim.OffloadCaps

	sendPool *ndisshim.NBLPool
	sendSlab *ndisshim.SharedMemory
	bufSize  int

	q      chan held
	stop   chan struct{}
	wg     sync.WaitGroup
	paused atomic.Bool
	closed bool
	moved  bool // the default Configure moved the NIC TAP into cfg.Netns
	// returnMu serializes ReturnAttachedNIC: the unbind and a forced exit
	// may both move the TAP home at once.
	returnMu sync.Mutex

	toHostFrames, toHostBytes, toWireFrames, toWireBytes atomic.Int64
	modWaits                                             atomic.Int64 // the readers' moderation waits
	modSpent                                             atomic.Int64 // the readers' runs that took the whole moderation budget
	returnedEarly, dropPaused, dropNoSendBuffer          atomic.Int64
	sendFailed, resourcesWrites, corruptHeld, writeErrs  atomic.Int64
	dropBadVnetHdr, dropOversize, toHostNoRoom           atomic.Int64
	writeWarned                                          atomic.Bool // the first write error was logged
	segToHost, segToWire, csumToHost, csumToWire         atomic.Int64
	dropSegment, coalesced                               atomic.Int64
	polls, pollFrames                                    atomic.Int64
}

var _ ndisshim.Protocol = (*Stack)(nil)

// Bind opens the adapter (which must be Paused), learns the NIC's address
// and frame size by OID, sets the packet filter, opens and configures the
// NIC TAP, allocates the send pool and starts the reader and the writer.
// On error it undoes what it did.
func Bind(a *ndisshim.Adapter, cfg Config) (s *Stack, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.QueueLen == 0 {
		cfg.QueueLen = 1024
	}
	if cfg.SendNBLs == 0 {
		cfg.SendNBLs = 512
	}
	if cfg.Batch == 0 {
		cfg.Batch = 64
	}
	if cfg.Queues == 0 {
		cfg.Queues = 1
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	movesLink := cfg.Open == nil && cfg.Configure == nil && cfg.Netns != ""
	if cfg.Open == nil {
		vnet, queues := cfg.VnetHdr, cfg.Queues
		cfg.Open = func(name string, _ int) (Device, bool, error) {
			d, created, err := tapdev.OpenQueue(name, vnet, queues)
			if err != nil {
				return nil, false, err
			}
			return d, created, nil
		}
		if cfg.Configure == nil {
			cfg.Configure = configureTAP
		}
	}
	s = &Stack{cfg: cfg, log: cfg.Log.With("binding", ProtocolName), q: make(chan held, cfg.QueueLen), stop: make(chan struct{})}
	s.paused.Store(true) // a binding opens on a Paused adapter and is paused until NetEventRestart
	if s.b, err = a.OpenAdapter(ProtocolName, s); err != nil {
		return nil, err
	}
	st := s // "return nil, err" clears s before the deferred undo runs
	defer func() {
		if err != nil {
			_ = st.undo()
		}
	}()
	mac, mtu, err := s.learn()
	if err != nil {
		return nil, err
	}
	s.mtu = mtu
	s.caps = s.miniportOffloads()
	if cfg.VnetHdr {
		s.vnet = tapdev.VnetHdrLen
	}
	for i := 0; i < cfg.Queues; i++ {
		dev, created, err := cfg.Open(cfg.NICName, i)
		if err != nil {
			if cfg.Queues > 1 {
				return nil, fmt.Errorf("hoststack: open NIC TAP %s queue %d of %d: %w", cfg.NICName, i, cfg.Queues, err)
			}
			return nil, fmt.Errorf("hoststack: open NIC TAP %s: %w", cfg.NICName, err)
		}
		if i == 0 {
			s.created = created
		}
		s.queues = append(s.queues, newNICQueue(s, i, dev))
	}
	if s.vnet > 0 {
		s.nicOffloads = tapdev.DeviceOffloads(s.queues[0].dev)
	}
	if cfg.Configure != nil {
		s.moved = movesLink
		if err = cfg.Configure(cfg, mac, mtu); err != nil {
			return nil, fmt.Errorf("hoststack: configure NIC TAP %s: %w", cfg.NICName, err)
		}
	}
	s.bufSize = (sendHeadroom + mtu + 14 + 4 + 63) &^ 63
	if s.vnet > 0 {
		s.bufSize = (sendHeadroom + 65535 + 14 + 4 + 63) &^ 63 // a large send: up to a 64 KiB IP packet
	}
	if s.sendSlab, err = s.b.AllocateSharedMemory(s.bufSize * cfg.SendNBLs); err != nil {
		return nil, err
	}
	if s.sendPool, err = s.b.AllocateNBLPool(ndisshim.NBLPoolParams{Tag: ndisshim.MakeTag("TMtx"), Count: cfg.SendNBLs, WithNB: true}); err != nil {
		return nil, err
	}
	for i := 0; i < cfg.SendNBLs; i++ {
		s.sendPool.NBL(i).FirstNB.Data = s.sendSlab.Bytes[i*s.bufSize : (i+1)*s.bufSize : (i+1)*s.bufSize]
	}
	s.wg.Add(1)
	go s.routineReturn()
	for _, q := range s.queues {
		name := cfg.NICName + " reader"
		if len(s.queues) > 1 {
			name = fmt.Sprintf("%s reader%d", cfg.NICName, q.index)
		}
		if q.intr, err = s.b.RegisterInterrupt(name, q.dev.Interrupt(), q.readFromNIC, s.readerError); err != nil {
			return nil, err
		}
		q.poller.Arm(q.intr, q.poll)
	}
	s.log.Info("bound", "adapter", a.Name(), "nic", cfg.NICName, "created", s.created, "mac", mac.String(), "mtu", mtu, "netns", cfg.Netns,
		"queues", len(s.queues), "nic_offloads", tapdev.OffloadNames(s.nicOffloads), "miniport_offloads", capsString(s.caps),
		"reads", tapdev.ReadPathOf(s.queues[0].dev))
	return s, nil
}

// learn asks the miniport for its address and frame size and sets the
// packet filter, as tcpip.sys does when it binds.
func (s *Stack) learn() (net.HardwareAddr, int, error) {
	q := ndisshim.NewQuery(ndisshim.OID8023CurrentAddress, 6)
	if st := s.b.OIDRequest(q); st != ndisshim.StatusSuccess {
		return nil, 0, fmt.Errorf("hoststack: query %s: %w", q.OID, st)
	}
	mac := net.HardwareAddr(append([]byte(nil), q.Answer()...))
	q = ndisshim.NewQuery(ndisshim.OIDGenMaximumFrameSize, 4)
	if st := s.b.OIDRequest(q); st != ndisshim.StatusSuccess {
		return nil, 0, fmt.Errorf("hoststack: query %s: %w", q.OID, st)
	}
	mtu := int(q.AnswerUint32())
	set := ndisshim.NewSetUint32(ndisshim.OIDGenCurrentPacketFilter,
		ndisshim.PacketTypeDirected|ndisshim.PacketTypeBroadcast|ndisshim.PacketTypeAllMulticast)
	if st := s.b.OIDRequest(set); st != ndisshim.StatusSuccess {
		return nil, 0, fmt.Errorf("hoststack: set %s: %w", set.OID, st)
	}
	return mac, mtu, nil
}

// Binding is the shim binding (for OID requests by the caller).
func (s *Stack) Binding() *ndisshim.Binding { return s.b }

// Created reports whether Bind created the NIC TAP.
func (s *Stack) Created() bool { return s.created }

// Counters returns a snapshot of the binding's counters.
func (s *Stack) Counters() Counters {
	return Counters{
		ToHostFrames: s.toHostFrames.Load(), ToHostBytes: s.toHostBytes.Load(),
		ToWireFrames: s.toWireFrames.Load(), ToWireBytes: s.toWireBytes.Load(),
		ReturnedEarly: s.returnedEarly.Load(), DropPaused: s.dropPaused.Load(), DropNoSendBuffer: s.dropNoSendBuffer.Load(),
		SendFailed: s.sendFailed.Load(), ResourcesWrites: s.resourcesWrites.Load(), CorruptHeld: s.corruptHeld.Load(),
		WriteErrors: s.writeErrs.Load(), DropBadVnetHdr: s.dropBadVnetHdr.Load(),
		DropOversize: s.dropOversize.Load(), ToHostNoRoom: s.toHostNoRoom.Load(),
		SegmentedToHost: s.segToHost.Load(), SegmentedToWire: s.segToWire.Load(),
		ChecksummedToHost: s.csumToHost.Load(), ChecksummedToWire: s.csumToWire.Load(), DropSegment: s.dropSegment.Load(),
		Coalesced: s.coalesced.Load(), ModerationWaits: s.modWaits.Load(), ModerationSpent: s.modSpent.Load(),
		Polls: s.polls.Load(), PollFrames: s.pollFrames.Load(),
	}
}

// ReceiveNetBufferLists is ProtocolReceiveNetBufferLists. Every frame is
// written to the NIC TAP at once, in order, on the caller's goroutine (the
// miniport's DPC): a TAP write runs the host stack's receive, and a
// read-then-write loop beats a hand-off to another goroutine (PERF-NOTES).
// With RESOURCES that is all. Otherwise the NBLs stay held: returned at
// once when ReturnDelay is 0, else queued for the returner goroutine, which
// gives each chain back when its ReturnDelay has passed (and checks its
// bytes first with CheckHeld). A full queue returns the chain at once.
// Then, for a small indication (Config.PollOnReceive), the reader of the
// queue it was written on runs once here.
func (s *Stack) ReceiveNetBufferLists(b *ndisshim.Binding, nbls *ndisshim.NetBufferList, port ndisshim.PortNumber, count int, flags ndisshim.ReceiveFlags) {
	var poll uint32 // bit i: poll queue i; decided while the chain is still ours
	if s.cfg.PollOnReceive && ndisshim.SmallExchange(nbls) {
		for nbl := nbls; nbl != nil; nbl = nbl.Next {
			poll |= 1 << s.writerIndex(nbl)
		}
	}
	if s.receive(b, nbls, count, flags) == 0 {
		return // nothing written, nothing to answer
	}
	for i, q := range s.queues {
		if poll&(1<<i) != 0 {
			q.poller.Poll()
		}
	}
}

// receive writes an indicated chain to the NIC TAP and returns or holds
// it; it returns the frames written.
func (s *Stack) receive(b *ndisshim.Binding, nbls *ndisshim.NetBufferList, count int, flags ndisshim.ReceiveFlags) int {
	n := s.writeIndicated(nbls)
	if flags.Has(ndisshim.ReceiveFlagResources) {
		s.resourcesWrites.Add(int64(n))
		return n // ownership is back with the miniport when we return
	}
	if s.cfg.ReturnDelay == 0 && !s.cfg.CheckHeld {
		b.ReturnNetBufferLists(nbls, 0)
		return n
	}
	if s.cfg.CheckHeld {
		for nbl := nbls; nbl != nil; nbl = nbl.Next {
			nbl.ProtocolReserved[0] = uintptr(hash(nbl.Bytes()))
		}
	}
	h := held{head: nbls, n: count}
	if s.cfg.ReturnDelay > 0 {
		h.at = time.Now()
	}
	select {
	case s.q <- h:
	default:
		s.returnedEarly.Add(int64(count))
		b.ReturnNetBufferLists(nbls, 0)
	}
	return n
}

func hash(b []byte) uint64 {
	h := fnv.New64a()
	_, _ = h.Write(b)
	return h.Sum64()
}

// routineReturn is the returner goroutine: it holds each queued chain for
// ReturnDelay, checks its bytes (CheckHeld), and returns it in one call.
func (s *Stack) routineReturn() {
	defer s.wg.Done()
	var delay *time.Timer
	for {
		var h held
		select {
		case h = <-s.q:
		case <-s.stop:
			return
		}
		if s.cfg.ReturnDelay > 0 {
			if wait := time.Until(h.at.Add(s.cfg.ReturnDelay)); wait > 0 {
				if delay == nil {
					delay = time.NewTimer(wait)
				} else {
					delay.Reset(wait)
				}
				<-delay.C
			}
		}
		if s.cfg.CheckHeld {
			for nbl := h.head; nbl != nil; nbl = nbl.Next {
				if uintptr(hash(nbl.Bytes())) != nbl.ProtocolReserved[0] {
					s.corruptHeld.Add(1)
				}
			}
		}
		s.b.ReturnNetBufferLists(h.head, 0)
	}
}

// SendNetBufferListsComplete is ProtocolSendNetBufferListsComplete: the
// chain goes back to the send pool in one call.
func (s *Stack) SendNetBufferListsComplete(b *ndisshim.Binding, nbls *ndisshim.NetBufferList, flags ndisshim.SendCompleteFlags) {
	for nbl := nbls; nbl != nil; nbl = nbl.Next {
		if nbl.Status != ndisshim.StatusSuccess {
			s.sendFailed.Add(1)
		}
	}
	s.sendPool.FreeChain(nbls)
}

// StatusEx is ProtocolStatusEx.
func (s *Stack) StatusEx(b *ndisshim.Binding, st ndisshim.StatusIndication) {
	if ls, ok := st.Data.(ndisshim.LinkState); ok {
		s.log.Info("link state", "connected", ls.Connected)
		return
	}
	s.log.Info("status indication", "status", st.Code.String())
}

// NetPnPEvent is ProtocolNetPnPEvent: pause stops sending (host frames are
// dropped and counted); held NBLs keep flowing back.
func (s *Stack) NetPnPEvent(b *ndisshim.Binding, ev ndisshim.NetPnPEvent) error {
	switch ev {
	case ndisshim.NetEventPause:
		s.paused.Store(true)
	case ndisshim.NetEventRestart:
		s.paused.Store(false)
	}
	return nil
}

// Close unbinds (the adapter must be Paused, so nothing is held): it stops
// the reader and the writer, closes the NIC TAP (deleted when Bind created
// it), frees the send pool and its slab, and closes the binding, whose
// verifier findings it returns.
func (s *Stack) Close(ctx context.Context) error {
	if s.closed {
		return errors.New("hoststack: closed twice")
	}
	if err := s.b.CheckClose(); err != nil {
		return fmt.Errorf("hoststack: unbind refused, nothing torn down: %w", err)
	}
	s.closed = true
	return s.undo()
}

// ReturnAttachedNIC moves an attached NIC TAP (the user's, which Bind
// moved into cfg.Netns) back where it was, without closing or freeing
// anything: the unbind's undo does it after closing the queues, and a
// forced exit, which never unbinds (a held buffer may still be in use),
// calls it itself; a second call, even one made at the same time, finds
// the TAP gone from cfg.Netns and does nothing. A TAP the binding created
// is left: the process's exit deletes it.
func (s *Stack) ReturnAttachedNIC() error {
	s.returnMu.Lock()
	defer s.returnMu.Unlock()
	if s.created || !s.moved || !tapdev.LinkExists(s.cfg.Netns, s.cfg.NICName) {
		return nil
	}
	if err := tapdev.MoveLink(s.cfg.NICName, s.cfg.Netns, ""); err != nil {
		return fmt.Errorf("hoststack: move attached NIC TAP %s back from %s: %w", s.cfg.NICName, s.cfg.Netns, err)
	}
	return nil
}

func (s *Stack) undo() error {
	var errs []error
	for _, q := range s.queues {
		q.poller.Disarm() // no new poll; Deregister waits for one in progress
		if q.intr != nil {
			if err := q.intr.Deregister(); err != nil {
				errs = append(errs, err)
			}
			q.intr = nil
		}
	}
	if s.stop != nil {
		close(s.stop)
		s.wg.Wait()
		s.stop = nil
	}
	if len(s.queues) > 0 {
		for _, q := range s.queues {
			if err := q.dev.Close(); err != nil {
				errs = append(errs, fmt.Errorf("hoststack: close NIC TAP %s queue %d: %w", s.cfg.NICName, q.index, err))
			}
		}
		s.queues = nil
		// An attached TAP is the user's: put it back where it was.
		if err := s.ReturnAttachedNIC(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.sendPool != nil {
		if err := s.sendPool.Free(); err != nil {
			errs = append(errs, err)
		} else {
			s.sendPool = nil
		}
	}
	if s.sendSlab != nil && s.sendPool == nil {
		if err := s.sendSlab.Free(); err != nil {
			errs = append(errs, err)
		}
		s.sendSlab = nil
	}
	if s.b != nil {
		if err := s.b.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// miniportOffloads asks the miniport what it offloads.
func (s *Stack) miniportOffloads() ndisshim.OffloadCaps {
	q := ndisshim.NewQuery(ndisshim.OIDTCPOffloadCurrentConfig, ndisshim.OffloadCapsLen)
	if st := s.b.OIDRequest(q); st != ndisshim.StatusSuccess {
		return ndisshim.OffloadCaps{}
	}
	return ndisshim.UnmarshalOffloadCaps(q.Answer())
}

func capsString(c ndisshim.OffloadCaps) string {
	var out []string
	for _, f := range []struct {
		on   bool
		name string
	}{{c.Checksum > 0, "csum"}, {c.LSOv2IPv4 > 0, "tso4"}, {c.LSOv2IPv6 > 0, "tso6"}, {c.USOIPv4 > 0, "uso4"}, {c.USOIPv6 > 0, "uso6"}} {
		if f.on {
			out = append(out, f.name)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ",")
}

// configureTAP moves the NIC TAP into its namespace and gives it the NIC's
// MAC, MTU and addresses, then sets it up.
func configureTAP(c Config, mac net.HardwareAddr, mtu int) error {
	if c.Netns != "" {
		if err := tapdev.MoveLink(c.NICName, "", c.Netns); err != nil {
			return err
		}
	}
	return tapdev.ConfigureLink(c.Netns, c.NICName, tapdev.LinkConfig{MTU: mtu, MAC: mac, Addrs: c.Addrs, Up: true, NoDAD: true})
}
