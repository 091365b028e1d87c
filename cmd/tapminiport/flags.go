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
	returnDelay         time.Duration
	checkHeld           bool
	haltTimeout         time.Duration
	watchdog            time.Duration
	logLevel            slog.Level
	version             bool
	failAt              string
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

const usageHead = `tapminiport — an NDIS-style miniport driver whose hardware is a TAP device.

It creates the hardware TAP (the miniport's NIC), the NIC TAP the host stack
sees, and by default a wire partner: network namespace tmwire holding the
hardware TAP's kernel side. Every frame between the two crosses the shim:
receive indications, returns, sends, completions. SIGTERM or SIGINT pauses,
drains, halts and unloads, then prints an exit report.

Usage: tapminiport [flags]

Examples:
  tapminiport                                   # tm0 198.18.0.1 ⇄ tmwire 198.18.0.2
  tapminiport --nic-netns tmhost --return-delay 200ms
  tapminiport --no-wire --hw-tap tmhw0 --nic-tap tm0   # wire the TAPs up yourself

Flags:
`

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("tapminiport", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.hwTap, "hw-tap", "tmhw0", "`name` of the hardware TAP the miniport drives (created when missing)")
	fs.StringVar(&o.nicTap, "nic-tap", "tm0", "`name` of the NIC TAP the host stack sees (created when missing)")
	fs.StringVar(&o.nicNetns, "nic-netns", "", "existing network `namespace` to put the NIC TAP in (default: the current one)")
	fs.StringVar(&o.wireNetns, "wire-netns", "tmwire", "`namespace` the embedded wire partner creates for the hardware TAP's kernel side")
	fs.BoolVar(&o.noWire, "no-wire", false, "no embedded wire partner and no addressing: another program wires the TAPs up")
	o.nicAddrs = []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24"), netip.MustParsePrefix("2001:2::1/64")}
	o.wireAddrs = []netip.Prefix{netip.MustParsePrefix("198.18.0.2/24"), netip.MustParsePrefix("2001:2::2/64")}
	fs.Var(prefixList{&o.nicAddrs}, "nic-addr", "comma-separated `addresses` for the NIC TAP")
	fs.Var(prefixList{&o.wireAddrs}, "wire-addr", "comma-separated `addresses` for the wire partner")
	fs.StringVar(&o.bridge, "bridge", "", "enslave the hardware TAP to this existing `bridge` (implies --no-wire)")
	fs.IntVar(&o.mtu, "mtu", 1500, "the NIC's `MTU` (68..9000)")
	fs.Var(macFlag{&o.mac}, "mac", "the NIC's permanent `address` (default: a random locally administered one)")
	fs.IntVar(&o.rxBuffers, "rx-buffers", 1024, "receive `buffers` in the miniport's pool")
	fs.IntVar(&o.batch, "batch", 64, "frames per receive indication at most")
	fs.DurationVar(&o.returnDelay, "return-delay", 0, "hold each indicated buffer at least this `long` before returning it (watch pause wait for the stack)")
	fs.BoolVar(&o.checkHeld, "check-held", false, "hash each held frame on receive and check it before use (proves halt never frees a held buffer)")
	fs.DurationVar(&o.haltTimeout, "halt-timeout", 30*time.Second, "give up waiting for held buffers after this `long`: report, shut down, exit 3 (never frees held memory)")
	fs.DurationVar(&o.watchdog, "watchdog", time.Second, "while pause/halt wait, report what is held every `interval`")
	o.logLevel = slog.LevelInfo
	fs.Var(levelFlag{&o.logLevel}, "log-level", "`level`: debug, info, warn, error")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.StringVar(&o.failAt, "fail-at", "", "testing: make InitializeEx fail at this `step` ("+strings.Join(adapter.InitSteps, ", ")+")")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageHead)
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), "\nExit codes: 0 clean halt and a clean verifier; 1 start-up failed; 2 bad flags;\n3 gave up waiting for held buffers (forced shutdown); 4 the verifier found a leak.\n")
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags start with --)", fs.Arg(0))
	}
	if o.bridge != "" {
		o.noWire = true
	}
	return o, o.validate()
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
	switch {
	case o.mtu < 68 || o.mtu > 9000:
		return fmt.Errorf("--mtu %d: out of range 68..9000", o.mtu)
	case o.rxBuffers < 8 || o.rxBuffers > 1<<20:
		return fmt.Errorf("--rx-buffers %d: out of range 8..1048576", o.rxBuffers)
	case o.batch < 1 || o.batch > 1024:
		return fmt.Errorf("--batch %d: out of range 1..1024", o.batch)
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
	}
	return nil
}
