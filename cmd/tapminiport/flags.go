package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tapminiport/tapminiport/adapter"
)

// options is what the flags say; parse validates it without syscalls.
type options struct {
	hwTap, nicTap       string
	nicNetns, wireNetns string
	noWire              bool
	nicAddrs, wireAddrs []netip.Prefix
	bridge              string
	mtu                 int
	mac                 net.HardwareAddr
	rxBuffers, batch    int
	queues              int
	nicOffload          bool
	udpCoalesce         bool
	pollOnSend          bool
	nicPollOnReceive    bool
	moderation          time.Duration
	moderationBudget    int
	returnDelay         time.Duration
	checkHeld           bool
	offload             bool
	haltTimeout         time.Duration
	watchdog            time.Duration
	logLevel            slog.Level
	version             bool
	failAt              string
	stats               time.Duration // 0: no stats lines
	metrics             string        // "": no metrics server
	pcap                string        // "": no capture
	pcapMax             int64
}

type prefixList struct{ v *[]netip.Prefix }

func (p prefixList) String() string {
	if p.v == nil {
		return ""
	}
	s := make([]string, len(*p.v))
	for i, x := range *p.v {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

func (p prefixList) Set(s string) error {
	var out []netip.Prefix
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		pr, err := netip.ParsePrefix(part)
		if err != nil {
			return fmt.Errorf("%q is not an address with a prefix length, like 198.18.0.1/24", part)
		}
		out = append(out, pr)
	}
	*p.v = out
	return nil
}

type macFlag struct{ v *net.HardwareAddr }

func (m macFlag) String() string {
	if m.v == nil || *m.v == nil {
		return ""
	}
	return m.v.String()
}

func (m macFlag) Set(s string) error {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return fmt.Errorf("%q is not a 6-byte MAC address like 02:00:5e:00:53:01", s)
	}
	*m.v = hw
	return nil
}

type levelFlag struct{ v *slog.Level }

func (l levelFlag) String() string {
	if l.v == nil {
		return "info"
	}
	return strings.ToLower(l.v.String())
}
func (l levelFlag) Set(s string) error { return l.v.UnmarshalText([]byte(s)) }

// flagGroups orders the flags in --help. Every flag is in exactly one
// group (a unit test checks it).
var flagGroups = []struct {
	title string
	names []string
}{
	{"Topology (where the TAPs and the wire partner live)", []string{"hw-tap", "nic-tap", "nic-netns", "wire-netns", "no-wire", "nic-addr", "wire-addr", "bridge"}},
	{"Adapter (the miniport's registry keywords)", []string{"mtu", "mac", "rx-buffers", "batch", "queues", "interrupt-moderation", "moderation-budget", "rx-poll-on-send", "offload"}},
	{"Stack (the protocol binding that plays tcpip.sys)", []string{"nic-offload", "udp-coalesce", "nic-poll-on-receive", "return-delay", "check-held"}},
	{"Halt", []string{"halt-timeout", "watchdog"}},
	{"Observability", []string{"stats", "metrics", "pcap", "pcap-max", "log-level", "version"}},
	{"Testing", []string{"fail-at"}},
}

const usageHead = `tapminiport — an NDIS-style miniport driver whose hardware is a TAP device.

It creates the hardware TAP (the miniport's NIC), the NIC TAP the host stack
sees, and by default a wire partner: network namespace tmwire holding the
hardware TAP's kernel side. Every frame between the two crosses the shim:
receive indications, returns, sends, completions. SIGTERM or SIGINT pauses,
drains, halts and unloads, then prints an exit report. Needs root (or
CAP_NET_ADMIN and CAP_SYS_ADMIN) and /dev/net/tun.

Usage:
  tapminiport [flags]
  tapminiport --version

Examples:
  ip netns add tmhost                                  # a namespace for the host side
  tapminiport --nic-netns tmhost                       # tm0 198.18.0.1 in tmhost ⇄ tmwire 198.18.0.2
  tapminiport --nic-netns tmhost --return-delay 200ms  # watch pause and halt wait for the stack
  tapminiport --nic-netns tmhost --stats 1s --metrics 127.0.0.1:9464
  tapminiport --nic-netns tmhost --pcap /tmp/tm.pcap   # then: tcpdump -nn -r /tmp/tm.pcap
  tapminiport --no-wire --hw-tap tmhw0 --nic-tap tm0   # wire the TAPs up yourself
  kill -USR1 <pid>                                     # dump the state to stderr, traffic goes on
  kill -TERM <pid>                                     # pause, drain, halt, unload, report
`

const usageTail = `
Signals: SIGTERM or SIGINT pauses, drains, unbinds, halts and unloads; a
second one says what is still held; a third forces ShutdownEx (exit 3).
SIGUSR1 dumps the adapter's state, held NBLs, timers, interrupts, pools,
counters and the verifier's findings to stderr without stopping anything.
SIGHUP is logged ("nothing to reload") and otherwise ignored: it neither
stops the run nor counts as a stop signal.

Leftovers: a run marks the TAPs and the wire namespace it creates with an
alias "tapminiport pid=N ..." (the namespace on its lo). After a SIGKILL the
next start removes what the killed run left and logs it; it refuses a name
a running tapminiport still uses, and never deletes what carries no mark.

Exit codes: 0 clean halt and a clean verifier; 1 start-up failed; 2 bad flags;
3 forced shutdown (third signal, gave up waiting for held buffers, or the halt was refused); 4 the verifier found a leak;
5 a TAP was deleted underneath (surprise removal), then a clean halt.
`

// byteSize is a size in bytes: 104857600, 100MiB, 100M (= MiB), 64k.
type byteSize struct{ v *int64 }

func (b byteSize) String() string {
	if b.v == nil {
		return ""
	}
	n := *b.v
	if n == 0 {
		return "0 (no cap)"
	}
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

func (b byteSize) Set(s string) error {
	t := strings.TrimSpace(s)
	mult := int64(1)
	lower := strings.ToLower(t)
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"gib", 1 << 30}, {"mib", 1 << 20}, {"kib", 1 << 10}, {"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}, {"b", 1}} {
		if strings.HasSuffix(lower, u.suffix) {
			mult, t = u.size, strings.TrimSpace(t[:len(t)-len(u.suffix)])
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult || t == "" {
		return fmt.Errorf("%q is not a size in bytes, like 104857600, 100MiB or 64KiB", s)
	}
	*b.v = n * mult
	return nil
}

func parseFlags(args []string, out io.Writer) (*options, error) {
	o := &options{}
	fs := newFlagSet(o)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, out)
			return nil, err
		}
		// The flag package names flags with one dash; say them as --help does.
		msg := strings.NewReplacer("flag -", "flag --", "defined: -", "defined: --").Replace(err.Error())
		return nil, fmt.Errorf("%s (tapminiport --help lists the flags)", msg)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags start with --; tapminiport --help lists them)", fs.Arg(0))
	}
	if o.bridge != "" {
		o.noWire = true
	}
	return o, o.validate()
}

// newFlagSet defines every flag on o, with its default. Its output is
// discarded: parseFlags prints help and errors itself.
func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("tapminiport", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&o.hwTap, "hw-tap", "tmhw0", "`name` of the hardware TAP the miniport drives; created when missing")
	fs.StringVar(&o.nicTap, "nic-tap", "tm0", "`name` of the NIC TAP the host stack sees; created when missing")
	fs.StringVar(&o.nicNetns, "nic-netns", "", "existing network `namespace` to put the NIC TAP in (default: the current one)")
	fs.StringVar(&o.wireNetns, "wire-netns", "tmwire", "`namespace` the embedded wire partner creates for the hardware TAP's kernel side")
	fs.BoolVar(&o.noWire, "no-wire", false, "no embedded wire partner and no addressing: another program wires the TAPs up")
	o.nicAddrs = []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24"), netip.MustParsePrefix("2001:2::1/64")}
	o.wireAddrs = []netip.Prefix{netip.MustParsePrefix("198.18.0.2/24"), netip.MustParsePrefix("2001:2::2/64")}
	fs.Var(prefixList{&o.nicAddrs}, "nic-addr", "comma-separated `addresses` for the NIC TAP")
	fs.Var(prefixList{&o.wireAddrs}, "wire-addr", "comma-separated `addresses` for the wire partner")
	fs.StringVar(&o.bridge, "bridge", "", "enslave the hardware TAP to this existing `bridge`; implies --no-wire")
	fs.IntVar(&o.mtu, "mtu", 1500, "the NIC's `MTU`, 68..9000")
	fs.Var(macFlag{&o.mac}, "mac", "the NIC's permanent `address` (default: a random locally administered one)")
	fs.IntVar(&o.rxBuffers, "rx-buffers", 1024, "receive `buffers` in the miniport's pool, 8..1048576")
	fs.IntVar(&o.batch, "batch", 64, "`frames` per receive indication at most, 1..1024")
	fs.DurationVar(&o.returnDelay, "return-delay", 0, "the stack holds each indicated buffer at least this `duration` before returning it (watch pause wait for the stack)")
	fs.IntVar(&o.queues, "queues", 1, "receive `queues` (RSS): a multi-queue hardware TAP and NIC TAP, one reader and DPC per queue, 1..16")
	fs.DurationVar(&o.moderation, "interrupt-moderation", 200*time.Microsecond, "after a wake-up busy with small frames (8 or more) while nothing comes back the other way (a one-way flood), the receive DPC and the NIC TAP reader wait this `long` before the next, 0..10ms (0: off); a quiet link, large frames and TCP (ACKs coming back) never wait")
	fs.IntVar(&o.moderationBudget, "moderation-budget", 128, "after an interrupt-moderation wait, the next wake-up takes at most this many `frames`, as a NIC's receive ring holds only so many while its interrupt waits; what comes beyond stays in the TAP's queue, which drops what overflows before any work is spent on it, 0..65536 (0: no budget)")
	fs.BoolVar(&o.nicOffload, "nic-offload", true, "offloads on the NIC TAP too; --nic-offload=false makes the stack segment and checksum in software what the wire hands over")
	fs.BoolVar(&o.pollOnSend, "rx-poll-on-send", true, "after a small send (at most 2 frames of at most 256 bytes: a ping, an ACK) the miniport runs its receive DPC once on the sender's goroutine when it is idle, so the reply goes up without waiting for the interrupt goroutine to wake")
	fs.BoolVar(&o.nicPollOnReceive, "nic-poll-on-receive", true, "after writing a small indication (at most 2 frames of at most 256 bytes: a ping from the wire, a SYN) to the NIC TAP, the stack runs the NIC TAP's reader once on the same goroutine when it is idle, so the host's reply goes down without waiting for the reader to wake")
	fs.BoolVar(&o.udpCoalesce, "udp-coalesce", true, "join consecutive same-size UDP datagrams of one flow from the host into one USO send when the miniport offers USO")
	fs.BoolVar(&o.offload, "offload", true, "checksum and large send offload on the hardware TAP (IFF_VNET_HDR, TUNSETOFFLOAD; the NIC TAP follows --nic-offload): 64 KiB TCP frames cross as one NBL; --offload=false for plain 1514-byte frames")
	fs.BoolVar(&o.checkHeld, "check-held", false, "hash each held frame on receive and check it before use (proves halt never frees a held buffer)")
	fs.DurationVar(&o.haltTimeout, "halt-timeout", 30*time.Second, "give up waiting for held buffers after this `duration`: report, shut down, exit 3 (never frees held memory)")
	fs.DurationVar(&o.watchdog, "watchdog", time.Second, "while pause/halt wait, report what is held every `interval`")
	fs.DurationVar(&o.stats, "stats", 0, "print one line of counters to stderr every `interval`, e.g. 1s (default: 0, off)")
	fs.StringVar(&o.metrics, "metrics", "", "serve Prometheus metrics at http://`host:port`/metrics, e.g. 127.0.0.1:9464 (default: off; a non-loopback address is served as asked, with a warning; port 0: any free port)")
	fs.StringVar(&o.pcap, "pcap", "", "write every frame that crosses the miniport, both directions, to this pcap `file` (read it with tcpdump -r or Wireshark)")
	o.pcapMax = 100 << 20
	fs.Var(byteSize{&o.pcapMax}, "pcap-max", "stop capturing once the pcap file reaches this `size` (later frames are counted as skipped), e.g. 64KiB, 1GiB; 0: no cap")
	o.logLevel = slog.LevelInfo
	fs.Var(levelFlag{&o.logLevel}, "log-level", "`level`: debug, info, warn, error")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.StringVar(&o.failAt, "fail-at", "", "make InitializeEx fail at this `step` ("+strings.Join(adapter.InitSteps, ", ")+")")
	return fs
}

// printUsage writes --help: the head, the flags by group, the tail.
func printUsage(fs *flag.FlagSet, w io.Writer) {
	var b strings.Builder
	b.WriteString(usageHead)
	for _, g := range flagGroups {
		fmt.Fprintf(&b, "\n%s:\n", g.title)
		for _, name := range g.names {
			f := fs.Lookup(name)
			if f == nil {
				continue
			}
			kind, usage := flag.UnquoteUsage(f)
			fmt.Fprintf(&b, "  --%s", f.Name)
			if kind != "" {
				fmt.Fprintf(&b, " %s", kind)
			}
			fmt.Fprintf(&b, "\n        %s", usage)
			if def := f.DefValue; def != "" && def != "false" && def != "0" && def != "0s" {
				fmt.Fprintf(&b, " (default %s)", def)
			}
			b.WriteString("\n")
		}
	}
	b.WriteString(usageTail)
	fmt.Fprint(w, b.String())
}

func (o *options) validate() error {
	name := func(flag, v string) error {
		if v == "" || len(v) > 15 || strings.ContainsAny(v, "/ \t") {
			return fmt.Errorf("--%s %q: an interface name is 1..15 characters without '/' or spaces", flag, v)
		}
		return nil
	}
	if err := name("hw-tap", o.hwTap); err != nil {
		return err
	}
	if err := name("nic-tap", o.nicTap); err != nil {
		return err
	}
	if o.hwTap == o.nicTap {
		return fmt.Errorf("--hw-tap and --nic-tap are both %q: they must differ", o.hwTap)
	}
	// A namespace name is a file name under /run/netns (ip netns add).
	nsName := func(flag, v string) error {
		if v != "" && (v == "." || v == ".." || len(v) > 255 || strings.ContainsAny(v, "/ \t\n")) {
			return fmt.Errorf("--%s %q: a namespace name is 1..255 characters, not . or .., without '/' or spaces", flag, v)
		}
		return nil
	}
	if err := nsName("wire-netns", o.wireNetns); err != nil {
		return err
	}
	if err := nsName("nic-netns", o.nicNetns); err != nil {
		return err
	}
	if !o.noWire && o.nicNetns != "" && o.nicNetns == o.wireNetns {
		// Both TAPs in one namespace on one subnet: pings would be
		// answered there and never cross the miniport.
		return fmt.Errorf("--nic-netns and --wire-netns are both %q: the host stack and the wire partner need namespaces of their own", o.nicNetns)
	}
	switch {
	case o.mtu < 68 || o.mtu > 9000:
		return fmt.Errorf("--mtu %d: out of range 68..9000", o.mtu)
	case o.rxBuffers < 8 || o.rxBuffers > 1<<20:
		return fmt.Errorf("--rx-buffers %d: out of range 8..1048576", o.rxBuffers)
	case o.batch < 1 || o.batch > 1024:
		return fmt.Errorf("--batch %d: out of range 1..1024", o.batch)
	case o.moderation < 0 || o.moderation > 10*time.Millisecond:
		return fmt.Errorf("--interrupt-moderation %s: out of range 0..10ms", o.moderation)
	case o.moderationBudget < 0 || o.moderationBudget > 65536:
		return fmt.Errorf("--moderation-budget %d: out of range 0..65536", o.moderationBudget)
	case o.queues < 1 || o.queues > adapter.MaxQueues:
		return fmt.Errorf("--queues %d: out of range 1..%d", o.queues, adapter.MaxQueues)
	case o.returnDelay < 0:
		return fmt.Errorf("--return-delay %s: must not be negative", o.returnDelay)
	case o.haltTimeout <= 0:
		return fmt.Errorf("--halt-timeout %s: must be positive", o.haltTimeout)
	case o.watchdog <= 0:
		return fmt.Errorf("--watchdog %s: must be positive", o.watchdog)
	case o.mac != nil && o.mac[0]&1 == 1:
		return fmt.Errorf("--mac %s: must be a unicast address", o.mac)
	case o.failAt != "" && !slices.Contains(adapter.InitSteps, o.failAt):
		return fmt.Errorf("--fail-at %q: not one of %s", o.failAt, strings.Join(adapter.InitSteps, ", "))
	case !o.noWire && o.wireNetns == "":
		return errors.New("--wire-netns is empty: name a namespace, or use --no-wire")
	case o.stats < 0:
		return fmt.Errorf("--stats %s: must not be negative (0 turns the lines off)", o.stats)
	case o.stats > 0 && o.stats < 10*time.Millisecond:
		return fmt.Errorf("--stats %s: at least 10ms", o.stats)
	case o.pcapMax != 0 && o.pcapMax < 24:
		return fmt.Errorf("--pcap-max %d: at least the 24-byte pcap file header, e.g. 100MiB (0: no cap)", o.pcapMax)
	}
	if o.metrics != "" {
		host, port, err := net.SplitHostPort(o.metrics)
		if err != nil || port == "" {
			return fmt.Errorf("--metrics %q: want host:port, e.g. 127.0.0.1:9464", o.metrics)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			return fmt.Errorf("--metrics %q: port %q is not 0..65535 (0: any free port)", o.metrics, port)
		}
		if strings.Contains(host, "/") {
			return fmt.Errorf("--metrics %q: want host:port, e.g. 127.0.0.1:9464", o.metrics)
		}
	}
	return nil
}
