package adapter

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

// The mandatory OIDs, queried through the binding as a protocol would.
func TestOIDMandatory(t *testing.T) {
	const speed = 2_500_000_000
	r := newRig(t, rigOptions{cfg: func(c *Config) { c.LinkSpeedBps = speed }})

	must := func(oid ndisshim.OID, size int) *ndisshim.OIDRequest {
		t.Helper()
		q, st := r.query(oid, size)
		if st != ndisshim.StatusSuccess {
			t.Fatalf("query %v: %v", oid, st)
		}
		return q
	}

	// The supported list names every mandatory OID, and every OID it names
	// answers a query.
	q := must(ndisshim.OIDGenSupportedList, 1024)
	if q.BytesWritten%4 != 0 || q.BytesWritten == 0 {
		t.Fatalf("supported list of %d bytes", q.BytesWritten)
	}
	supported := map[ndisshim.OID]bool{}
	for i := 0; i < q.BytesWritten; i += 4 {
		supported[ndisshim.OID(binary.LittleEndian.Uint32(q.InformationBuffer[i:]))] = true
	}
	mandatory := []ndisshim.OID{
		ndisshim.OIDGenSupportedList, ndisshim.OIDGenHardwareStatus, ndisshim.OIDGenMediaSupported, ndisshim.OIDGenMediaInUse,
		ndisshim.OIDGenMaximumLookahead, ndisshim.OIDGenMaximumFrameSize, ndisshim.OIDGenLinkSpeed,
		ndisshim.OIDGenTransmitBufferSpace, ndisshim.OIDGenReceiveBufferSpace, ndisshim.OIDGenVendorID,
		ndisshim.OIDGenVendorDescription, ndisshim.OIDGenCurrentPacketFilter, ndisshim.OIDGenCurrentLookahead,
		ndisshim.OIDGenDriverVersion, ndisshim.OIDGenMaximumTotalSize, ndisshim.OIDGenMediaConnectStatus,
		ndisshim.OIDGenVendorDriverVersion, ndisshim.OIDGenStatistics, ndisshim.OIDGenXmitOK, ndisshim.OIDGenRcvOK,
		ndisshim.OIDGenXmitError, ndisshim.OIDGenRcvError, ndisshim.OIDGenRcvNoBuffer,
		ndisshim.OID8023PermanentAddress, ndisshim.OID8023CurrentAddress, ndisshim.OID8023MulticastList,
		ndisshim.OID8023MaximumListSize,
	}
	for _, o := range mandatory {
		if !supported[o] {
			t.Errorf("OID_GEN_SUPPORTED_LIST lacks %v", o)
		}
	}
	for o := range supported {
		if _, st := r.query(o, 1024); st != ndisshim.StatusSuccess {
			t.Errorf("query %v (in the supported list): %v", o, st)
		}
	}

	if got := net.HardwareAddr(must(ndisshim.OID8023CurrentAddress, 6).Answer()); !bytes.Equal(got, ourMAC) {
		t.Errorf("current address %s, want %s", got, ourMAC)
	}
	if got := net.HardwareAddr(must(ndisshim.OID8023PermanentAddress, 6).Answer()); !bytes.Equal(got, ourMAC) {
		t.Errorf("permanent address %s, want %s", got, ourMAC)
	}
	if got := must(ndisshim.OIDGenMaximumFrameSize, 4).AnswerUint32(); got != testMTU {
		t.Errorf("maximum frame size %d, want the MTU %d", got, testMTU)
	}
	if got := must(ndisshim.OIDGenMaximumTotalSize, 4).AnswerUint32(); got != testMTU+14 {
		t.Errorf("maximum total size %d, want %d", got, testMTU+14)
	}
	if got := must(ndisshim.OIDGenLinkSpeed, 4).AnswerUint32(); got != speed/100 {
		t.Errorf("link speed %d (100 bit/s units), want %d", got, speed/100)
	}
	if got := must(ndisshim.OIDGenMediaConnectStatus, 4).AnswerUint32(); got != ndisshim.MediaStateConnected {
		t.Errorf("media connect status %d, want connected", got)
	}
	ls := must(ndisshim.OIDGenLinkState, 64)
	if ls.BytesWritten < 24 || binary.LittleEndian.Uint32(ls.InformationBuffer) != ndisshim.MediaStateConnected ||
		binary.LittleEndian.Uint64(ls.InformationBuffer[8:]) != speed {
		t.Errorf("link state % x, want connected at %d bit/s", ls.Answer(), uint64(speed))
	}
	if got := must(ndisshim.OIDGenVendorDescription, 256).Answer(); string(got) != VendorDescription+"\x00" {
		t.Errorf("vendor description %q, want %q NUL-terminated", got, VendorDescription)
	}
	if got := must(ndisshim.OID8023MaximumListSize, 4).AnswerUint32(); got == 0 {
		t.Error("maximum multicast list size 0")
	}
	r.halt()
}

// OID_GEN_CURRENT_LOOKAHEAD: get, set, get back; never above the maximum
// lookahead.
func TestOIDLookahead(t *testing.T) {
	r := newRig(t, rigOptions{})
	maxLA, st := r.query(ndisshim.OIDGenMaximumLookahead, 4)
	if st != ndisshim.StatusSuccess {
		t.Fatalf("query maximum lookahead: %v", st)
	}
	cur, st := r.query(ndisshim.OIDGenCurrentLookahead, 4)
	if st != ndisshim.StatusSuccess {
		t.Fatalf("query current lookahead: %v", st)
	}
	if cur.AnswerUint32() == 0 || cur.AnswerUint32() > maxLA.AnswerUint32() {
		t.Errorf("current lookahead %d, want 1..maximum lookahead %d", cur.AnswerUint32(), maxLA.AnswerUint32())
	}
	if st := r.b.OIDRequest(ndisshim.NewSetUint32(ndisshim.OIDGenCurrentLookahead, 128)); st != ndisshim.StatusSuccess {
		t.Fatalf("set lookahead 128: %v", st)
	}
	if cur, _ := r.query(ndisshim.OIDGenCurrentLookahead, 4); cur.AnswerUint32() != 128 {
		t.Errorf("lookahead %d after setting 128", cur.AnswerUint32())
	}
	if st := r.b.OIDRequest(ndisshim.NewSetUint32(ndisshim.OIDGenCurrentLookahead, maxLA.AnswerUint32())); st != ndisshim.StatusSuccess {
		t.Errorf("set lookahead to the maximum %d: %v", maxLA.AnswerUint32(), st)
	}
	if st := r.b.OIDRequest(ndisshim.NewSetUint32(ndisshim.OIDGenCurrentLookahead, maxLA.AnswerUint32()+1)); st == ndisshim.StatusSuccess {
		t.Errorf("set lookahead above the maximum %d succeeded", maxLA.AnswerUint32())
	}
	if cur, _ := r.query(ndisshim.OIDGenCurrentLookahead, 4); cur.AnswerUint32() != maxLA.AnswerUint32() {
		t.Errorf("a refused set changed the lookahead to %d", cur.AnswerUint32())
	}
	short := &ndisshim.OIDRequest{Type: ndisshim.OIDSet, OID: ndisshim.OIDGenCurrentLookahead, InformationBuffer: []byte{1, 2}}
	if st := r.b.OIDRequest(short); st != ndisshim.StatusInvalidLength || short.BytesNeeded != 4 {
		t.Errorf("set lookahead with 2 bytes: %v, BytesNeeded %d; want INVALID_LENGTH, 4", st, short.BytesNeeded)
	}
	r.halt()
}

// A query whose buffer is too short fails with BUFFER_TOO_SHORT and says
// how much it needs; sets check their input; unknown OIDs are refused.
func TestOIDBufferTooShortAndBadRequests(t *testing.T) {
	r := newRig(t, rigOptions{})
	cases := []struct {
		oid  ndisshim.OID
		size int
		need int
	}{
		{ndisshim.OID8023CurrentAddress, 5, 6},
		{ndisshim.OID8023PermanentAddress, 0, 6},
		{ndisshim.OIDGenMaximumFrameSize, 3, 4},
		{ndisshim.OIDGenStatistics, 71, 72},
		{ndisshim.OIDGenVendorDescription, 4, len(VendorDescription) + 1},
		{ndisshim.OIDGenXmitOK, 4, 8},
	}
	for _, c := range cases {
		q, st := r.query(c.oid, c.size)
		if st != ndisshim.StatusBufferTooShort || q.BytesNeeded != c.need || q.BytesWritten != 0 {
			t.Errorf("query %v with %d bytes: %v, BytesNeeded %d, BytesWritten %d; want BUFFER_TOO_SHORT, %d, 0",
				c.oid, c.size, st, q.BytesNeeded, q.BytesWritten, c.need)
		}
	}
	q, _ := r.query(ndisshim.OIDGenSupportedList, 4)
	if q.BytesNeeded <= 4 || q.BytesNeeded%4 != 0 {
		t.Errorf("supported list in 4 bytes: BytesNeeded %d", q.BytesNeeded)
	}
	if q2, st := r.query(ndisshim.OIDGenSupportedList, q.BytesNeeded); st != ndisshim.StatusSuccess || q2.BytesWritten != q.BytesNeeded {
		t.Errorf("supported list with BytesNeeded (%d) bytes: %v, wrote %d", q.BytesNeeded, st, q2.BytesWritten)
	}

	if _, st := r.query(ndisshim.OID(0x0badbeef), 64); st != ndisshim.StatusNotSupported {
		t.Errorf("unknown OID: %v, want NOT_SUPPORTED", st)
	}
	if st := r.b.OIDRequest(ndisshim.NewSetUint32(ndisshim.OIDGenCurrentPacketFilter, 0x1000)); st == ndisshim.StatusSuccess {
		t.Error("packet filter with an unknown bit accepted")
	}
	bad := &ndisshim.OIDRequest{Type: ndisshim.OIDSet, OID: ndisshim.OID8023MulticastList, InformationBuffer: make([]byte, 7)}
	if st := r.b.OIDRequest(bad); st != ndisshim.StatusInvalidLength {
		t.Errorf("multicast list of 7 bytes: %v, want INVALID_LENGTH", st)
	}
	max, _ := r.query(ndisshim.OID8023MaximumListSize, 4)
	tooMany := &ndisshim.OIDRequest{Type: ndisshim.OIDSet, OID: ndisshim.OID8023MulticastList, InformationBuffer: make([]byte, 6*(int(max.AnswerUint32())+1))}
	if st := r.b.OIDRequest(tooMany); st == ndisshim.StatusSuccess {
		t.Errorf("multicast list longer than the maximum %d accepted", max.AnswerUint32())
	}
	r.setMulticast(mcastA, mcastB)
	if q, _ := r.query(ndisshim.OID8023MulticastList, 64); !bytes.Equal(q.Answer(), append(append([]byte{}, mcastA...), mcastB...)) {
		t.Errorf("multicast list reads back % x", q.Answer())
	}
	r.halt()
}

// OID_GEN_STATISTICS and the single counters agree with Counters() after
// traffic of every kind.
func TestOIDStatisticsMatchCounters(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.restart()
	r.setFilter(ndisshim.PacketTypeDirected)
	r.wire(frame(ourMAC, 100, 1), frame(ourMAC, 5, 2), frame(ourMAC, 3000, 3), frame(otherMAC, 100, 4), frame(ourMAC, 200, 5))
	shimtest.WaitFor(t, "receive traffic handled", func() bool {
		c := r.counters()
		return c.RxFrames == 2 && c.RxDrops() == 3
	})
	r.p.send(t, r.b, frame(peerMAC, 300, 6), frame(peerMAC, 3000, 7))
	r.readPeer(1)

	c := r.counters()
	s := r.statistics()
	want := ndisshim.StatisticsInfo{
		RcvDiscards: 3, RcvError: 2, DirectedFramesRcv: 2, DirectedBytesRcv: 300,
		XmitError: 0, XmitDiscards: 1, DirectedFramesXmit: 1, DirectedBytesXmit: 300,
		RcvNoBuffer: 0,
	}
	if s != want {
		t.Errorf("statistics %+v, want %+v", s, want)
	}
	if uint64(c.RxFrames) != s.DirectedFramesRcv || uint64(c.RxBytes) != s.DirectedBytesRcv ||
		uint64(c.TxFrames) != s.DirectedFramesXmit || uint64(c.TxBytes) != s.DirectedBytesXmit ||
		uint64(c.RxDrops()) != s.RcvDiscards || uint64(c.RxDropRunt+c.RxDropOversize) != s.RcvError {
		t.Errorf("statistics %+v disagree with Counters %+v", s, c)
	}
	single := map[ndisshim.OID]int64{
		ndisshim.OIDGenRcvOK: c.RxFrames, ndisshim.OIDGenXmitOK: c.TxFrames, ndisshim.OIDGenRcvError: c.RxDropRunt + c.RxDropOversize,
		ndisshim.OIDGenXmitError: c.TxErrors, ndisshim.OIDGenRcvNoBuffer: c.RxDropNoBuffer,
	}
	for o, v := range single {
		if q, st := r.query(o, 8); st != ndisshim.StatusSuccess || q.AnswerUint64() != uint64(v) {
			t.Errorf("%v = %d (%v), Counters say %d", o, q.AnswerUint64(), st, v)
		}
	}
	r.halt()
}
