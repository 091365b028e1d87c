package adapter

// Fuzz targets for the miniport's parsers of untrusted bytes:
//
//   - FuzzClassify: the per-frame verdict (runt, oversize, packet filter) as
//     a pure function, against a model written out longhand.
//   - FuzzReceiveDPC: a frame from the wire into the real receive DPC over a
//     socketpair, under a random packet filter and multicast list, with or
//     without a virtio-net header in front (Config.VnetHdr, --offload): no
//     panic, exactly one counter moves, it is the one classify names (or
//     bad-vnet-header when tapdev.DecodeVnetHdr refuses the header), and an
//     indicated frame reaches the protocol byte for byte.
//   - FuzzOIDSet: a set request with a random InformationBuffer for every
//     OID the miniport supports (and unknown ones): no panic; a failed set
//     changes nothing any query can see; a successful one reads no more
//     than it was given and changes only what it set.
//
// The seed corpus runs as a normal test; `go test -fuzz FuzzReceiveDPC
// ./adapter/` (or scripts/fuzz.sh) explores further.

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/tapdev"
)

const knownFilter = ndisshim.PacketTypeDirected | ndisshim.PacketTypeMulticast | ndisshim.PacketTypeAllMulticast |
	ndisshim.PacketTypeBroadcast | ndisshim.PacketTypePromiscuous

// multicastList turns fuzz bytes into at most maxMulticast addresses.
func multicastList(b []byte) [][6]byte {
	n := min(len(b)/6, maxMulticast)
	list := make([][6]byte, n)
	for i := range list {
		copy(list[i][:], b[6*i:])
	}
	return list
}

func FuzzClassify(f *testing.F) {
	f.Add(frame(ourMAC, 60, 0), uint32(ndisshim.PacketTypeDirected), []byte(nil), uint16(1500))
	f.Add(frame(ourMAC, 13, 0), uint32(ndisshim.PacketTypePromiscuous), []byte(nil), uint16(1500))
	f.Add(frame(otherMAC, 1518, 0), uint32(ndisshim.PacketTypeDirected), []byte(nil), uint16(1500))
	f.Add(frame(ourMAC, 1519, 0), uint32(ndisshim.PacketTypePromiscuous), []byte(nil), uint16(1500))
	f.Add(frame(bcastMAC, 64, 0), uint32(ndisshim.PacketTypeBroadcast), []byte(nil), uint16(68))
	f.Add(frame(mcastA, 64, 0), uint32(ndisshim.PacketTypeMulticast), []byte(mcastA), uint16(9000))
	f.Add(frame(mcastB, 64, 0), uint32(ndisshim.PacketTypeMulticast), []byte(mcastA), uint16(9000))
	f.Add(frame(mcastB, 64, 0), uint32(ndisshim.PacketTypeAllMulticast), []byte(nil), uint16(1500))
	f.Fuzz(func(t *testing.T, fr []byte, filter uint32, mc []byte, mtu uint16) {
		maxFrame := Config{MTU: int(mtu)}.maxFrame()
		list := multicastList(mc)
		got := classify(fr, ourMAC, filter, maxFrame, list)
		// The model, longhand.
		want := verdictFiltered
		switch {
		case len(fr) < 14:
			want = verdictRunt
		case len(fr) > maxFrame:
			want = verdictOversize
		case filter&ndisshim.PacketTypePromiscuous != 0:
			want = verdictIndicate
		case bytes.Equal(fr[:6], bcastMAC):
			if filter&ndisshim.PacketTypeBroadcast != 0 {
				want = verdictIndicate
			}
		case fr[0]&1 == 1:
			if filter&ndisshim.PacketTypeAllMulticast != 0 {
				want = verdictIndicate
			} else if filter&ndisshim.PacketTypeMulticast != 0 {
				for _, a := range list {
					if bytes.Equal(a[:], fr[:6]) {
						want = verdictIndicate
					}
				}
			}
		case bytes.Equal(fr[:6], ourMAC):
			if filter&ndisshim.PacketTypeDirected != 0 {
				want = verdictIndicate
			}
		}
		if got != want {
			t.Fatalf("classify(% x..., filter %#x, max %d, %d multicast) = %v, want %v",
				fr[:min(len(fr), 14)], filter, maxFrame, len(list), got, want)
		}
	})
}

// fuzzProto is the protocol above the fuzzed miniport: it keeps a copy of
// the last frame indicated and returns every chain at once.
type fuzzProto struct {
	mu   sync.Mutex
	last []byte
}

var _ ndisshim.Protocol = (*fuzzProto)(nil)

func (p *fuzzProto) ReceiveNetBufferLists(b *ndisshim.Binding, nbls *ndisshim.NetBufferList, port ndisshim.PortNumber, count int, flags ndisshim.ReceiveFlags) {
	p.mu.Lock()
	for n := nbls; n != nil; n = n.Next {
		p.last = append(p.last[:0], n.Bytes()...)
	}
	p.mu.Unlock()
	if !flags.Has(ndisshim.ReceiveFlagResources) {
		b.ReturnNetBufferLists(nbls, 0)
	}
}

func (p *fuzzProto) lastFrame() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.last)
}

func (p *fuzzProto) SendNetBufferListsComplete(*ndisshim.Binding, *ndisshim.NetBufferList, ndisshim.SendCompleteFlags) {
}
func (p *fuzzProto) StatusEx(*ndisshim.Binding, ndisshim.StatusIndication)     {}
func (p *fuzzProto) NetPnPEvent(*ndisshim.Binding, ndisshim.NetPnPEvent) error { return nil }

// fuzzRig is the miniport running on one end of a socketpair with
// fuzzProto bound, for the life of one fuzz target (in each fuzzing
// worker); f.Cleanup pauses, unbinds, halts and unloads it.
type fuzzRig struct {
	cfg      Config
	drv      *ndisshim.Driver
	a        *ndisshim.Adapter
	mp       *Miniport
	b        *ndisshim.Binding
	p        *fuzzProto
	hw, peer *tapdev.Dev
}

func newFuzzRig(f *testing.F, vnetHdr bool) *fuzzRig {
	f.Helper()
	r := &fuzzRig{p: &fuzzProto{}}
	var err error
	if r.hw, r.peer, err = tapdev.Socketpair(); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { r.peer.Close(); r.hw.Close() })
	name := "tmhw-fuzz"
	if vnetHdr {
		name = "tmhw-fuzz-vnet"
	}
	r.cfg = Config{
		HardwareName: name, MTU: testMTU, MAC: append(net.HardwareAddr(nil), ourMAC...),
		RxBuffers: 64, Batch: 16, StatsPeriod: time.Second, VnetHdr: vnetHdr,
		Open: func(string, int) (Device, bool, error) { return r.hw, false, nil },
	}
	if r.drv, err = ndisshim.RegisterMiniportDriver(Characteristics(), nil); err != nil {
		f.Fatal(err)
	}
	opts := ndisshim.AdapterOptions{WatchdogInterval: time.Second, OnHeld: func(ndisshim.HeldReport) {}}
	if r.a, err = r.drv.AddAdapter(ndisshim.InitParameters{Name: name, Config: r.cfg}, opts); err != nil {
		f.Fatalf("AddAdapter: %v", err)
	}
	r.mp = r.a.MiniportContext().(*Miniport)
	if r.b, err = r.a.OpenAdapter("fuzzproto", r.p); err != nil {
		f.Fatalf("OpenAdapter: %v", err)
	}
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if r.a.State() == ndisshim.StateRunning {
			if err := r.a.Pause(ctx); err != nil {
				f.Errorf("pause: %v", err)
			}
		}
		if err := r.b.Close(); err != nil {
			f.Errorf("close binding: %v", err)
		}
		if err := r.a.Halt(ctx, ndisshim.HaltDeviceDisabled); err != nil {
			f.Errorf("halt: %v", err)
		}
		if err := r.drv.Deregister(); err != nil {
			f.Errorf("unload: %v", err)
		}
	})
	if err := r.a.Restart(context.Background()); err != nil {
		f.Fatalf("restart: %v", err)
	}
	return r
}

// processed is every frame the DPC has taken off the hardware so far:
// indicated or dropped for any cause.
func processed(c Snapshot) int64 { return c.RxFrames + c.RxDrops() }

// verdictBadVnetHdr is the DPC's one drop cause classify does not cover:
// a virtio-net header tapdev.DecodeVnetHdr refuses (Counters.RxDropBadVnetHdr).
const verdictBadVnetHdr = verdictFiltered + 1

// fuzzVnetFrame prefixes f with virtio-net header h.
func fuzzVnetFrame(h tapdev.VnetHdr, f []byte) []byte {
	b := make([]byte, tapdev.VnetHdrLen+len(f))
	h.Encode(b)
	copy(b[tapdev.VnetHdrLen:], f)
	return b
}

// FuzzReceiveDPC: with vnet set, in is a virtio-net header and a frame, as
// a TAP opened with IFF_VNET_HDR delivers them; otherwise in is the frame.
func FuzzReceiveDPC(f *testing.F) {
	dir, mc, all, prom := ndisshim.PacketTypeDirected, ndisshim.PacketTypeMulticast, ndisshim.PacketTypeAllMulticast, ndisshim.PacketTypePromiscuous
	bc := ndisshim.PacketTypeBroadcast
	for _, s := range []struct {
		filter uint32
		mc     []byte
		fr     []byte
	}{
		{dir, nil, frame(ourMAC, 60, 1)},
		{dir, nil, frame(ourMAC, 14, 2)},                            // the smallest good frame
		{dir, nil, frame(ourMAC, 1518, 3)},                          // the largest
		{dir, nil, frame(ourMAC, 1519, 4)},                          // one byte too many
		{prom, nil, frame(ourMAC, 9000, 5)},                         // jumbo on a 1500 NIC
		{prom, nil, frame(ourMAC, 1, 6)},                            // runts
		{prom, nil, frame(ourMAC, 13, 7)},                           //
		{dir, nil, frame(otherMAC, 60, 8)},                          // not ours
		{prom, nil, frame(otherMAC, 60, 9)},                         // ... but promiscuous
		{dir | bc, nil, frame(bcastMAC, 42, 10)},                    // ARP-sized broadcast
		{dir, nil, frame(bcastMAC, 42, 11)},                         // broadcast not asked for
		{dir | mc, mcastA, frame(mcastA, 90, 12)},                   // on the list
		{dir | mc, mcastA, frame(mcastB, 90, 13)},                   // not on the list
		{dir | all, nil, frame(mcastB, 90, 14)},                     // all multicast
		{0, nil, frame(ourMAC, 60, 15)},                             // filter cleared: nothing
		{dir | mc, bytes.Repeat(mcastA, 40), frame(mcastA, 60, 16)}, // 40 entries: the first 32 are set
	} {
		f.Add(s.filter, s.mc, s.fr, false)
	}
	tso := tapdev.VnetHdr{Flags: tapdev.VnetFlagNeedsCsum, GSOType: tapdev.VnetGSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	for _, in := range [][]byte{
		fuzzVnetFrame(tapdev.VnetHdr{}, frame(ourMAC, 60, 20)),                                                       // plain
		fuzzVnetFrame(tso, frame(ourMAC, 9000, 21)),                                                                  // a large send
		fuzzVnetFrame(tapdev.VnetHdr{}, frame(ourMAC, 9000, 22)),                                                     // large without GSO
		fuzzVnetFrame(tapdev.VnetHdr{GSOType: 2}, frame(ourMAC, 100, 23)),                                            // unknown GSO type
		fuzzVnetFrame(tapdev.VnetHdr{GSOType: tapdev.VnetGSOTCPv6}, frame(ourMAC, 100, 24)),                          // GSO size 0
		fuzzVnetFrame(tapdev.VnetHdr{GSOType: tapdev.VnetGSOTCPv4, GSOSize: 1, HdrLen: 200}, frame(ourMAC, 100, 25)), // header beyond the frame
		fuzzVnetFrame(tapdev.VnetHdr{Flags: tapdev.VnetFlagNeedsCsum, CsumStart: 90, CsumOffset: 16}, frame(ourMAC, 100, 26)),
		fuzzVnetFrame(tapdev.VnetHdr{Flags: 0x80}, frame(ourMAC, 100, 27)), // unknown flag
		fuzzVnetFrame(tapdev.VnetHdr{}, nil),                               // a header and no frame
		{1, 2, 3, 4, 5},                                                    // not even a header
	} {
		f.Add(dir, []byte(nil), in, true)
	}
	rigs := map[bool]*fuzzRig{false: newFuzzRig(f, false), true: newFuzzRig(f, true)}
	maxFrame := rigs[false].cfg.maxFrame()
	f.Fuzz(func(t *testing.T, filter uint32, mcBytes []byte, in []byte, vnet bool) {
		r := rigs[vnet]
		if len(in) == 0 || len(in) > tapdev.VnetHdrLen+65535 {
			// A TAP never delivers an empty read (on a socketpair it
			// reads as the peer closing) nor one over 64 KiB.
			return
		}
		filter &= knownFilter
		if st := r.b.OIDRequest(ndisshim.NewSetUint32(ndisshim.OIDGenCurrentPacketFilter, filter)); st != ndisshim.StatusSuccess {
			t.Fatalf("set packet filter %#x: %v", filter, st)
		}
		list := multicastList(mcBytes)
		req := &ndisshim.OIDRequest{Type: ndisshim.OIDSet, OID: ndisshim.OID8023MulticastList}
		for _, a := range list {
			req.InformationBuffer = append(req.InformationBuffer, a[:]...)
		}
		if st := r.b.OIDRequest(req); st != ndisshim.StatusSuccess {
			t.Fatalf("set multicast list of %d: %v", len(list), st)
		}

		// What the DPC should do: a runt first, then (with a header) a
		// header DecodeVnetHdr refuses, then classify, whose size limit is
		// a large send's for a GSO frame.
		fr, limit := in, maxFrame
		var want verdict
		if vnet {
			fr = in[min(len(in), tapdev.VnetHdrLen):]
			if len(in) >= tapdev.VnetHdrLen+14 {
				h, err := tapdev.DecodeVnetHdr(in[:tapdev.VnetHdrLen], len(fr))
				if err != nil {
					want = verdictBadVnetHdr
				} else if h.GSOType != tapdev.VnetGSONone {
					limit = maxGSOFrame
				}
			}
		}
		if want != verdictBadVnetHdr {
			want = classify(fr, ourMAC, filter, limit, list)
			if vnet && len(in) < tapdev.VnetHdrLen+14 {
				want = verdictRunt
			}
		}

		before := r.mp.Counters()
		if n, err := r.peer.WriteBatch([][]byte{in}, nil); n != 1 || err != nil {
			t.Fatalf("wire wrote %d of 1 read of %d bytes: %v", n, len(in), err)
		}
		deadline := time.Now().Add(10 * time.Second)
		after := r.mp.Counters()
		for processed(after) == processed(before) {
			if time.Now().After(deadline) {
				t.Fatalf("the DPC did not take a %d-byte read in 10s", len(in))
			}
			time.Sleep(20 * time.Microsecond)
			after = r.mp.Counters()
		}
		if d := processed(after) - processed(before); d != 1 {
			t.Fatalf("one frame written, %d counted", d)
		}
		moved := map[verdict]int64{
			verdictIndicate:   after.RxFrames - before.RxFrames,
			verdictRunt:       after.RxDropRunt - before.RxDropRunt,
			verdictOversize:   after.RxDropOversize - before.RxDropOversize,
			verdictFiltered:   after.RxDropFiltered - before.RxDropFiltered,
			verdictBadVnetHdr: after.RxDropBadVnetHdr - before.RxDropBadVnetHdr,
		}
		if moved[want] != 1 {
			name := func(v verdict) string {
				if v == verdictBadVnetHdr {
					return "bad-vnet-header"
				}
				return v.String()
			}
			t.Fatalf("%d-byte read (vnet %v) to % x, filter %#x, %d multicast: want %s; moved: indicate %d, runt %d, oversize %d, filtered %d, bad-vnet-header %d",
				len(in), vnet, fr[:min(len(fr), 6)], filter, len(list), name(want), moved[verdictIndicate], moved[verdictRunt],
				moved[verdictOversize], moved[verdictFiltered], moved[verdictBadVnetHdr])
		}
		if want == verdictIndicate {
			if got := r.p.lastFrame(); !bytes.Equal(got, fr) {
				t.Fatalf("indicated % x... (%d bytes), wrote % x... (%d bytes)", got[:min(len(got), 16)], len(got), fr[:min(len(fr), 16)], len(fr))
			}
			if b := after.RxBytes - before.RxBytes; b != int64(len(fr)) {
				t.Fatalf("RxBytes grew by %d for a %d-byte frame", b, len(fr))
			}
		}
	})
}

// oidAnswers queries every supported OID and returns status and answer of
// each: what a protocol can see of the miniport's state.
func oidAnswers(t *testing.T, b *ndisshim.Binding) map[ndisshim.OID]string {
	t.Helper()
	out := make(map[ndisshim.OID]string, len(supportedOIDs))
	for _, o := range supportedOIDs {
		q := ndisshim.NewQuery(o, 4096)
		st := b.OIDRequest(q)
		out[o] = st.String() + ":" + string(q.Answer())
	}
	return out
}

func FuzzOIDSet(f *testing.F) {
	le := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	f.Add(uint32(ndisshim.OIDGenCurrentPacketFilter), le(ndisshim.PacketTypeDirected|ndisshim.PacketTypeBroadcast))
	f.Add(uint32(ndisshim.OIDGenCurrentPacketFilter), le(0x40))        // an unknown bit
	f.Add(uint32(ndisshim.OIDGenCurrentPacketFilter), []byte{1, 0, 0}) // short
	f.Add(uint32(ndisshim.OIDGenCurrentPacketFilter), le(0x2f))        // every known bit
	f.Add(uint32(ndisshim.OIDGenCurrentLookahead), le(128))            //
	f.Add(uint32(ndisshim.OIDGenCurrentLookahead), le(1<<20))          // above the maximum
	f.Add(uint32(ndisshim.OID8023MulticastList), append(bytes.Clone(mcastA), mcastB...))
	f.Add(uint32(ndisshim.OID8023MulticastList), []byte{1, 0, 0x5e, 0, 0, 1, 2})       // not a multiple of 6
	f.Add(uint32(ndisshim.OID8023MulticastList), bytes.Repeat(mcastA, maxMulticast+1)) // too many
	f.Add(uint32(ndisshim.OID8023MulticastList), []byte{})                             // clear the list
	f.Add(uint32(ndisshim.OIDGenSupportedList), le(1))                                 // query-only
	f.Add(uint32(0xdeadbeef), le(1))                                                   // unknown
	f.Add(uint32(3), []byte{9, 9, 9, 9, 9, 9, 9, 9})                                   // an index into the supported list
	r := newFuzzRig(f, false)
	f.Fuzz(func(t *testing.T, rawOID uint32, buf []byte) {
		oid := ndisshim.OID(rawOID)
		if rawOID < 256 { // let the fuzzer reach every supported OID easily
			oid = supportedOIDs[int(rawOID)%len(supportedOIDs)]
		}
		before := oidAnswers(t, r.b)
		req := &ndisshim.OIDRequest{Type: ndisshim.OIDSet, OID: oid, InformationBuffer: bytes.Clone(buf)}
		st := r.b.OIDRequest(req)
		after := oidAnswers(t, r.b)
		if !bytes.Equal(req.InformationBuffer, buf) {
			t.Fatalf("set %v wrote into its InformationBuffer", oid)
		}
		for o, a := range after {
			if a != before[o] && (st != ndisshim.StatusSuccess || o != oid) {
				t.Fatalf("set %v (%d bytes) = %v changed what %v answers: %q → %q", oid, len(buf), st, o, before[o], a)
			}
		}
		if st != ndisshim.StatusSuccess {
			return
		}
		if req.BytesRead < 0 || req.BytesRead > len(buf) {
			t.Fatalf("set %v of %d bytes read %d", oid, len(buf), req.BytesRead)
		}
		q := ndisshim.NewQuery(oid, 4096)
		if qs := r.b.OIDRequest(q); qs != ndisshim.StatusSuccess {
			t.Fatalf("query %v after a successful set: %v", oid, qs)
		}
		switch oid {
		case ndisshim.OIDGenCurrentPacketFilter, ndisshim.OIDGenCurrentLookahead:
			if req.BytesRead != 4 || q.AnswerUint32() != binary.LittleEndian.Uint32(buf) {
				t.Fatalf("set %v to % x (read %d): query answers %#x", oid, buf, req.BytesRead, q.AnswerUint32())
			}
		case ndisshim.OID8023MulticastList:
			if req.BytesRead != len(buf) || !bytes.Equal(q.Answer(), buf) {
				t.Fatalf("set multicast list % x (read %d): query answers % x", buf, req.BytesRead, q.Answer())
			}
		}
	})
}
