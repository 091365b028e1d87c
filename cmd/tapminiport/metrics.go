package main

// --metrics ADDR: Prometheus exposition on its own registry. The collector
// reads a sample (the same snapshots --stats and the dump read) at scrape
// time, so metrics cost nothing per packet. The server is shut down before
// the adapter halts, so no connection or goroutine of it outlives the halt.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tapminiport/tapminiport/adapter"
	"github.com/tapminiport/tapminiport/ndisshim"
)

const metricsNamespace = "tapminiport"

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, "", name), help, labels, nil)
}

// The metrics. Keep README's metrics table in step with this list.
var (
	descInfo          = desc("info", "Constant 1, labelled with the driver version, the hardware TAP and the NIC TAP.", "version", "adapter", "nic")
	descRxPackets     = desc("rx_packets_total", "Frames indicated up to the stack (wire → host).", "queue")
	descRxBytes       = desc("rx_bytes_total", "Bytes of the frames indicated up to the stack (wire → host).", "queue")
	descTxPackets     = desc("tx_packets_total", "Frames the miniport wrote to the hardware TAP (host → wire).", "queue")
	descTxBytes       = desc("tx_bytes_total", "Bytes of the frames written to the hardware TAP (host → wire).", "queue")
	descIndications   = desc("rx_indications_total", "Receive indications (NdisMIndicateReceiveNetBufferLists calls).", "queue")
	descResources     = desc("resources_indications_total", "Receive indications made with NDIS_RECEIVE_FLAGS_RESOURCES (pool low).", "queue")
	descIndFrames     = desc("indication_frames", "Frames per receive indication.", "queue")
	descRxDropped     = desc("rx_dropped_total", "Received frames dropped by the miniport, by cause.", "queue", "cause")
	descTxDropped     = desc("tx_dropped_total", "Frames to send dropped or failed by the miniport, by cause.", "queue", "cause")
	descStackDropped  = desc("stack_dropped_total", "Frames dropped by the host-stack binding, by cause.", "cause")
	descSoftOffload   = desc("stack_software_offload_total", "Frames the stack cut, checksummed or coalesced in software because the other side could not take them as they were.", "kind")
	descReturnedEarly = desc("stack_returned_early_total", "Receive NBLs the stack returned at once because its hold queue was full.")
	descPolls         = desc("rx_send_polls_total", "Receive DPCs a small send ran on its own goroutine (--rx-poll-on-send).")
	descPollFrames    = desc("rx_send_poll_frames_total", "Frames the receive DPCs run by small sends read from the hardware TAP.")
	descNICPolls      = desc("stack_nic_polls_total", "NIC TAP reader runs a small indication made on its own goroutine (--nic-poll-on-receive).")
	descNICPollFrames = desc("stack_nic_poll_frames_total", "Host frames the NIC TAP reader runs made by small indications sent down.")
	descModWaits      = desc("interrupt_moderation_waits_total", "Times a receive DPC (receive_dpc) or the NIC TAP reader (nic_reader) waited for interrupt moderation after a busy one-way wake-up.", "dpc")
	descModSpent      = desc("interrupt_moderation_budget_spent_total", "Runs of a receive DPC (receive_dpc) or the NIC TAP reader (nic_reader) after a moderation wait that took the whole --moderation-budget.", "dpc")
	descPoolSize      = desc("pool_buffers", "Receive buffers in the miniport's pool.", "queue")
	descPoolInUse     = desc("pool_buffers_in_use", "Receive buffers in use now (filling or held by the stack).", "queue")
	descPoolHighWater = desc("pool_buffers_high_water", "The most receive buffers in use at once.", "queue")
	descPoolExhaust   = desc("pool_exhaustions_total", "Times the DPC found the receive pool empty.", "queue")
	descHeld          = desc("stack_held_nbls", "Receive NBLs the stack holds now (indicated, not yet returned).")
	descHeldPeak      = desc("stack_held_nbls_peak", "The most receive NBLs the stack held at once.")
	descSendsNow      = desc("sends_in_flight", "Send NBLs the miniport holds now (sent, not yet completed).")
	descDrained       = desc("drained_nbls_total", "NBLs that came back while pause or halt waited for them.")
	descState         = desc("adapter_state", "1 for the adapter's current NDIS state, 0 for the others.", "state")
	descFindings      = desc("verifier_findings_total", "Findings the verifier has made so far.")
	descPcapFrames    = desc("pcap_frames_total", "Frames written to the --pcap file.")
	descPcapBytes     = desc("pcap_bytes_total", "Bytes of frames written to the --pcap file.")
	descPcapSkipped   = desc("pcap_skipped_total", "Frames not written to the --pcap file (past --pcap-max).")
)

var allStates = []ndisshim.State{ndisshim.StateHalted, ndisshim.StateInitializing, ndisshim.StatePaused,
	ndisshim.StateRestarting, ndisshim.StateRunning, ndisshim.StatePausing, ndisshim.StateShutdown}

// collector is a prometheus.Collector over a sample function.
type collector struct {
	sample           func() sample
	poolSize         int
	version, hw, nic string
}

var _ prometheus.Collector = (*collector)(nil)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInfo, descRxPackets, descRxBytes, descTxPackets, descTxBytes, descIndications,
		descResources, descIndFrames, descRxDropped, descTxDropped, descStackDropped, descSoftOffload, descReturnedEarly, descPolls, descPollFrames, descNICPolls, descNICPollFrames, descModWaits, descModSpent, descPoolSize, descPoolInUse,
		descPoolHighWater, descPoolExhaust, descHeld, descHeldPeak, descSendsNow, descDrained, descState, descFindings,
		descPcapFrames, descPcapBytes, descPcapSkipped} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.sample()
	mp := s.mp
	q := queueLabel(len(s.queues))
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	gauge(descInfo, 1, c.version, c.hw, c.nic)
	if len(s.queues) > 1 {
		for i, qc := range s.queues {
			l := strconv.Itoa(i)
			counter(descRxPackets, qc.RxFrames, l)
			counter(descRxBytes, qc.RxBytes, l)
			counter(descTxPackets, qc.TxFrames, l)
			counter(descTxBytes, qc.TxBytes, l)
		}
	} else {
		counter(descRxPackets, mp.RxFrames, q)
		counter(descRxBytes, mp.RxBytes, q)
		counter(descTxPackets, mp.TxFrames, q)
		counter(descTxBytes, mp.TxBytes, q)
	}
	counter(descIndications, mp.Indications, q)
	counter(descResources, mp.ResourcesIndications, q)

	// Buckets 1, 2–3, 4–7 ... 64+ are cumulative "le" buckets 1, 3, 7 ... +Inf.
	buckets := map[float64]uint64{}
	var cum uint64
	for i := 0; i < adapter.NumIndicationBuckets-1; i++ {
		cum += uint64(mp.FramesPerIndication[i])
		buckets[float64(adapter.IndicationBuckets[i+1]-1)] = cum
	}
	cum += uint64(mp.FramesPerIndication[adapter.NumIndicationBuckets-1])
	ch <- prometheus.MustNewConstHistogram(descIndFrames, cum, float64(mp.RxFrames), buckets, q)

	for _, d := range []struct {
		cause string
		v     int64
	}{{"no_buffer", mp.RxDropNoBuffer}, {"runt", mp.RxDropRunt}, {"oversize", mp.RxDropOversize},
		{"filtered", mp.RxDropFiltered}, {"not_ready", mp.RxDropNotReady}} {
		counter(descRxDropped, d.v, q, d.cause)
	}
	for _, d := range []struct {
		cause string
		v     int64
	}{{"paused", mp.TxDropPaused}, {"oversize", mp.TxDropOversize}, {"link_down", mp.TxDropLinkDown}, {"no_room", mp.TxDropNoRoom}, {"error", mp.TxErrors}} {
		counter(descTxDropped, d.v, q, d.cause)
	}
	st := s.stack
	for _, d := range []struct {
		cause string
		v     int64
	}{{"paused", st.DropPaused}, {"no_send_buffer", st.DropNoSendBuffer}, {"oversize", st.DropOversize}, {"no_room", st.ToHostNoRoom},
		{"send_failed", st.SendFailed}, {"write_error", st.WriteErrors}} {
		counter(descStackDropped, d.v, d.cause)
	}
	for _, d := range []struct {
		kind string
		v    int64
	}{{"segmented_to_host", st.SegmentedToHost}, {"segmented_to_wire", st.SegmentedToWire},
		{"checksummed_to_host", st.ChecksummedToHost}, {"checksummed_to_wire", st.ChecksummedToWire},
		{"coalesced_udp", st.Coalesced}, {"dropped", st.DropSegment}} {
		counter(descSoftOffload, d.v, d.kind)
	}
	counter(descReturnedEarly, st.ReturnedEarly)
	counter(descPolls, mp.RxPolls)
	counter(descPollFrames, mp.RxPollFrames)
	counter(descNICPolls, st.Polls)
	counter(descNICPollFrames, st.PollFrames)
	counter(descModWaits, mp.ModerationWaits, "receive_dpc")
	counter(descModWaits, st.ModerationWaits, "nic_reader")
	counter(descModSpent, mp.ModerationSpent, "receive_dpc")
	counter(descModSpent, st.ModerationSpent, "nic_reader")
	gauge(descPoolSize, int64(c.poolSize), q)
	gauge(descPoolInUse, mp.PoolInUse, q)
	gauge(descPoolHighWater, mp.PoolHighWater, q)
	counter(descPoolExhaust, mp.PoolExhaustions, q)
	gauge(descHeld, s.shim.HeldNow)
	gauge(descHeldPeak, s.shim.PeakHeld)
	gauge(descSendsNow, s.shim.SendsNow)
	counter(descDrained, s.shim.DrainedNBLs)
	for _, state := range allStates {
		v := int64(0)
		if state == s.state {
			v = 1
		}
		gauge(descState, v, state.String())
	}
	counter(descFindings, int64(s.findings))
	if s.pcap.on {
		counter(descPcapFrames, s.pcap.frames)
		counter(descPcapBytes, s.pcap.bytes)
		counter(descPcapSkipped, s.pcap.skipped)
	}
}

// metricsServer is the --metrics HTTP server.
type metricsServer struct {
	ln   net.Listener
	log  *slog.Logger
	srv  *http.Server
	done chan struct{}
}

// listenMetrics binds the address before anything else starts, so a busy
// port fails the start with nothing to undo.
func listenMetrics(addr string, log *slog.Logger) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics %s: %w (is another tapminiport running? pick another port, or 127.0.0.1:0 for any)", addr, err)
	}
	if !isLoopback(ln.Addr()) {
		log.Warn("metrics served on a non-loopback address, as --metrics asked: anyone who reaches it reads the counters", "addr", ln.Addr().String())
	}
	return &metricsServer{ln: ln, log: log}, nil
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// URL is where the metrics are served.
func (s *metricsServer) URL() string { return "http://" + s.ln.Addr().String() + "/metrics" }

// serve starts answering with the collector on a registry of its own (plus
// the Go runtime and process collectors).
func (s *metricsServer) serve(c *collector) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "tapminiport %s: metrics at /metrics\n", adapter.Version)
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("metrics server", "err", err)
		}
	}()
}

// shutdown stops the server: the listener and every connection are closed
// and the serving goroutine has returned when it does.
func (s *metricsServer) shutdown() {
	if s == nil {
		return
	}
	if s.srv == nil { // never served
		s.ln.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close() // a scrape still running after 2s: cut it
	}
	<-s.done
}
