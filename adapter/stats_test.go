package adapter

import (
	"testing"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/shimtest"
)

func TestIndicationBucket(t *testing.T) {
	for _, tc := range []struct{ n, bucket int }{
		{0, 0}, {1, 0}, {2, 1}, {3, 1}, {4, 2}, {7, 2}, {8, 3}, {15, 3},
		{16, 4}, {31, 4}, {32, 5}, {63, 5}, {64, 6}, {65, 6}, {1024, 6},
	} {
		if got := indicationBucket(tc.n); got != tc.bucket {
			t.Errorf("indicationBucket(%d) = %d, want %d", tc.n, got, tc.bucket)
		}
		if tc.n >= 1 {
			b := tc.bucket
			if tc.n < IndicationBuckets[b] || (b+1 < NumIndicationBuckets && tc.n >= IndicationBuckets[b+1]) {
				t.Errorf("%d frames in bucket %s (from %d)", tc.n, IndicationBucketLabel(b), IndicationBuckets[b])
			}
		}
	}
	if IndicationBucketLabel(0) != "1" || IndicationBucketLabel(6) != "64+" {
		t.Errorf("labels %q %q", IndicationBucketLabel(0), IndicationBucketLabel(6))
	}
}

// TestFramesPerIndicationHistogram: the histogram in the snapshot counts
// exactly the indications the protocol saw, each in its bucket.
func TestFramesPerIndicationHistogram(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.restart()
	r.setFilter(ndisshim.PacketTypeDirected)
	for i := 0; i < 40; i++ {
		r.wire(frame(ourMAC, 80, i))
	}
	shimtest.WaitFor(t, "40 frames indicated", func() bool { return r.p.frameCount() == 40 })
	var want [NumIndicationBuckets]int64
	for _, ind := range r.p.indications() {
		want[indicationBucket(len(ind.frames))]++
	}
	c := r.counters()
	if c.FramesPerIndication != want {
		t.Errorf("histogram %v, want %v (from the indications the protocol saw)", c.FramesPerIndication, want)
	}
	var sum int64
	for _, n := range c.FramesPerIndication {
		sum += n
	}
	if sum != c.Indications {
		t.Errorf("histogram counts %d indications, Indications = %d", sum, c.Indications)
	}
	r.halt()
}
