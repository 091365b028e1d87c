package tapdev

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LinkConfig is what ConfigureLink sets; zero fields are left alone.
type LinkConfig struct {
	MTU    int
	MAC    net.HardwareAddr
	Up     bool           // set the link up last (false does not set it down: see SetLinkUp)
	Addrs  []netip.Prefix // added (replaced if present), never removed
	Master string         // bridge to enslave the link to, in the same namespace
	Alias  string         // IFLA_IFALIAS
	// NoDAD adds IPv6 addresses without duplicate address detection
	// (IFA_F_NODAD): usable at once, for links whose both ends we own.
	NoDAD bool
}

// lookup opens a handle in ns and finds the link. A missing link is an
// error wrapping os.ErrNotExist. The caller closes the handle.
func lookup(ns, name string) (*netlink.Handle, netlink.Link, error) {
	h, err := handleAt(ns)
	if err != nil {
		return nil, nil, err
	}
	l, err := h.LinkByName(name)
	if err != nil {
		h.Close()
		return nil, nil, linkError(ns, name, "", err)
	}
	return h, l, nil
}

// linkError names the link and namespace; a missing link wraps os.ErrNotExist.
func linkError(ns, name, op string, err error) error {
	if op != "" {
		op = ": " + op
	}
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("tapdev: link %q %s%s: %w (%w)", name, where(ns), op, os.ErrNotExist, err)
	}
	return fmt.Errorf("tapdev: link %q %s%s: %w", name, where(ns), op, err)
}

// ConfigureLink sets what is non-zero in c on the link name in namespace ns
// ("" = current), in this order: MTU, MAC, alias, master, addresses, up.
// It stops at the first failure; errors name the link and namespace.
func ConfigureLink(ns, name string, c LinkConfig) error {
	h, l, err := lookup(ns, name)
	if err != nil {
		return err
	}
	defer h.Close()
	if c.MTU != 0 {
		if err := h.LinkSetMTU(l, c.MTU); err != nil {
			return linkError(ns, name, fmt.Sprintf("set mtu %d", c.MTU), err)
		}
	}
	if c.MAC != nil {
		if err := h.LinkSetHardwareAddr(l, c.MAC); err != nil {
			return linkError(ns, name, "set mac "+c.MAC.String(), err)
		}
	}
	if c.Alias != "" {
		if err := h.LinkSetAlias(l, c.Alias); err != nil {
			return linkError(ns, name, fmt.Sprintf("set alias %q", c.Alias), err)
		}
	}
	if c.Master != "" {
		m, err := h.LinkByName(c.Master)
		if err != nil {
			return linkError(ns, name, "set master", linkError(ns, c.Master, "", err))
		}
		if err := h.LinkSetMasterByIndex(l, m.Attrs().Index); err != nil {
			return linkError(ns, name, fmt.Sprintf("set master %q", c.Master), err)
		}
	}
	for _, p := range c.Addrs {
		if !p.IsValid() {
			return linkError(ns, name, "add address", fmt.Errorf("invalid prefix %v", p))
		}
		addr := &netlink.Addr{IPNet: ipNet(p)}
		if c.NoDAD && p.Addr().Is6() && !p.Addr().Is4In6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrReplace(l, addr); err != nil {
			return linkError(ns, name, "add address "+p.String(), err)
		}
	}
	if c.Up {
		if err := h.LinkSetUp(l); err != nil {
			return linkError(ns, name, "set up", err)
		}
	}
	return nil
}

// ipNet converts a valid prefix; an IPv4-mapped IPv6 prefix becomes IPv4.
func ipNet(p netip.Prefix) *net.IPNet {
	a, bits := p.Addr(), p.Bits()
	if a.Is4In6() {
		a, bits = a.Unmap(), max(bits-96, 0)
	}
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}
}

// SetLinkUp sets the link up or down.
func SetLinkUp(ns, name string, up bool) error {
	h, l, err := lookup(ns, name)
	if err != nil {
		return err
	}
	defer h.Close()
	if up {
		err = h.LinkSetUp(l)
	} else {
		err = h.LinkSetDown(l)
	}
	if err != nil {
		return linkError(ns, name, fmt.Sprintf("set up=%v", up), err)
	}
	return nil
}

// MoveLink moves the link name from namespace fromNs to toNs ("" = the
// current one). An open TAP queue stays attached across the move.
func MoveLink(name, fromNs, toNs string) error {
	h, l, err := lookup(fromNs, name)
	if err != nil {
		return err
	}
	defer h.Close()
	target, err := OpenNetns(toNs)
	if err != nil {
		return linkError(fromNs, name, "move", err)
	}
	defer target.Close()
	if err := h.LinkSetNsFd(l, int(target)); err != nil {
		return linkError(fromNs, name, "move to netns "+nsLabel(toNs), err)
	}
	return nil
}

// DeleteLink deletes the link (any kind; a TAP even with queues attached,
// which then see ErrDeviceGone). A missing link is an error wrapping
// os.ErrNotExist.
func DeleteLink(ns, name string) error {
	h, l, err := lookup(ns, name)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.LinkDel(l); err != nil {
		return linkError(ns, name, "delete", err)
	}
	return nil
}

// LinkExists reports whether the link exists in ns (false also when the
// namespace does not).
func LinkExists(ns, name string) bool {
	h, _, err := lookup(ns, name)
	if err != nil {
		return false
	}
	h.Close()
	return true
}

func linkAttrs(ns, name string) (*netlink.LinkAttrs, error) {
	h, l, err := lookup(ns, name)
	if err != nil {
		return nil, err
	}
	h.Close()
	return l.Attrs(), nil
}

// LinkAlias returns the link's IFLA_IFALIAS ("" when unset).
func LinkAlias(ns, name string) (string, error) {
	a, err := linkAttrs(ns, name)
	if err != nil {
		return "", err
	}
	return a.Alias, nil
}

// LinkMTU returns the link's MTU.
func LinkMTU(ns, name string) (int, error) {
	a, err := linkAttrs(ns, name)
	if err != nil {
		return 0, err
	}
	return a.MTU, nil
}

// LinkMAC returns the link's hardware address.
func LinkMAC(ns, name string) (net.HardwareAddr, error) {
	a, err := linkAttrs(ns, name)
	if err != nil {
		return nil, err
	}
	return a.HardwareAddr, nil
}

// LinkStats returns the kernel's packet counters for the link. For a TAP,
// rx is what the TAP's fd side wrote into the kernel, tx what the kernel
// sent out to the fd side; txDropped counts frames the kernel could not
// queue to the fd (queue full or no fd attached).
func LinkStats(ns, name string) (rxPackets, txPackets, rxDropped, txDropped uint64, err error) {
	a, err := linkAttrs(ns, name)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	s := a.Statistics
	if s == nil {
		return 0, 0, 0, 0, linkError(ns, name, "stats", errors.New("no statistics in the netlink reply"))
	}
	return s.RxPackets, s.TxPackets, s.RxDropped, s.TxDropped, nil
}

// RandomMAC returns a random locally administered unicast MAC address.
func RandomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	rand.Read(mac) // never fails (crypto/rand panics rather than return an error)
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

// WatchLinkRemoval calls fn once, on a goroutine of its own, when the link
// name disappears from namespace ns: deleted, or moved to another
// namespace. The watch's netlink socket lives in ns and so keeps ns alive:
// DeleteNetns does not take the link away while it is watched. It follows the link by ifindex, so a rename
// does not count. It is an error wrapping os.ErrNotExist if the link is
// not there to begin with.
//
// stop ends the watch and releases its netlink socket; it may be called
// more than once and from fn. When stop returns, fn has run, is running,
// or will never run. If the netlink subscription fails (a receive buffer
// overrun can lose the event), the watch re-subscribes and checks the
// link by index, so a removal is not missed.
func WatchLinkRemoval(ns, name string, fn func()) (stop func(), err error) {
	return WatchLink(ns, name, fn, nil)
}

// WatchLink is WatchLinkRemoval that also calls upDown (if not nil) each
// time the link is set up or down (IFF_UP: `ip link set DEV up|down`), on
// the watch's goroutine, in order. A link set down is a pulled cable for a
// TAP: writes fail with EIO (ErrLinkDown) until it is up again. When stop
// returns, no upDown call is running or will run. Changes while the
// subscription is being renewed after a failure are not reported.
func WatchLink(ns, name string, removed func(), upDown func(up bool)) (stop func(), err error) {
	w := &linkWatch{ns: ns, name: name, fn: removed, upDown: upDown, stopCh: make(chan struct{}), exited: make(chan struct{})}
	// Subscribe first, then find the index: a removal between the two is
	// then in the channel.
	sub, err := subscribeLinks(ns)
	if err != nil {
		return nil, linkError(ns, name, "watch", err)
	}
	h, l, err := lookup(ns, name)
	if err != nil {
		sub.close()
		return nil, err
	}
	h.Close()
	w.index = int32(l.Attrs().Index)
	w.up = l.Attrs().RawFlags&unix.IFF_UP != 0
	go w.routine(sub)
	return w.stop, nil
}

type linkWatch struct {
	ns, name string
	index    int32
	fn       func()
	upDown   func(up bool) // nil: removal only
	up       bool          // IFF_UP as last seen (the routine's alone)

	stopCh   chan struct{}
	stopOnce sync.Once
	exited   chan struct{} // closed when the subscription is released

	mu      sync.Mutex
	stopped bool
}

func (w *linkWatch) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	w.stopOnce.Do(func() { close(w.stopCh) })
	<-w.exited
}

// routine is the watch's long-lived goroutine.
func (w *linkWatch) routine(sub *linkSub) {
	removed := false
	for !removed {
		removed = w.follow(sub)
		sub.close()
		if removed {
			break
		}
		select {
		case <-w.stopCh:
			close(w.exited)
			return
		default:
		}
		// The subscription broke: subscribe again, then look the link up
		// by index in case the removal happened in the gap.
		for {
			var err error
			if sub, err = subscribeLinks(w.ns); err == nil {
				break
			}
			select {
			case <-w.stopCh:
				close(w.exited)
				return
			case <-time.After(time.Second):
			}
		}
		if !w.present() {
			sub.close()
			removed = true
		}
	}
	close(w.exited)
	w.mu.Lock()
	fire := !w.stopped
	w.mu.Unlock()
	if fire {
		w.fn()
	}
}

// follow reads updates until the link's RTM_DELLINK (true), stop or a
// broken subscription (false).
func (w *linkWatch) follow(sub *linkSub) bool {
	for {
		select {
		case <-w.stopCh:
			return false
		case u, ok := <-sub.ch:
			if !ok {
				return false
			}
			if u.Index != w.index {
				continue
			}
			if u.Header.Type == unix.RTM_DELLINK {
				return true
			}
			if up := u.Attrs().RawFlags&unix.IFF_UP != 0; w.upDown != nil && up != w.up {
				w.up = up
				w.upDown(up)
			}
		}
	}
}

// present reports whether the link is still in the namespace by index; it
// says yes when it cannot tell.
func (w *linkWatch) present() bool {
	h, err := handleAt(w.ns)
	if err != nil {
		return !errors.Is(err, os.ErrNotExist) // the namespace is gone
	}
	defer h.Close()
	_, err = h.LinkByIndex(int(w.index))
	var nf netlink.LinkNotFoundError
	return !(errors.As(err, &nf) || errors.Is(err, unix.ENODEV))
}

// linkSub is one RTNLGRP_LINK subscription.
type linkSub struct {
	ch   chan netlink.LinkUpdate
	done chan struct{}
}

func subscribeLinks(ns string) (*linkSub, error) {
	s := &linkSub{ch: make(chan netlink.LinkUpdate, 64), done: make(chan struct{})}
	opts := netlink.LinkSubscribeOptions{}
	if ns != "" {
		nsh, err := OpenNetns(ns)
		if err != nil {
			return nil, err
		}
		defer nsh.Close() // only needed while the socket is made
		opts.Namespace = &nsh
	}
	if err := netlink.LinkSubscribeWithOptions(s.ch, s.done, opts); err != nil {
		close(s.done) // releases netlink's closer goroutine if it started
		return nil, err
	}
	return s, nil
}

// close ends the subscription and waits for netlink's receiver to finish
// (it closes ch).
func (s *linkSub) close() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	for range s.ch {
	}
}
