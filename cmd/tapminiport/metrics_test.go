package main

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tapminiport/tapminiport/adapter"
	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/hoststack"
)

func fakeSample() sample {
	s := sample{at: time.Now(), state: ndisshim.StateRunning,
		shim:     ndisshim.Stats{HeldNow: 12, PeakHeld: 40, DrainedNBLs: 3},
		stack:    hoststack.Counters{ReturnedEarly: 2, DropOversize: 8, ToHostNoRoom: 9, WriteErrors: 10},
		findings: 1,
		pcap:     pcapStats{on: true, path: "/tmp/x.pcap", frames: 9, bytes: 900, skipped: 1},
		mp: adapter.Snapshot{RxFrames: 100, RxBytes: 150000, TxFrames: 50, TxBytes: 4000, Indications: 10, ResourcesIndications: 1,
			RxDropNoBuffer: 4, RxDropOversize: 3, TxDropPaused: 1, TxDropLinkDown: 7, TxDropNoRoom: 5, TxErrors: 6, PoolInUse: 12, PoolHighWater: 64},
	}
	// 10 indications: 2 of 1 frame, 3 of 2–3, 5 of 16–31 (frames sum to RxFrames).
	s.mp.FramesPerIndication = [adapter.NumIndicationBuckets]int64{2, 3, 0, 0, 5, 0, 0}
	return s
}

func gather(t *testing.T, c prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry() // checks Describe against Collect
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func labelsOf(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}

// value finds the metric of family name whose labels include want.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, typ dto.MetricType, want map[string]string) *dto.Metric {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		t.Fatalf("no metric %s", name)
	}
	if mf.GetType() != typ {
		t.Errorf("%s is a %s, want %s", name, mf.GetType(), typ)
	}
next:
	for _, m := range mf.GetMetric() {
		l := labelsOf(m)
		for k, v := range want {
			if l[k] != v {
				continue next
			}
		}
		return m
	}
	t.Fatalf("no %s with labels %v", name, want)
	return nil
}

func TestCollectorReadsTheSample(t *testing.T) {
	mfs := gather(t, &collector{sample: fakeSample, poolSize: 1024, version: "0.1.0", hw: "tmhw0", nic: "tm0"})
	q := map[string]string{"queue": "0"}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"tapminiport_rx_packets_total", q, 100},
		{"tapminiport_rx_bytes_total", q, 150000},
		{"tapminiport_tx_packets_total", q, 50},
		{"tapminiport_tx_bytes_total", q, 4000},
		{"tapminiport_rx_indications_total", q, 10},
		{"tapminiport_resources_indications_total", q, 1},
		{"tapminiport_rx_dropped_total", map[string]string{"queue": "0", "cause": "no_buffer"}, 4},
		{"tapminiport_rx_dropped_total", map[string]string{"queue": "0", "cause": "oversize"}, 3},
		{"tapminiport_rx_dropped_total", map[string]string{"queue": "0", "cause": "runt"}, 0},
		{"tapminiport_tx_dropped_total", map[string]string{"queue": "0", "cause": "paused"}, 1},
		{"tapminiport_tx_dropped_total", map[string]string{"queue": "0", "cause": "link_down"}, 7},
		{"tapminiport_tx_dropped_total", map[string]string{"queue": "0", "cause": "no_room"}, 5},
		{"tapminiport_tx_dropped_total", map[string]string{"queue": "0", "cause": "error"}, 6},
		{"tapminiport_stack_dropped_total", map[string]string{"cause": "oversize"}, 8},
		{"tapminiport_stack_dropped_total", map[string]string{"cause": "no_room"}, 9},
		{"tapminiport_stack_dropped_total", map[string]string{"cause": "write_error"}, 10},
		{"tapminiport_stack_returned_early_total", map[string]string{}, 2},
		{"tapminiport_pool_exhaustions_total", q, 0},
		{"tapminiport_drained_nbls_total", nil, 3},
		{"tapminiport_verifier_findings_total", nil, 1},
		{"tapminiport_pcap_frames_total", nil, 9},
		{"tapminiport_pcap_skipped_total", nil, 1},
	} {
		if got := value(t, mfs, tc.name, dto.MetricType_COUNTER, tc.labels).GetCounter().GetValue(); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"tapminiport_pool_buffers", q, 1024},
		{"tapminiport_pool_buffers_in_use", q, 12},
		{"tapminiport_pool_buffers_high_water", q, 64},
		{"tapminiport_stack_held_nbls", nil, 12},
		{"tapminiport_stack_held_nbls_peak", nil, 40},
		{"tapminiport_adapter_state", map[string]string{"state": "Running"}, 1},
		{"tapminiport_adapter_state", map[string]string{"state": "Paused"}, 0},
		{"tapminiport_info", map[string]string{"version": "0.1.0", "adapter": "tmhw0", "nic": "tm0"}, 1},
	} {
		if got := value(t, mfs, tc.name, dto.MetricType_GAUGE, tc.labels).GetGauge().GetValue(); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if n := len(mfs["tapminiport_adapter_state"].GetMetric()); n != 7 {
		t.Errorf("adapter_state has %d series, want one per state (7)", n)
	}
	h := value(t, mfs, "tapminiport_indication_frames", dto.MetricType_HISTOGRAM, q).GetHistogram()
	if h.GetSampleCount() != 10 || h.GetSampleSum() != 100 {
		t.Errorf("histogram count %d sum %v, want 10 and 100", h.GetSampleCount(), h.GetSampleSum())
	}
	wantCum := map[float64]uint64{1: 2, 3: 5, 7: 5, 15: 5, 31: 10, 63: 10}
	if len(h.GetBucket()) != len(wantCum) {
		t.Errorf("buckets %v", h.GetBucket())
	}
	for _, b := range h.GetBucket() {
		if w, ok := wantCum[b.GetUpperBound()]; !ok || b.GetCumulativeCount() != w {
			t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), w)
		}
	}
	// Without --pcap there are no pcap series.
	noPcap := func() sample { s := fakeSample(); s.pcap = pcapStats{}; return s }
	if mfs := gather(t, &collector{sample: noPcap}); mfs["tapminiport_pcap_frames_total"] != nil {
		t.Error("pcap metrics without --pcap")
	}
}

// TestMetricsServerShutsDownClean: a scrape over HTTP works, and after
// shutdown the port is closed, the serving goroutine has returned and no
// descriptor is left.
func TestMetricsServerShutsDownClean(t *testing.T) {
	takeFDBaseline()
	log := slog.New(slog.DiscardHandler)
	s, err := listenMetrics("127.0.0.1:0", log)
	if err != nil {
		t.Fatal(err)
	}
	s.serve(&collector{sample: fakeSample, poolSize: 1024, version: "0.1.0", hw: "tmhw0", nic: "tm0"})
	resp, err := http.Get(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`tapminiport_rx_packets_total{queue="0"} 100`,
		`tapminiport_indication_frames_bucket{queue="0",le="3"} 5`,
		"# TYPE tapminiport_indication_frames histogram",
		`tapminiport_adapter_state{state="Running"} 1`,
		"go_goroutines ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	http.DefaultClient.CloseIdleConnections()
	s.shutdown()
	select {
	case <-s.done:
	default:
		t.Error("serving goroutine still running after shutdown")
	}
	if _, err := http.Get(s.URL()); err == nil {
		t.Error("metrics still served after shutdown")
	}
	if l := leakedFDs(); len(l) != 0 {
		t.Errorf("descriptors left after shutdown: %v", l)
	}
}

func TestMetricsBusyPortNamesTheFlag(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	s, err := listenMetrics("127.0.0.1:0", log)
	if err != nil {
		t.Fatal(err)
	}
	defer s.shutdown()
	_, err = listenMetrics(s.ln.Addr().String(), log)
	if err == nil || !strings.Contains(err.Error(), "--metrics "+s.ln.Addr().String()) || !strings.Contains(err.Error(), "another port") {
		t.Errorf("busy port: %v", err)
	}
}

// TestStatsLineQueues: with two queues the line is q=all and each queue
// follows with its own rates and totals over the same interval.
func TestStatsLineQueues(t *testing.T) {
	prev := fakeSample()
	prev.queues = []adapter.QueueCounters{{RxFrames: 60, RxBytes: 90000, TxFrames: 30, TxBytes: 2000}, {RxFrames: 40, RxBytes: 60000, TxFrames: 20, TxBytes: 2000}}
	cur := fakeSample()
	cur.at = prev.at.Add(500 * time.Millisecond)
	cur.mp.RxFrames += 1000
	cur.queues = []adapter.QueueCounters{{RxFrames: 860, RxBytes: 90000 + 1_000_000, TxFrames: 30, TxBytes: 2000}, {RxFrames: 240, RxBytes: 60000 + 250_000, TxFrames: 70, TxBytes: 8250}}
	lines := strings.Split(strings.TrimSuffix(statsLine(prev, cur, 1024), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("want the q=all line and one per queue, got %d lines:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if !strings.HasPrefix(lines[0], "stats q=all rx_pps=2000 ") {
		t.Errorf("adapter line: %q", lines[0])
	}
	for i, want := range []string{
		"stats q=0 rx_pps=1600 rx_mbps=16.0 tx_pps=0 tx_mbps=0.0 rx=860 tx=30",
		"stats q=1 rx_pps=400 rx_mbps=4.0 tx_pps=100 tx_mbps=0.1 rx=240 tx=70",
	} {
		if lines[i+1] != want {
			t.Errorf("queue %d line:\n got %q\nwant %q", i, lines[i+1], want)
		}
	}
}

func TestStatsLine(t *testing.T) {
	prev := fakeSample()
	cur := fakeSample()
	cur.at = prev.at.Add(500 * time.Millisecond)
	cur.mp.RxFrames += 1000
	cur.mp.RxBytes += 1_250_000 // 10 Mbit in 0.5 s
	cur.mp.TxFrames += 500
	cur.mp.TxBytes += 62_500
	cur.mp.FramesPerIndication[6] += 15
	line := statsLine(prev, cur, 1024)
	if !strings.HasPrefix(line, "stats q=0 ") || !strings.HasSuffix(line, " state=Running\n") || strings.Count(line, "\n") != 1 {
		t.Errorf("line shape: %q", line)
	}
	for _, want := range []string{
		" rx_pps=2000 rx_mbps=20.0 tx_pps=1000 tx_mbps=1.0 rx=1100 tx=550 held=12 pool=12/1024 pool_hw=64 resources=1 ",
		" rx_drop=nobuf:4,runt:0,oversize:3,filtered:0,notready:0 tx_drop=paused:1,oversize:0,link_down:7,no_room:5,error:6 ",
		" fpi=1:0,2-3:0,4-7:0,8-15:0,16-31:0,32-63:0,64+:15 ",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("stats line lacks %q:\n%s", want, line)
		}
	}
}
