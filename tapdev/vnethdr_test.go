package tapdev

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
)

func hdr(flags, gso uint8, hdrLen, gsoSize, start, off uint16) []byte {
	b := make([]byte, VnetHdrLen)
	VnetHdr{Flags: flags, GSOType: gso, HdrLen: hdrLen, GSOSize: gsoSize, CsumStart: start, CsumOffset: off}.Encode(b)
	return b
}

func TestDecodeVnetHdr(t *testing.T) {
	for _, tc := range []struct {
		name     string
		b        []byte
		frameLen int
		ok       bool
	}{
		{"plain frame", hdr(0, VnetGSONone, 0, 0, 0, 0), 60, true},
		{"data valid", hdr(VnetFlagDataValid, VnetGSONone, 0, 0, 0, 0), 60, true},
		{"TSO4 with partial checksum", hdr(VnetFlagNeedsCsum, VnetGSOTCPv4, 66, 1448, 34, 16), 60000, true},
		{"TSO6 with ECN", hdr(VnetFlagNeedsCsum, VnetGSOTCPv6|VnetGSOECN, 86, 1428, 54, 16), 30000, true},
		{"USO", hdr(VnetFlagNeedsCsum, VnetGSOUDPL4, 42, 1472, 34, 6), 20000, true},
		{"short header", make([]byte, 11), 60, false},
		{"unknown GSO type", hdr(0, 2, 0, 0, 0, 0), 60, false},
		{"GSO with segment size 0", hdr(0, VnetGSOTCPv4, 66, 0, 0, 0), 60000, false},
		{"GSO header length past the frame", hdr(0, VnetGSOTCPv4, 200, 1448, 0, 0), 100, false},
		{"checksum past the frame", hdr(VnetFlagNeedsCsum, VnetGSONone, 0, 0, 50, 16), 60, false},
		{"ECN without GSO", hdr(0, VnetGSOECN, 0, 0, 0, 0), 60, false},
		{"unknown flag", hdr(0x10, VnetGSONone, 0, 0, 0, 0), 60, false},
	} {
		h, err := DecodeVnetHdr(tc.b, tc.frameLen)
		if tc.ok != (err == nil) {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrBadVnetHdr) {
			t.Errorf("%s: error %v does not wrap ErrBadVnetHdr", tc.name, err)
		}
		if err == nil {
			// Through NDIS's out-of-band info and back is the identity.
			back := VnetHdrFromNBLInfo(h.NBLInfo())
			if back != h {
				t.Errorf("%s: header %+v → NBL info %+v → %+v", tc.name, h, h.NBLInfo(), back)
			}
		}
	}
}

func TestVnetHdrNBLInfo(t *testing.T) {
	h := VnetHdr{Flags: VnetFlagNeedsCsum, GSOType: VnetGSOTCPv6, HdrLen: 86, GSOSize: 1428, CsumStart: 54, CsumOffset: 16}
	in := h.NBLInfo()
	want := ndisshim.NBLInfo{
		Checksum: ndisshim.ChecksumInfo{NeedsChecksum: true, CsumStart: 54, CsumOffset: 16},
		LSO:      ndisshim.LSOInfo{MSS: 1428, HeaderLen: 86, IPv6: true},
	}
	if in != want {
		t.Errorf("NBLInfo = %+v, want %+v", in, want)
	}
}

// FuzzDecodeVnetHdr: whatever the kernel (or a bug) puts in a header,
// decoding never panics, and an accepted header keeps its promises: GSO
// has a segment size and a header inside the frame, a checksum to finish
// lies inside the frame.
func FuzzDecodeVnetHdr(f *testing.F) {
	f.Add(hdr(VnetFlagNeedsCsum, VnetGSOTCPv4, 66, 1448, 34, 16), 60000)
	f.Add(hdr(0, VnetGSONone, 0, 0, 0, 0), 60)
	f.Add([]byte{1, 2, 3}, 10)
	f.Fuzz(func(t *testing.T, b []byte, frameLen int) {
		if frameLen < 0 || frameLen > 1<<17 {
			return
		}
		h, err := DecodeVnetHdr(b, frameLen)
		if err != nil {
			return
		}
		if h.GSOType&^VnetGSOECN != VnetGSONone && (h.GSOSize == 0 || int(h.HdrLen) > frameLen) {
			t.Fatalf("accepted GSO header %+v for a %d-byte frame", h, frameLen)
		}
		if h.Flags&VnetFlagNeedsCsum != 0 && int(h.CsumStart)+int(h.CsumOffset)+2 > frameLen {
			t.Fatalf("accepted checksum location %+v for a %d-byte frame", h, frameLen)
		}
	})
}

// A USO send says its IP version only in its frame: NBLInfoFor reads it
// there (untagged, or behind one 802.1Q tag), so a miniport that offers
// USO for IPv6 only takes an IPv6 USO send and one that offers it for
// IPv4 only does not. NBLInfo, without the frame, keeps calling it IPv4.
func TestVnetHdrNBLInfoForUSOIPv6(t *testing.T) {
	eth := func(types ...uint16) []byte {
		f := make([]byte, 12, 100)
		for _, et := range types {
			f = binary.BigEndian.AppendUint16(f, et)
			if et == 0x8100 {
				f = append(f, 0, 5) // the tag: VLAN 5
			}
		}
		return append(f, make([]byte, 60)...)
	}
	uso := VnetHdr{Flags: VnetFlagNeedsCsum, GSOType: VnetGSOUDPL4, HdrLen: 62, GSOSize: 1232, CsumStart: 54, CsumOffset: 6}
	tso6 := VnetHdr{Flags: VnetFlagNeedsCsum, GSOType: VnetGSOTCPv6, HdrLen: 74, GSOSize: 1428, CsumStart: 54, CsumOffset: 16}
	tso4 := VnetHdr{Flags: VnetFlagNeedsCsum, GSOType: VnetGSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	usoV6Only := ndisshim.OffloadCaps{Checksum: 1, USOIPv6: 1}
	usoV4Only := ndisshim.OffloadCaps{Checksum: 1, USOIPv4: 1}
	for _, tc := range []struct {
		name  string
		h     VnetHdr
		frame []byte
		v6    bool
	}{
		{"USO over IPv6", uso, eth(0x86dd), true},
		{"USO over IPv6 behind an 802.1Q tag", uso, eth(0x8100, 0x86dd), true},
		{"USO over IPv4", uso, eth(0x0800), false},
		{"USO over IPv4 behind an 802.1Q tag", uso, eth(0x8100, 0x0800), false},
		{"USO without a frame", uso, nil, false},
		{"USO, frame shorter than an Ethernet header", uso, []byte{0, 1, 2}, false},
		{"TSO6", tso6, eth(0x86dd), true},
		{"TSO4", tso4, eth(0x0800), false},
	} {
		in := tc.h.NBLInfoFor(tc.frame)
		if in.LSO.IPv6 != tc.v6 || in.LSO.UDP != (tc.h.GSOType == VnetGSOUDPL4) || in.LSO.MSS != tc.h.GSOSize {
			t.Errorf("%s: NBLInfoFor LSO = %+v, want IPv6=%v", tc.name, in.LSO, tc.v6)
		}
		if back := VnetHdrFromNBLInfo(in); back != tc.h {
			t.Errorf("%s: header %+v → NBL info %+v → %+v", tc.name, tc.h, in, back)
		}
		if tc.h.GSOType != VnetGSOUDPL4 {
			continue
		}
		if got := usoV6Only.Takes(in); got != tc.v6 {
			t.Errorf("%s: a miniport with USO for IPv6 only takes it: %v, want %v", tc.name, got, tc.v6)
		}
		if got := usoV4Only.Takes(in); got == tc.v6 {
			t.Errorf("%s: a miniport with USO for IPv4 only takes it: %v, want %v", tc.name, got, !tc.v6)
		}
	}
	if in := uso.NBLInfo(); in.LSO.IPv6 || !in.LSO.UDP {
		t.Errorf("NBLInfo of a USO header = %+v, want UDP over IPv4 (it cannot see the frame)", in.LSO)
	}
}
