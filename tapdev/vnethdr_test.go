package tapdev

import (
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
