// Command tapminiport runs the TAP miniport under the NDIS-like shim with
// the host-stack binding above it and, by default, an embedded wire
// partner: a network namespace holding the hardware TAP's kernel side.
//
//	host stack ── tm0 ── hoststack ═ ndisshim ═ adapter ── tmhw0 ── netns tmwire
//
// SIGTERM or SIGINT: pause (wait for the stack to return every buffer),
// unbind, halt, unload, print the exit report. A second signal says it is
// still draining; a third forces ShutdownEx and exits 3 with what was held.
// SIGHUP is logged and otherwise ignored: there is nothing to reload, and a
// closed terminal is no reason to stop (see nothingToReload).
//
// A run marks what it creates (leftovers.go); the next start removes what a
// killed run left and refuses what is not ours or still in use.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tapminiport/tapminiport/adapter"
	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/ndisshim/hoststack"
	"github.com/tapminiport/tapminiport/tapdev"
)

// Exit codes.
const (
	exitOK       = 0
	exitStart    = 1
	exitFlags    = 2
	exitForced   = 3
	exitVerifier = 4
	exitRemoved  = 5
)

func main() {
	// First thing: a stop signal that arrives during start-up is kept and
	// honoured once the adapter runs (a halt), never the default death.
	// The signals stay caught until the process exits: restoring their
	// default action on the way out would let a late SIGTERM kill the
	// process after its report, with another exit code than the report's.
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, catchSignals()))
}

// signals are the channels the run reads its signals from.
type signals struct {
	stop chan os.Signal // SIGINT, SIGTERM
	hup  chan os.Signal // SIGHUP
}

// catchSignals starts catching the stop signals and SIGHUP. SIGHUP has a
// channel of its own: a burst of them before ready must not fill the stop
// signals' buffer (signal.Notify drops what does not fit) and lose a
// SIGTERM.
func catchSignals() signals {
	s := signals{stop: make(chan os.Signal, 4), hup: make(chan os.Signal, 1)}
	signal.Notify(s.stop, syscall.SIGINT, syscall.SIGTERM)
	signal.Notify(s.hup, syscall.SIGHUP)
	return s
}

func run(args []string, stdout, stderr io.Writer, sig signals) int {
	sigs, hups := sig.stop, sig.hup
	o, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "tapminiport: %v\n", err)
		return exitFlags
	}
	if o.version {
		fmt.Fprintf(stdout, "tapminiport %s\n", adapter.Version)
		return exitOK
	}
	stderr = &lockedWriter{w: stderr} // slog, --stats lines and SIGUSR1 dumps share it
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))
	if err := preflight(!o.noWire || o.nicNetns != ""); err != nil {
		fmt.Fprintf(stderr, "tapminiport: %v\n", err)
		return exitStart
	}
	if err := checkBridge(o.bridge); err != nil {
		fmt.Fprintf(stderr, "tapminiport: %v\n", err)
		return exitStart
	}
	takeFDBaseline()

	m := &machine{o: o, log: log, stdout: stdout, stderr: stderr}
	m.watchUSR1()
	if err := m.openObservers(); err != nil {
		fmt.Fprintf(stderr, "tapminiport: %v\n", err)
		m.undoStart()
		return exitStart
	}
	if err := m.start(); err != nil {
		log.Error("start failed", "err", withFix(err))
		m.undoStart()
		return exitStart
	}
	m.startObservers()
	m.watchRemoval()
	// The devices are set up: keep only what the run and its halt need.
	if kept, err := dropCapabilities(m.wireCreated || o.nicNetns != ""); err != nil {
		log.Warn("running with every privilege", "err", err)
	} else {
		log.Info("dropped capabilities", "kept", strings.Join(kept, ","))
	}
	m.sampleHardwareDrops(true)
	m.sampleNICDrops(true)
	m.banner()
	m.steadyFrom = sampleSteady()
wait:
	for {
		select {
		case <-hups:
			m.nothingToReload()
		case sig := <-sigs:
			// The steady state ends here, before the log line (its
			// allocations are the stop's, not the traffic's).
			m.steadyTo = sampleSteady()
			log.Info("signal received: pause, halt, unload", "signal", sig.String())
			break wait
		case <-m.removedCh: // noteRemoval told the adapter
			m.steadyTo = sampleSteady()
			log.Error("surprise removal: pause, halt, unload", "device", m.removal().String())
			break wait
		}
	}
	return m.stop(sigs, hups)
}

// nothingToReload answers SIGHUP: logged, otherwise ignored, and never
// counted among the stop signals. A daemon's SIGHUP means "reload", and
// there is nothing to reload; its other meaning, the terminal went away, is
// no reason to stop halfway through a test or a measurement (and its
// default action, death, would leave the wire namespace behind). Stopping
// is SIGTERM's and SIGINT's job.
func (m *machine) nothingToReload() {
	m.log.Info("SIGHUP: nothing to reload (stop with SIGTERM)")
}

// withFix adds the fix to a permission error: the process lacks root.
func withFix(err error) error {
	if errors.Is(err, os.ErrPermission) && !strings.Contains(err.Error(), "sudo") {
		return fmt.Errorf("%w: needs root or CAP_NET_ADMIN and CAP_SYS_ADMIN: run with sudo", err)
	}
	return err
}

// preflight names the fix when the process cannot create TAPs (or, with
// namespaces, namespaces).
func preflight(namespaces bool) error {
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("/dev/net/tun is missing: load the tun module (modprobe tun) or run where TAP devices exist: %w", err)
	}
	if m := missingCapabilities(namespaces); m != "" {
		need, what := "CAP_NET_ADMIN", "TAPs"
		if namespaces {
			need, what = "CAP_NET_ADMIN and CAP_SYS_ADMIN", "TAPs and namespaces"
		}
		return fmt.Errorf("needs root or %s (it creates %s; %s missing): run with sudo", need, what, m)
	}
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("cannot open /dev/net/tun: needs root or CAP_NET_ADMIN: run with sudo: %w", err)
	}
	return f.Close()
}

// checkBridge makes sure --bridge names an existing bridge in this
// namespace before anything is created.
func checkBridge(name string) error {
	if name == "" {
		return nil
	}
	l, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		return fmt.Errorf("--bridge %s: no link named %q in this network namespace (create one: ip link add %s type bridge; ip link set %s up)", name, name, name, name)
	case err != nil:
		return fmt.Errorf("--bridge %s: %w", name, withFix(err))
	case l.Type() != "bridge":
		return fmt.Errorf("--bridge %s: %s is a %q link, not a bridge", name, name, l.Type())
	}
	return nil
}

// machine is the running system: driver, adapter, binding, wire partner.
type machine struct {
	o      *options
	log    *slog.Logger
	stdout io.Writer
	stderr io.Writer

	self        identity // this process, as the ownership marks name it
	wireCreated bool
	drv         *ndisshim.Driver
	a           *ndisshim.Adapter
	mp          *adapter.Miniport
	st          *hoststack.Stack
	hwNetns     string // where the hardware TAP's link lives now
	snap        adapter.Snapshot
	stackSnap   hoststack.Counters
	queueSnap   []adapter.QueueCounters
	verdict     error
	left        []string
	removedCh   chan struct{} // a TAP was deleted: stop waiting for a signal
	endMu       sync.Mutex    // guards removeWire, verdict, surprise, stopping and watches between the run, its watches, halt and force
	surprise    removal       // see noteRemoval
	stopping    bool          // a stop signal or a removal ended the wait
	watches     [2]struct {   // hwWatch, nicWatch
		what removal // the TAP watched
		stop func()
		off  bool
	}
	steadyFrom steadySample // at ready
	steadyTo   steadySample // at the stop signal or surprise removal
	hwDrops    queueDrops   // the hardware TAP's kernel queue drops (tapdrops.go; endMu)
	nicDrops   queueDrops   // the NIC TAP's
	started    time.Time

	// observers (observe.go, metrics.go, pcap.go)
	obs                sync.RWMutex // the gate: see observe.go
	mpLive             bool         // m.mp may be read (cleared before Halt)
	metrics            *metricsServer
	capture            capture
	statsStop          chan struct{}
	statsDone          chan struct{}
	usr1               chan os.Signal
	dumpStop, dumpDone chan struct{}
	stopObsOnce        sync.Once
	stopDumpsOnce      sync.Once
	closeCaptureOnce   sync.Once
	captureErr         error
}

func (m *machine) start() error {
	o := m.o
	m.started = time.Now()
	if err := m.clearLeftovers(); err != nil { // before creating anything
		return err
	}
	if !o.noWire {
		if tapdev.NetnsExists(o.wireNetns) { // made since clearLeftovers looked
			return foreignNetns(o.wireNetns)
		}
		if err := tapdev.CreateNetns(o.wireNetns); err != nil {
			if errors.Is(err, os.ErrPermission) {
				return fmt.Errorf("create wire namespace %s (--wire-netns): %w: needs root or CAP_NET_ADMIN and CAP_SYS_ADMIN: run with sudo", o.wireNetns, err)
			}
			return fmt.Errorf("create wire namespace %s (--wire-netns): %w", o.wireNetns, err)
		}
		m.wireCreated = true
		// A namespace has no alias: its lo carries the mark.
		if err := tapdev.ConfigureLink(o.wireNetns, "lo", tapdev.LinkConfig{Alias: m.markAs("wire")}); err != nil {
			return fmt.Errorf("mark wire namespace %s as this run's: %w", o.wireNetns, err)
		}
	}
	if o.nicNetns != "" && !tapdev.NetnsExists(o.nicNetns) {
		return fmt.Errorf("--nic-netns %s: no such network namespace (create it with `ip netns add %s`)", o.nicNetns, o.nicNetns)
	}
	drv, err := ndisshim.RegisterMiniportDriver(adapter.Characteristics(), m.log)
	if err != nil {
		return err
	}
	m.drv = drv
	drv.OnFinding(func(f ndisshim.Finding) { m.log.Error("verifier", "finding", f.String()) })
	cfg := adapter.Config{
		HardwareName: o.hwTap, MTU: o.mtu, MAC: o.mac, Bridge: o.bridge, RxBuffers: o.rxBuffers, Batch: o.batch, Queues: o.queues,
		Moderation: ndisshim.Moderation{Delay: o.moderation, Frames: 8, SmallFrame: 512, OneWay: true, Budget: o.moderationBudget},
		PollOnSend: o.pollOnSend,
		Open:       m.openHardware, Configure: adapter.ConfigureTAP, VnetHdr: o.offload,
		Unconfigure: func(name string) error {
			// A forced exit's removeWire may move the link meanwhile.
			m.endMu.Lock()
			ns := m.hwNetns
			m.endMu.Unlock()
			return tapdev.SetLinkUp(ns, name, false)
		},
		FailAt: o.failAt,
		Log:    m.log,
	}
	a, err := drv.AddAdapter(ndisshim.InitParameters{Name: o.hwTap, Config: cfg}, ndisshim.AdapterOptions{
		WatchdogInterval: o.watchdog,
		OnHeld: func(r ndisshim.HeldReport) {
			m.log.Info(r.Phase+": waiting", "for", r.String(), "waited", r.Waited.Round(time.Millisecond))
		},
	})
	if err != nil {
		return err
	}
	m.a = a
	m.mp = a.MiniportContext().(*adapter.Miniport)
	if m.mp.Created() { // the mark goes with the TAP into the wire namespace
		if err := tapdev.ConfigureLink("", o.hwTap, tapdev.LinkConfig{Alias: m.markAs("hw")}); err != nil {
			return fmt.Errorf("mark hardware TAP %s as this run's: %w", o.hwTap, err)
		}
	}
	if !o.noWire {
		if err := tapdev.MoveLink(o.hwTap, "", o.wireNetns); err != nil {
			return fmt.Errorf("move hardware TAP %s into %s: %w", o.hwTap, o.wireNetns, err)
		}
		m.hwNetns = o.wireNetns
		if err := tapdev.ConfigureLink(o.wireNetns, "lo", tapdev.LinkConfig{Up: true}); err != nil {
			return err
		}
		if err := tapdev.ConfigureLink(o.wireNetns, o.hwTap, tapdev.LinkConfig{Addrs: o.wireAddrs, Up: true, NoDAD: true}); err != nil {
			return fmt.Errorf("configure wire partner %s in %s: %w", o.hwTap, o.wireNetns, err)
		}
	}
	hcfg := hoststack.Config{NICName: o.nicTap, Netns: o.nicNetns, ReturnDelay: o.returnDelay, CheckHeld: o.checkHeld, VnetHdr: o.nicOffload, Queues: o.queues, CoalesceUDP: o.udpCoalesce, PollOnReceive: o.nicPollOnReceive, Log: m.log,
		Moderation: ndisshim.Moderation{Delay: o.moderation, Frames: 8, SmallFrame: 512, OneWay: true, Budget: o.moderationBudget}}
	if !o.noWire {
		hcfg.Addrs = o.nicAddrs
	}
	if m.st, err = hoststack.Bind(a, hcfg); err != nil {
		return err
	}
	if m.st.Created() {
		if err := tapdev.ConfigureLink(o.nicNetns, o.nicTap, tapdev.LinkConfig{Alias: m.markAs("nic")}); err != nil {
			return fmt.Errorf("mark NIC TAP %s as this run's: %w", o.nicTap, err)
		}
	}
	if err := a.Restart(context.Background()); err != nil {
		return err
	}
	m.mpLive = true // before any observer starts: no lock needed yet
	return nil
}

// openHardware is the adapter's Opener: the hardware TAP, wrapped by the
// sniffer when --pcap asks for a capture.
func (m *machine) openHardware(name string, queue int) (adapter.Device, bool, error) {
	prefix := 0
	if m.o.offload {
		prefix = tapdev.VnetHdrLen
	}
	d, created, err := adapter.TAPOpener(m.o.offload, m.o.queues)(name, queue)
	if err != nil {
		return nil, false, err
	}
	if m.capture != nil {
		return m.capture.WrapPrefixed(d, prefix), created, nil
	}
	return d, created, nil
}

// openObservers binds the metrics port and creates the pcap file before
// anything else starts, so a busy port or an unwritable file fails the
// start with nothing to undo.
func (m *machine) openObservers() error {
	var err error
	if m.o.metrics != "" {
		if m.metrics, err = listenMetrics(m.o.metrics, m.log); err != nil {
			return err
		}
	}
	if m.o.pcap != "" {
		if m.capture, err = openCapture(m.o.pcap, m.o.pcapMax); err != nil {
			return err
		}
	}
	return nil
}

// startObservers starts the metrics server, the stats lines and the
// SIGUSR1 dumps once the adapter runs.
func (m *machine) startObservers() {
	if m.metrics != nil {
		m.metrics.serve(&collector{sample: m.sample, poolSize: m.o.rxBuffers, version: adapter.Version, hw: m.o.hwTap, nic: m.o.nicTap})
	}
	m.startStats()
	m.startDumps()
}

// stopObservers stops the metrics server and the stats lines (once; both
// the orderly halt and a forced shutdown call it, perhaps at once).
func (m *machine) stopObservers() {
	m.stopObsOnce.Do(func() {
		m.metrics.shutdown()
		m.stopStats()
	})
}

// undoStart removes whatever a failed start made, in reverse.
func (m *machine) undoStart() {
	defer m.closeCapture()
	defer m.stopDumps()
	defer m.stopObservers()
	ctx, cancel := context.WithTimeout(context.Background(), m.o.haltTimeout)
	defer cancel()
	if m.a != nil && m.a.State() == ndisshim.StateRunning {
		if err := m.a.Pause(ctx); err != nil {
			// Buffers still held: nothing may be freed. Put the NIC down
			// and leave the memory to the process's exit.
			m.log.Error("pause failed; shutting down without freeing", "err", err)
			_ = m.a.Shutdown(ndisshim.ShutdownBugCheck)
			m.removeWire()
			return
		}
	}
	if m.st != nil {
		if err := m.st.Close(ctx); err != nil {
			m.log.Error("unbind", "err", err)
		}
	}
	if m.a != nil {
		if err := m.a.Halt(ctx, ndisshim.HaltDeviceInitializationFailed); err != nil {
			m.log.Error("halt", "err", err)
		}
	}
	if m.drv != nil {
		if err := m.drv.Deregister(); err != nil {
			m.log.Error("unload", "err", err)
		}
	}
	m.removeWire()
}

func (m *machine) removeWire() {
	m.endMu.Lock() // the orderly halt and a forced exit may both get here
	defer m.endMu.Unlock()
	if m.wireCreated && m.hwNetns == m.o.wireNetns && m.mp != nil && !m.mp.Created() && tapdev.LinkExists(m.hwNetns, m.o.hwTap) {
		// A TAP we attached to is the user's: a namespace takes its
		// virtual devices with it, so bring the TAP home first.
		if err := tapdev.MoveLink(m.o.hwTap, m.hwNetns, ""); err != nil {
			m.log.Error("move attached hardware TAP back", "tap", m.o.hwTap, "err", err)
		} else {
			m.log.Info("moved attached hardware TAP back (not ours to delete)", "tap", m.o.hwTap)
			m.hwNetns = ""
		}
	}
	if m.wireCreated {
		// Only the namespace this run made goes, by its mark: one of
		// that name without it (ours removed by hand, someone else's
		// made since) is not ours to delete.
		alias, _ := tapdev.LinkAlias(m.o.wireNetns, "lo")
		k, ok := parseMark(alias)
		switch {
		case tapdev.NetnsExists(m.o.wireNetns) && !(ok && k.pid == m.self.pid && k.start == m.self.start):
			m.log.Warn("wire namespace is not this run's any more (no mark of ours): left as it is", "netns", m.o.wireNetns, "alias", alias)
		default:
			if err := tapdev.DeleteNetns(m.o.wireNetns); err != nil {
				m.log.Error("remove wire namespace", "netns", m.o.wireNetns, "err", err)
			} else {
				m.log.Info("removed wire namespace", "netns", m.o.wireNetns)
			}
		}
		m.wireCreated = false
	}
}

func (m *machine) banner() {
	o := m.o
	w := m.stdout
	nicNs := o.nicNetns
	if nicNs == "" {
		nicNs = "(current namespace)"
	}
	fmt.Fprintf(w, "tapminiport %s: adapter %s running\n", adapter.Version, o.hwTap)
	fmt.Fprintf(w, "  host stack: NIC TAP %s in %s, MAC %s, MTU %d, addresses %s\n", o.nicTap, nicNs, m.mp.MAC(), o.mtu, prefixList{&o.nicAddrs})
	switch {
	case o.noWire:
		fmt.Fprintf(w, "  wire: hardware TAP %s, not addressed (--no-wire)\n", o.hwTap)
	case o.nicNetns == "":
		// Traffic to try only from the host stack's own namespace: from
		// the current one (often the root namespace) it is the user's
		// call, not a suggestion.
		fmt.Fprintf(w, "  wire partner: hardware TAP %s in netns %s, addresses %s\n", o.hwTap, o.wireNetns, prefixList{&o.wireAddrs})
		fmt.Fprintf(w, "  try: give --nic-netns NAME to have the host stack in a namespace of its own, and commands to try here\n")
	default:
		fmt.Fprintf(w, "  wire partner: hardware TAP %s in netns %s, addresses %s\n", o.hwTap, o.wireNetns, prefixList{&o.wireAddrs})
		// The iperf3 server ends on its own: after one client, or
		// after 30 s (a run stopped before a client came leaves it that
		// long, in the wire namespace the halt removed).
		exec := "ip netns exec " + o.nicNetns + " "
		peer4, peer6 := "", ""
		for _, p := range o.wireAddrs {
			if p.Addr().Is4() && peer4 == "" {
				peer4 = p.Addr().String()
			} else if p.Addr().Is6() && peer6 == "" {
				peer6 = p.Addr().String()
			}
		}
		fmt.Fprintf(w, "  try:\n")
		if peer4 != "" {
			fmt.Fprintf(w, "    %sping -c 3 %s\n", exec, peer4)
			fmt.Fprintf(w, "    ip netns exec %s timeout 30 iperf3 -s -1 & sleep 0.5; %siperf3 -c %s -t 5\n", o.wireNetns, exec, peer4)
		}
		if peer6 != "" {
			fmt.Fprintf(w, "    %sping -6 -c 3 %s\n", exec, peer6)
		}
	}
	if m.metrics != nil {
		fmt.Fprintf(w, "  metrics: %s\n", m.metrics.URL())
	}
	if m.capture != nil {
		fmt.Fprintf(w, "  pcap: %s (both directions, at most %s; read it with tcpdump -nn -r %s)\n", o.pcap, byteSize{&o.pcapMax}, o.pcap)
	}
	if o.stats > 0 {
		fmt.Fprintf(w, "  stats: a line on stderr every %s (grep ^stats)\n", o.stats)
	}
	fmt.Fprintf(w, "  dump:  kill -USR1 %d   (state, held NBLs, timers, pools, verifier, to stderr)\n", os.Getpid())
	fmt.Fprintf(w, "  stop:  kill -TERM %d   (pause, drain, halt, unload, report)\n", os.Getpid())
	fmt.Fprintf(w, "ready\n")
}
