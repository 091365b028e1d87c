package adapter

import (
	"bytes"
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
	"github.com/tapminiport/tapminiport/tapdev"
)

func vnetFrame(h tapdev.VnetHdr, f []byte) []byte {
	b := make([]byte, tapdev.VnetHdrLen+len(f))
	h.Encode(b)
	copy(b[tapdev.VnetHdrLen:], f)
	return b
}

// With the virtio-net header a 20 KB large send crosses as ONE NBL whose
// out-of-band information says how to segment and checksum it; a malformed
// header is counted and dropped; a plain frame over the MTU is still
// oversize; traffic around them flows.
func TestOffloadReceive(t *testing.T) {
	r := newRig(t, rigOptions{cfg: func(c *Config) { c.VnetHdr = true }})
	r.restart()
	r.setFilter(ndisshim.PacketTypeDirected)
	tso := tapdev.VnetHdr{Flags: tapdev.VnetFlagNeedsCsum, GSOType: tapdev.VnetGSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	big, small := frame(ourMAC, 20000, 1), frame(ourMAC, 100, 2)
	r.wire(
		vnetFrame(tso, big),
		vnetFrame(tapdev.VnetHdr{}, small),
		vnetFrame(tapdev.VnetHdr{GSOType: 2}, frame(ourMAC, 100, 3)), // unknown GSO type
		vnetFrame(tapdev.VnetHdr{}, frame(ourMAC, testMTU+19, 4)),    // no GSO, over the MTU
		vnetFrame(tapdev.VnetHdr{}, frame(ourMAC, 60, 5)),
	)
	shimtest.WaitFor(t, "3 frames indicated", func() bool { return r.p.frameCount() == 3 })
	var frames [][]byte
	var infos []ndisshim.NBLInfo
	for _, ind := range r.p.indications() {
		frames = append(frames, ind.frames...)
		infos = append(infos, ind.infos...)
	}
	if !bytes.Equal(frames[0], big) || !bytes.Equal(frames[1], small) {
		t.Fatalf("indicated frames differ from the wire's (lengths %d, %d)", len(frames[0]), len(frames[1]))
	}
	if want := tso.NBLInfo(); infos[0] != want || infos[0].LSO.MSS != 1448 || !infos[0].Checksum.NeedsChecksum {
		t.Errorf("large send's NBL info = %+v, want %+v", infos[0], want)
	}
	if infos[1] != (ndisshim.NBLInfo{}) {
		t.Errorf("plain frame's NBL info = %+v, want none", infos[1])
	}
	c := r.counters()
	if c.RxDropBadVnetHdr != 1 || c.RxDropOversize != 1 {
		t.Errorf("bad-vnet-hdr drops %d, oversize %d; want 1 and 1", c.RxDropBadVnetHdr, c.RxDropOversize)
	}
	// A device that does not say what it took is assumed to take
	// Offloads: checksum and TSO, no USO.
	q, st := r.query(ndisshim.OIDTCPOffloadCurrentConfig, ndisshim.OffloadCapsLen)
	want := ndisshim.OffloadCaps{Checksum: 1, LSOv2IPv4: 65535, LSOv2IPv6: 65535, MinSegmentCount: 2}
	if got := ndisshim.UnmarshalOffloadCaps(q.Answer()); st != ndisshim.StatusSuccess || got != want {
		t.Errorf("offload config: %v, %+v; want SUCCESS and %+v", st, got, want)
	}
}

// A large send goes out with its information as a virtio-net header in
// the headroom the protocol left; without headroom it completes with
// BUFFER_TOO_SHORT and nothing reaches the wire.
func TestOffloadSend(t *testing.T) {
	r := newRig(t, rigOptions{cfg: func(c *Config) { c.VnetHdr = true }})
	r.restart()
	info := ndisshim.NBLInfo{Checksum: ndisshim.ChecksumInfo{NeedsChecksum: true, CsumStart: 34, CsumOffset: 16},
		LSO: ndisshim.LSOInfo{MSS: 1448, HeaderLen: 54}}
	big := frame(peerMAC, 30000, 7)
	r.p.sendWith(t, r.b, tapdev.VnetHdrLen, info, big)
	got := r.readPeer(1)[0]
	h, err := tapdev.DecodeVnetHdr(got, len(got)-tapdev.VnetHdrLen)
	if err != nil || h != tapdev.VnetHdrFromNBLInfo(info) {
		t.Fatalf("header on the wire %+v (%v), want %+v", h, err, tapdev.VnetHdrFromNBLInfo(info))
	}
	if !bytes.Equal(got[tapdev.VnetHdrLen:], big) {
		t.Errorf("frame on the wire differs from the one sent")
	}
	r.p.sendWith(t, r.b, 0, info, frame(peerMAC, 3000, 8))
	cs := r.p.completions()
	if last := cs[len(cs)-1].statuses; len(last) != 1 || last[0] != ndisshim.StatusBufferTooShort {
		t.Errorf("send without headroom completed %v, want BUFFER_TOO_SHORT", last)
	}
	if !r.peerEmpty() {
		t.Error("a frame without room for its header reached the wire")
	}
}
