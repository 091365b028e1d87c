package ndisshim_test

// Fuzz targets for the shim's parsers of bytes that come from the other
// side of a call: the NDIS_STATISTICS_INFO answer a protocol decodes, and
// the ULONG a set request carries. The seed corpus runs as a normal test;
// `go test -fuzz FuzzUnmarshalStatistics ./ndisshim/` (or scripts/fuzz.sh)
// explores further.

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// FuzzUnmarshalStatistics: any input decodes without a panic; under 72
// bytes it is an error, from 72 on the nine counters are the first 72
// bytes read as little-endian ULONG64s, whatever follows is ignored, and
// Marshal gives those 72 bytes back.
func FuzzUnmarshalStatistics(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 71))
	f.Add(make([]byte, 72))
	f.Add(bytes.Repeat([]byte{0xff}, 80))
	f.Add(ndisshim.StatisticsInfo{RcvDiscards: 1, RcvError: 2, DirectedFramesRcv: 3, DirectedBytesRcv: 4,
		XmitError: 5, XmitDiscards: 6, DirectedFramesXmit: 7, DirectedBytesXmit: 8, RcvNoBuffer: 9}.Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ndisshim.UnmarshalStatistics(b)
		if len(b) < 72 {
			if err == nil {
				t.Fatalf("%d bytes decoded without an error", len(b))
			}
			if s != (ndisshim.StatisticsInfo{}) {
				t.Fatalf("%d bytes: error %v but counters %+v", len(b), err, s)
			}
			return
		}
		if err != nil {
			t.Fatalf("%d bytes: %v", len(b), err)
		}
		got := []uint64{s.RcvDiscards, s.RcvError, s.DirectedFramesRcv, s.DirectedBytesRcv, s.XmitError,
			s.XmitDiscards, s.DirectedFramesXmit, s.DirectedBytesXmit, s.RcvNoBuffer}
		for i, v := range got {
			if want := binary.LittleEndian.Uint64(b[8*i:]); v != want {
				t.Fatalf("counter %d = %#x, want %#x", i, v, want)
			}
		}
		if m := s.Marshal(); !bytes.Equal(m, b[:72]) {
			t.Fatalf("Marshal(Unmarshal(b)) = % x, want % x", m, b[:72])
		}
	})
}

// FuzzOIDSetUint32: the ULONG reader of a set request takes any buffer:
// under 4 bytes it answers INVALID_LENGTH with BytesNeeded 4 and reads
// nothing; otherwise the little-endian value of the first 4 bytes, with
// BytesRead 4.
func FuzzOIDSetUint32(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1, 2, 3})
	f.Add([]byte{0x0b, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xee})
	f.Fuzz(func(t *testing.T, b []byte) {
		req := &ndisshim.OIDRequest{Type: ndisshim.OIDSet, OID: ndisshim.OIDGenCurrentPacketFilter, InformationBuffer: b}
		v, st := req.Uint32()
		if len(b) < 4 {
			if st != ndisshim.StatusInvalidLength || req.BytesNeeded != 4 || req.BytesRead != 0 || v != 0 {
				t.Fatalf("%d bytes: %v, value %d, needed %d, read %d", len(b), st, v, req.BytesNeeded, req.BytesRead)
			}
			return
		}
		if st != ndisshim.StatusSuccess || req.BytesRead != 4 || v != binary.LittleEndian.Uint32(b) {
			t.Fatalf("% x: %v, value %#x, read %d", b, st, v, req.BytesRead)
		}
	})
}
