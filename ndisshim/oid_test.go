package ndisshim_test

import (
	"errors"
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// TestOIDRequestHelpers: a query whose buffer is too short is answered
// with BUFFER_TOO_SHORT and BytesNeeded; a long-enough one with the
// little-endian value and BytesWritten; a set reads its ULONG or asks for
// 4 bytes.
func TestOIDRequestHelpers(t *testing.T) {
	cases := []struct {
		name        string
		size        int
		write       func(r *ndisshim.OIDRequest) ndisshim.Status
		wantStatus  ndisshim.Status
		wantNeeded  int
		wantWritten int
		want64      uint64
	}{
		{"uint32 fits", 4, func(r *ndisshim.OIDRequest) ndisshim.Status { return r.WriteUint32(0xA1B2C3D4) }, ndisshim.StatusSuccess, 0, 4, 0xA1B2C3D4},
		{"uint32 in a larger buffer", 16, func(r *ndisshim.OIDRequest) ndisshim.Status { return r.WriteUint32(7) }, ndisshim.StatusSuccess, 0, 4, 7},
		{"uint32 too short", 3, func(r *ndisshim.OIDRequest) ndisshim.Status { return r.WriteUint32(7) }, ndisshim.StatusBufferTooShort, 4, 0, 0},
		{"uint64 fits", 8, func(r *ndisshim.OIDRequest) ndisshim.Status { return r.WriteUint64(1 << 40) }, ndisshim.StatusSuccess, 0, 8, 1 << 40},
		{"uint64 too short", 4, func(r *ndisshim.OIDRequest) ndisshim.Status { return r.WriteUint64(1) }, ndisshim.StatusBufferTooShort, 8, 0, 0},
		{"bytes too short", 5, func(r *ndisshim.OIDRequest) ndisshim.Status { return r.WriteBytes(make([]byte, 6)) }, ndisshim.StatusBufferTooShort, 6, 0, 0},
		{"no buffer", 0, func(r *ndisshim.OIDRequest) ndisshim.Status { return r.WriteBytes([]byte{1}) }, ndisshim.StatusBufferTooShort, 1, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := ndisshim.NewQuery(ndisshim.OIDGenLinkSpeed, c.size)
			if req.Type != ndisshim.OIDQuery || req.OID != ndisshim.OIDGenLinkSpeed || len(req.InformationBuffer) != c.size {
				t.Fatalf("NewQuery: %+v", req)
			}
			if st := c.write(req); st != c.wantStatus {
				t.Errorf("status %s, want %s", st, c.wantStatus)
			}
			if req.BytesNeeded != c.wantNeeded || req.BytesWritten != c.wantWritten || len(req.Answer()) != c.wantWritten {
				t.Errorf("needed %d written %d answer %d; want %d %d", req.BytesNeeded, req.BytesWritten, len(req.Answer()), c.wantNeeded, c.wantWritten)
			}
			if got := req.AnswerUint64(); got != c.want64 {
				t.Errorf("AnswerUint64 %#x, want %#x", got, c.want64)
			}
			if c.wantWritten == 4 && req.AnswerUint32() != uint32(c.want64) {
				t.Errorf("AnswerUint32 %#x", req.AnswerUint32())
			}
			if c.wantWritten == 0 && req.AnswerUint32() != 0 {
				t.Errorf("AnswerUint32 of nothing written: %#x", req.AnswerUint32())
			}
		})
	}

	set := ndisshim.NewSetUint32(ndisshim.OIDGenCurrentPacketFilter, ndisshim.PacketTypeDirected|ndisshim.PacketTypeBroadcast)
	if v, st := set.Uint32(); st != ndisshim.StatusSuccess || v != 0x09 || set.BytesRead != 4 || set.Type != ndisshim.OIDSet {
		t.Errorf("set Uint32: %#x %s read %d", v, st, set.BytesRead)
	}
	if set.InformationBuffer[0] != 0x09 || set.InformationBuffer[3] != 0 {
		t.Errorf("set buffer not little-endian: %x", set.InformationBuffer)
	}
	short := &ndisshim.OIDRequest{Type: ndisshim.OIDSet, InformationBuffer: []byte{1, 2}}
	if _, st := short.Uint32(); st != ndisshim.StatusInvalidLength || short.BytesNeeded != 4 {
		t.Errorf("short set: %s, needed %d", st, short.BytesNeeded)
	}
}

// TestStatisticsRoundTrip: NDIS_STATISTICS_INFO's nine counters survive
// Marshal/Unmarshal in order; a short buffer is an error.
func TestStatisticsRoundTrip(t *testing.T) {
	in := ndisshim.StatisticsInfo{RcvDiscards: 1, RcvError: 2, DirectedFramesRcv: 3, DirectedBytesRcv: 1 << 33,
		XmitError: 5, XmitDiscards: 6, DirectedFramesXmit: 7, DirectedBytesXmit: 1<<64 - 1, RcvNoBuffer: 9}
	b := in.Marshal()
	if len(b) != 72 {
		t.Fatalf("marshalled %d bytes, want 72", len(b))
	}
	if b[8] != 2 || b[24+4] != 2 { // RcvError at offset 8; DirectedBytesRcv's bit 33 in byte 28
		t.Errorf("layout: %x", b[:32])
	}
	out, err := ndisshim.UnmarshalStatistics(b)
	if err != nil || out != in {
		t.Errorf("round trip: %+v, %v; want %+v", out, err, in)
	}
	if _, err := ndisshim.UnmarshalStatistics(b[:71]); err == nil {
		t.Error("71 bytes unmarshalled without error")
	}
}

// TestOIDThroughBinding: requests reach the miniport through a binding;
// a short buffer gets BytesNeeded; the statistics come back intact; a set
// is applied; unknown OIDs are NOT_SUPPORTED; after Close the binding gets
// ADAPTER_NOT_READY without reaching the miniport.
func TestOIDThroughBinding(t *testing.T) {
	stats := ndisshim.StatisticsInfo{DirectedFramesRcv: 42, DirectedBytesRcv: 4200, XmitError: 1}
	r := newRig(t, &fakeConfig{stats: stats}, ndisshim.AdapterOptions{})
	b, _ := r.open("p1")

	q := ndisshim.NewQuery(ndisshim.OIDGenMaximumFrameSize, 2)
	if st := b.OIDRequest(q); st != ndisshim.StatusBufferTooShort || q.BytesNeeded != 4 {
		t.Errorf("short query: %s, needed %d", st, q.BytesNeeded)
	}
	q = ndisshim.NewQuery(ndisshim.OIDGenMaximumFrameSize, q.BytesNeeded)
	if st := b.OIDRequest(q); st != ndisshim.StatusSuccess || q.AnswerUint32() != 1514 {
		t.Errorf("query: %s, %d", st, q.AnswerUint32())
	}

	q = ndisshim.NewQuery(ndisshim.OIDGenStatistics, 8)
	if st := b.OIDRequest(q); st != ndisshim.StatusBufferTooShort || q.BytesNeeded != 72 {
		t.Fatalf("short statistics query: %s, needed %d", st, q.BytesNeeded)
	}
	q = ndisshim.NewQuery(ndisshim.OIDGenStatistics, q.BytesNeeded)
	if st := b.OIDRequest(q); st != ndisshim.StatusSuccess {
		t.Fatalf("statistics query: %s", st)
	}
	if got, err := ndisshim.UnmarshalStatistics(q.Answer()); err != nil || got != stats {
		t.Errorf("statistics %+v, %v; want %+v", got, err, stats)
	}

	if st := b.OIDRequest(ndisshim.NewSetUint32(ndisshim.OIDGenCurrentPacketFilter, ndisshim.PacketTypePromiscuous)); st != ndisshim.StatusSuccess {
		t.Errorf("set filter: %s", st)
	}
	q = ndisshim.NewQuery(ndisshim.OIDGenCurrentPacketFilter, 4)
	if b.OIDRequest(q); q.AnswerUint32() != ndisshim.PacketTypePromiscuous {
		t.Errorf("filter reads back %#x", q.AnswerUint32())
	}
	if st := b.OIDRequest(ndisshim.NewQuery(ndisshim.OIDGenVendorID, 4)); st != ndisshim.StatusNotSupported {
		t.Errorf("unsupported OID: %s", st)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if st := b.OIDRequest(ndisshim.NewQuery(ndisshim.OIDGenMaximumFrameSize, 4)); st != ndisshim.StatusAdapterNotReady {
		t.Errorf("OID after Close: %s", st)
	}
	r.finish()
}

// TestNames: the String methods read as NDIS does.
func TestNames(t *testing.T) {
	cases := []struct {
		got  interface{ String() string }
		want string
	}{
		{ndisshim.StatusSuccess, "SUCCESS"},
		{ndisshim.StatusPaused, "PAUSED"},
		{ndisshim.StatusResources, "RESOURCES"},
		{ndisshim.StatusBufferTooShort, "BUFFER_TOO_SHORT"},
		{ndisshim.StatusDeviceRemoved, "ADAPTER_REMOVED"},
		{ndisshim.Status(0xC0DE0001), "STATUS(0xC0DE0001)"},
		{ndisshim.OIDGenStatistics, "OID_GEN_STATISTICS"},
		{ndisshim.OID8023CurrentAddress, "OID_802_3_CURRENT_ADDRESS"},
		{ndisshim.OID(0xFF000001), "OID(0xFF000001)"},
		{ndisshim.StatePausing, "Pausing"},
		{ndisshim.StateShutdown, "Shutdown"},
		{ndisshim.HaltDeviceSurpriseRemoved, "surprise removed"},
		{ndisshim.ShutdownBugCheck, "bugcheck (forced exit)"},
		{ndisshim.ShutdownPowerOff, "power off"},
		{ndisshim.PnPSurpriseRemoved, "surprise removed"},
		{ndisshim.PnPEvent(99), "unknown PnP event"},
		{ndisshim.NetEventPause, "pause"},
		{ndisshim.NetEventRestart, "restart"},
		{ndisshim.MakeTag("TMrx"), "TMrx"},
	}
	for _, c := range cases {
		if s := c.got.String(); s != c.want {
			t.Errorf("%#v.String() = %q, want %q", c.got, s, c.want)
		}
	}
	if ndisshim.StatusSuccess.Err() != nil {
		t.Error("StatusSuccess.Err() is not nil")
	}
	err := ndisshim.StatusFailure.Err()
	var st ndisshim.Status
	if !errors.As(err, &st) || st != ndisshim.StatusFailure || err.Error() != "ndis status FAILURE" {
		t.Errorf("StatusFailure.Err(): %v", err)
	}
	if !ndisshim.ReceiveFlags(ndisshim.ReceiveFlagResources|ndisshim.ReceiveFlagDispatchLevel).Has(ndisshim.ReceiveFlagResources) ||
		ndisshim.ReceiveFlagDispatchLevel.Has(ndisshim.ReceiveFlagResources) {
		t.Error("ReceiveFlags.Has")
	}
	defer func() {
		if recover() == nil {
			t.Error("MakeTag of 3 characters did not panic")
		}
	}()
	ndisshim.MakeTag("abc")
}
