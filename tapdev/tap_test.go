package tapdev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// Root tests: real TAPs, real namespaces. Names are "tdt" + 6 hex digits;
// addresses come from 198.18.0.0/15; traffic starts only inside a
// namespace the test made.

// tunFlags reads /sys/class/net/NAME/tun_flags (root namespace only).
func tunFlags(t *testing.T, name string) uint64 {
	t.Helper()
	b, err := os.ReadFile("/sys/class/net/" + name + "/tun_flags")
	if err != nil {
		t.Fatal(err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 0, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// preCreateTAP makes a persistent TAP the way an administrator would, and
// deletes it by name in cleanup.
func preCreateTAP(t *testing.T, mq bool) string {
	t.Helper()
	RequireTool(t, "ip")
	name := RandomName("tdt")
	args := []string{"tuntap", "add", "mode", "tap", "name", name}
	if mq {
		args = append(args, "multi_queue")
	}
	run(t, "ip", args...)
	t.Cleanup(func() {
		if LinkExists("", name) {
			if err := DeleteLink("", name); err != nil {
				t.Error(err)
			}
		}
	})
	return name
}

func openT(t *testing.T, name string, o Options) (*Dev, bool) {
	t.Helper()
	d, created, err := OpenTAP(name, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, created
}

func TestOpenTAPCreatesNonPersistent(t *testing.T) {
	RequireRoot(t)
	name := RandomName("tdt")
	t.Cleanup(func() {
		if LinkExists("", name) {
			DeleteLink("", name)
		}
	})
	d, created := openT(t, name, Options{})
	if !created || d.Name() != name {
		t.Fatalf("OpenTAP(%s): created=%v name=%q; want created, same name", name, created, d.Name())
	}
	checkFdFlags(t, name, d.fd)
	if f := tunFlags(t, name); f&unix.IFF_PERSIST != 0 || f&unix.IFF_TAP == 0 {
		t.Errorf("tun_flags %#x: want a non-persistent tap", f)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if LinkExists("", name) {
		t.Errorf("our TAP %s still exists after Close", name)
	}
}

func TestOpenTAPAttachKeepsPreCreatedTAP(t *testing.T) {
	RequireRoot(t)
	name := preCreateTAP(t, false)
	d, created := openT(t, name, Options{})
	if created {
		t.Fatal("created = true for a pre-created TAP")
	}
	checkFdFlags(t, name, d.fd)
	if f := tunFlags(t, name); f&unix.IFF_PERSIST == 0 {
		t.Errorf("tun_flags %#x: persist flag lost (water clears it; OpenTAP must restore it)", f)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if !LinkExists("", name) {
		t.Fatalf("pre-created TAP %s deleted by our Close", name)
	}
}

func TestOpenTAPRefusesWithoutLeaking(t *testing.T) {
	RequireRoot(t)
	before := fdCount(t)
	single := preCreateTAP(t, false)
	d, _ := openT(t, single, Options{})
	if _, _, err := OpenTAP(single, Options{}); !errors.Is(err, unix.EBUSY) {
		t.Errorf("second queue on a single-queue TAP: %v; want EBUSY", err)
	} else {
		t.Logf("busy: %v", err)
	}
	d.Close()
	if _, _, err := OpenTAP(single, Options{MultiQueue: true}); !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "--queues 1") {
		t.Errorf("MultiQueue on a single-queue TAP: %v; want EINVAL naming the fix (--queues 1)", err)
	}
	if !LinkExists("", single) {
		t.Error("refused opens deleted the pre-created TAP")
	}
	if _, _, err := OpenTAP("lo", Options{}); err == nil || !strings.Contains(err.Error(), "not a tap") {
		t.Errorf("OpenTAP(lo) = %v; want 'not a tap'", err)
	}
	if _, _, err := OpenTAP("a/b", Options{}); err == nil {
		t.Error("OpenTAP(a/b): no error")
	}
	if after := fdCount(t); after != before {
		t.Errorf("fds: %d before, %d after refused opens", before, after)
	}
}

func TestStrayTunFdSweep(t *testing.T) {
	// What openWater does when water fails after opening /dev/net/tun
	// (water does not close its fd then).
	RequireRoot(t)
	openMu.Lock()
	defer openMu.Unlock()
	before := tunFds()
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeStrayTunFds(before)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
		unix.Close(fd)
		t.Fatalf("unattached /dev/net/tun fd %d still open after the sweep", fd)
	}
}

// A failed water open sweeps, holding openMu, the /dev/net/tun fds that
// are attached to no TAP (TestStrayTunFdSweep). A VnetHdr open's fd is one
// from its open until its TUNSETIFF, so that open must wait for openMu as
// well: else the sweep can close its fd under it (TUNSETIFF then fails
// with EBADF, or its close hits a reused fd number). The race is too
// narrow to hit on demand; this checks that a VnetHdr open does not run
// while a sweep holds openMu, and succeeds once it is done.
func TestVnetOpenWaitsForSweep(t *testing.T) {
	RequireRoot(t)
	name := RandomName("tdt")
	type result struct {
		d   *Dev
		err error
	}
	done := make(chan result, 1)
	openMu.Lock()
	held := true
	defer func() {
		if held {
			openMu.Unlock()
		}
	}()
	before := tunFds()
	go func() {
		d, _, err := OpenTAP(name, Options{VnetHdr: true})
		done <- result{d, err}
	}()
	select {
	case r := <-done:
		if r.d != nil {
			r.d.Close()
		}
		t.Fatalf("a VnetHdr open returned (err %v) while a sweep held openMu: the sweep could have closed its fd", r.err)
	case <-time.After(300 * time.Millisecond):
	}
	closeStrayTunFds(before)
	openMu.Unlock()
	held = false
	r := <-done
	if r.err != nil {
		t.Fatalf("VnetHdr open after the sweep: %v", r.err)
	}
	r.d.Close()
}

func TestMultiQueue(t *testing.T) {
	RequireRoot(t)
	name := RandomName("tdt")
	t.Cleanup(func() {
		if LinkExists("", name) {
			DeleteLink("", name)
		}
	})
	q0, c0 := openT(t, name, Options{MultiQueue: true})
	q1, c1 := openT(t, name, Options{MultiQueue: true})
	if !c0 || c1 {
		t.Fatalf("created = %v, %v; want true, false", c0, c1)
	}
	if f := tunFlags(t, name); f&unix.IFF_MULTI_QUEUE == 0 || f&unix.IFF_PERSIST != 0 {
		t.Errorf("tun_flags %#x: want multi-queue, non-persistent (the second open must not make it persistent)", f)
	}
	q0.Close()
	if !LinkExists("", name) {
		t.Fatal("TAP gone with one queue still open")
	}
	q1.Close()
	if LinkExists("", name) {
		t.Error("TAP still there after its last queue closed")
	}
	// A pre-created persistent multi-queue TAP keeps persist across our queues.
	pre := preCreateTAP(t, true)
	p0, c := openT(t, pre, Options{MultiQueue: true})
	p1, _ := openT(t, pre, Options{MultiQueue: true})
	if c || tunFlags(t, pre)&unix.IFF_PERSIST == 0 {
		t.Errorf("pre-created mq TAP: created=%v flags %#x", c, tunFlags(t, pre))
	}
	p0.Close()
	p1.Close()
	if !LinkExists("", pre) {
		t.Error("pre-created mq TAP deleted by our Close")
	}
}

func TestVnetHdr(t *testing.T) {
	RequireRoot(t)
	name := RandomName("tdt")
	t.Cleanup(func() {
		if LinkExists("", name) {
			DeleteLink("", name)
		}
	})
	d, created := openT(t, name, Options{VnetHdr: true, MultiQueue: true})
	if !created {
		t.Fatal("not created")
	}
	if f := tunFlags(t, name); f&unix.IFF_VNET_HDR == 0 {
		t.Errorf("tun_flags %#x: no IFF_VNET_HDR", f)
	}
	if sz, err := unix.IoctlGetInt(d.fd, unix.TUNGETVNETHDRSZ); err != nil || sz != VnetHdrLen {
		t.Errorf("TUNGETVNETHDRSZ = %d, %v; want %d", sz, err, VnetHdrLen)
	}
	checkFdFlags(t, name, d.fd)
	// Another queue without VnetHdr would clear the flag under this one.
	if _, _, err := OpenTAP(name, Options{MultiQueue: true}); err == nil {
		t.Error("a non-vnet queue on a vnet TAP with a queue attached: no error")
	}
	if f := tunFlags(t, name); f&unix.IFF_VNET_HDR == 0 {
		t.Errorf("tun_flags %#x: IFF_VNET_HDR lost", f)
	}
}

func TestOpenTAPAtNamespace(t *testing.T) {
	ns := TempNetns(t, "tdt")
	name := RandomName("tdt")
	d, created, err := OpenTAPAt(ns, name, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !created || !LinkExists(ns, name) || LinkExists("", name) {
		t.Fatalf("created=%v, in %s: %v, in root: %v; want created in %s only", created, ns, LinkExists(ns, name), LinkExists("", name), ns)
	}
	checkFdFlags(t, name, d.fd)
	d.Close()
	if LinkExists(ns, name) {
		t.Error("TAP still in the namespace after Close")
	}
}

// When the queue opens in the namespace but the thread then fails to
// leave it, OpenTAPAt returns an error and must not leave the queue open
// behind it: no /dev/net/tun fd stays open, a TAP it created is gone, and
// a pre-existing persistent TAP is still there and still persistent (its
// flag restored before the close, as after a successful open).
func TestOpenTAPAtLeaveFailsClosesQueue(t *testing.T) {
	ns := TempNetns(t, "tdt")
	RequireTool(t, "ip")
	pre := RandomName("tdt")
	run(t, "ip", "-n", ns, "tuntap", "add", "mode", "tap", "name", pre)
	errLeave := errors.New("injected setns failure")
	calls := 0
	setNetns = func(h netns.NsHandle) error {
		calls++
		if err := netns.Set(h); err != nil {
			return err
		}
		if calls%2 == 0 { // the second of each pair: leaving
			return errLeave
		}
		return nil
	}
	t.Cleanup(func() { setNetns = netns.Set })
	for _, tc := range []struct {
		name string
		link string
		o    Options
	}{
		{"created", RandomName("tdt"), Options{}},
		{"created, VnetHdr", RandomName("tdt"), Options{VnetHdr: true}},
		{"pre-existing persistent", pre, Options{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls = 0
			before := len(tunFds())
			d, _, err := OpenTAPAt(ns, tc.link, tc.o)
			if d != nil {
				d.Close()
			}
			if !errors.Is(err, errLeave) {
				t.Fatalf("OpenTAPAt with a failing setns back = %v; want the leave error", err)
			}
			if after := len(tunFds()); after != before {
				t.Errorf("/dev/net/tun fds: %d before, %d after the failed open", before, after)
			}
			if tc.link != pre {
				if LinkExists(ns, tc.link) {
					t.Errorf("the TAP %s the failed open created is still in %s", tc.link, ns)
				}
				return
			}
			h, err := handleAt(ns)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			l, err := h.LinkByName(pre)
			if err != nil {
				t.Fatalf("the pre-existing TAP is gone after the failed open: %v", err)
			}
			if tt, ok := l.(*netlink.Tuntap); !ok || tt.NonPersist {
				t.Errorf("the pre-existing TAP lost its persist flag (a %s link, flags %#x)", l.Type(), l.Attrs().RawFlags)
			}
		})
	}
}

func TestNetnsCreateDelete(t *testing.T) {
	RequireRoot(t)
	RequireTool(t, "ip")
	name := RandomName("tdt")
	if NetnsExists(name) {
		t.Fatal("random name taken")
	}
	if err := CreateNetns(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if NetnsExists(name) {
			DeleteNetns(name)
		}
	})
	if !NetnsExists(name) || !LinkExists(name, "lo") {
		t.Fatal("namespace missing, or no lo in it")
	}
	if err := CreateNetns(name); !errors.Is(err, os.ErrExist) {
		t.Errorf("CreateNetns twice = %v; want os.ErrExist", err)
	}
	if out := run(t, "ip", "netns", "list"); !strings.Contains(out, name) {
		t.Errorf("ip netns list does not show %s:\n%s", name, out)
	}
	if out := run(t, "ip", "netns", "exec", name, "ip", "-br", "link"); !strings.HasPrefix(out, "lo ") || strings.Count(out, "\n") != 1 {
		t.Errorf("ip netns exec %s ip link: want only lo, got\n%s", name, out)
	}
	// The namespace really is another one: its inode is not ours, and it
	// is the one iproute2 enters by that name.
	ours, theirs := netnsInode(t, ""), netnsInode(t, name)
	if ours == theirs {
		t.Errorf("netns %s is our own namespace (inode %d)", name, ours)
	}
	want := "net:[" + strconv.FormatUint(theirs, 10) + "]"
	if got := strings.TrimSpace(run(t, "ip", "netns", "exec", name, "readlink", "/proc/self/ns/net")); got != want {
		t.Errorf("ip netns exec %s sees namespace %s; OpenNetns(%q) is %s (ours is net:[%d])", name, got, name, want, ours)
	}
	if err := DeleteNetns(name); err != nil {
		t.Fatal(err)
	}
	if NetnsExists(name) {
		t.Error("namespace still listed after DeleteNetns")
	}
	if err := DeleteNetns(name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("DeleteNetns twice = %v; want os.ErrNotExist", err)
	}
	if err := ConfigureLink(name, "lo", LinkConfig{Up: true}); err == nil || !strings.Contains(err.Error(), name) {
		t.Errorf("ConfigureLink in a deleted namespace = %v; want an error naming it", err)
	}
}

// netnsInode is the inode of namespace ns ("" = the current thread's), as
// /proc/PID/ns/net shows it ("net:[INODE]").
func netnsInode(t *testing.T, ns string) uint64 {
	t.Helper()
	h, err := OpenNetns(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		t.Fatalf("fstat netns %s: %v", nsLabel(ns), err)
	}
	return st.Ino
}

func TestConfigureLink(t *testing.T) {
	ns := TempNetns(t, "tdt")
	d := TempTAP(t, "tdt", Options{}, ns)
	name := d.Name()
	if err := MoveLink(name, "", ns); err != nil {
		t.Fatal(err)
	}
	if LinkExists("", name) || !LinkExists(ns, name) {
		t.Fatal("MoveLink: link not moved")
	}
	br := RandomName("tdb")
	h, err := handleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: br}}); err != nil {
		t.Fatal(err)
	}
	mac := RandomMAC()
	addr := netip.MustParsePrefix("198.18.0.1/24")
	mapped := netip.MustParsePrefix("::ffff:198.18.0.9/120") // becomes 198.18.0.9/24
	c := LinkConfig{MTU: 1400, MAC: mac, Up: true, Addrs: []netip.Prefix{addr, mapped}, Alias: "tapdev test", Master: br}
	if err := ConfigureLink(ns, name, c); err != nil {
		t.Fatal(err)
	}
	if mtu, err := LinkMTU(ns, name); err != nil || mtu != 1400 {
		t.Errorf("LinkMTU = %d, %v", mtu, err)
	}
	if got, err := LinkMAC(ns, name); err != nil || got.String() != mac.String() {
		t.Errorf("LinkMAC = %v, %v; want %v", got, err, mac)
	}
	if a, err := LinkAlias(ns, name); err != nil || a != "tapdev test" {
		t.Errorf("LinkAlias = %q, %v", a, err)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := h.LinkByName(br)
	if l.Attrs().MasterIndex != b.Attrs().Index {
		t.Errorf("master index %d, bridge %s is %d", l.Attrs().MasterIndex, br, b.Attrs().Index)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		t.Error("link not up")
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range addrs {
		got = append(got, a.IPNet.String())
	}
	if s := strings.Join(got, " "); !strings.Contains(s, "198.18.0.1/24") || !strings.Contains(s, "198.18.0.9/24") {
		t.Errorf("addresses %v; want 198.18.0.1/24 and 198.18.0.9/24", got)
	}
	// Again: idempotent.
	if err := ConfigureLink(ns, name, c); err != nil {
		t.Errorf("ConfigureLink again: %v", err)
	}
	if err := SetLinkUp(ns, name, false); err != nil {
		t.Fatal(err)
	}
	if l, _ := h.LinkByName(name); l.Attrs().Flags&net.FlagUp != 0 {
		t.Error("SetLinkUp(false): still up")
	}
	err = ConfigureLink(ns, "tdtnosuch", LinkConfig{MTU: 1400})
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "tdtnosuch") || !strings.Contains(err.Error(), ns) {
		t.Errorf("ConfigureLink(missing) = %v; want ErrNotExist naming link and netns", err)
	}
	if err := ConfigureLink(ns, name, LinkConfig{MTU: 10}); err == nil || !strings.Contains(err.Error(), name) {
		t.Errorf("ConfigureLink(MTU 10) = %v; want an error naming the link", err)
	}
	if err := MoveLink(name, ns, ""); err != nil {
		t.Fatal(err)
	}
	if !LinkExists("", name) {
		t.Error("MoveLink back to the root namespace failed")
	}
}

// Frames through a real kernel stack: the TAP lives in a test namespace
// with 198.18.0.1/24; ping runs inside it to 198.18.0.2, a neighbour that
// exists only as this test, answering ARP and ICMP through the TAP fd.
func TestFramesThroughNamespace(t *testing.T) {
	RequireTool(t, "ip")
	RequireTool(t, "ping")
	ns := TempNetns(t, "tdt")
	d := TempTAP(t, "tdt", Options{}, ns)
	name := d.Name()
	if err := MoveLink(name, "", ns); err != nil {
		t.Fatal(err)
	}
	if err := ConfigureLink(ns, name, LinkConfig{Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24")}}); err != nil {
		t.Fatal(err)
	}
	peerMAC := RandomMAC()
	peerIP := [4]byte{198, 18, 0, 2}

	var arps, pings int
	done := make(chan error, 1)
	src := d.Interrupt()
	go func() { // the "link partner": interrupt, DPC, reply
		bufs, sizes := makeBufs(16, 2048)
		var out [][]byte
		for {
			if err := src.Wait(); err != nil {
				done <- err
				return
			}
			n, err := d.ReadBatch(bufs, sizes)
			if err != nil {
				done <- err
				return
			}
			out = out[:0]
			for i := 0; i < n; i++ {
				f := bufs[i][:sizes[i]]
				if r := arpReply(f, peerMAC, peerIP); r != nil {
					arps++
					out = append(out, r)
				} else if r := echoReply(f, peerMAC, peerIP); r != nil {
					pings++
					out = append(out, r)
				}
			}
			if w, err := d.WriteBatch(out, nil); err != nil || w != len(out) {
				done <- errors.Join(err, errors.New("short write"))
				return
			}
		}
	}()
	out, err := exec.Command("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", "198.18.0.2").CombinedOutput()
	src.Stop()
	if werr := <-done; !errors.Is(werr, ndisshim.ErrInterruptStopped) {
		t.Errorf("partner loop ended with %v", werr)
	}
	if err != nil {
		t.Fatalf("ping inside %s: %v\n%s", ns, err, out)
	}
	if arps == 0 || pings == 0 {
		t.Errorf("saw %d ARP requests and %d echo requests; want both", arps, pings)
	}
	rx, tx, _, _, err := LinkStats(ns, name)
	if err != nil {
		t.Fatal(err)
	}
	if rx < 2 || tx < 2 {
		t.Errorf("LinkStats rx=%d tx=%d; want >= 2 each (ARP + ICMP both ways)", rx, tx)
	}
	t.Logf("ping answered through the TAP fd: %d ARP, %d ICMP; kernel rx %d tx %d", arps, pings, rx, tx)
}

// arpReply answers an ARP request for ip, or returns nil.
func arpReply(f []byte, mac net.HardwareAddr, ip [4]byte) []byte {
	if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != 0x0806 || binary.BigEndian.Uint16(f[20:]) != 1 || [4]byte(f[38:42]) != ip {
		return nil
	}
	r := make([]byte, 42)
	copy(r[0:6], f[6:12]) // to the asker
	copy(r[6:12], mac)
	binary.BigEndian.PutUint16(r[12:], 0x0806)
	copy(r[14:20], f[14:20]) // htype, ptype, hlen, plen
	binary.BigEndian.PutUint16(r[20:], 2)
	copy(r[22:28], mac)
	copy(r[28:32], ip[:])
	copy(r[32:42], f[22:32]) // target = the asker's sha + spa
	return r
}

// echoReply answers an ICMP echo request to ip, or returns nil.
func echoReply(f []byte, mac net.HardwareAddr, ip [4]byte) []byte {
	if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[23] != 1 || [4]byte(f[30:34]) != ip {
		return nil
	}
	ihl := int(f[14]&0x0f) * 4
	if len(f) < 14+ihl+8 || f[14+ihl] != 8 {
		return nil
	}
	r := append([]byte(nil), f...)
	copy(r[0:6], f[6:12])
	copy(r[6:12], mac)
	copy(r[26:30], f[30:34])
	copy(r[30:34], f[26:30])
	r[24], r[25] = 0, 0
	binary.BigEndian.PutUint16(r[24:], checksum(r[14:14+ihl]))
	icmp := r[14+ihl:]
	icmp[0] = 0
	icmp[2], icmp[3] = 0, 0
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp))
	return r
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// Surprise removal: the link deleted under an open Dev. The kernel detaches
// the queue: poll says POLLERR, read and write fail with EBADFD.
func TestLinkDeletedUnderOpenDev(t *testing.T) {
	d := TempTAP(t, "tdt", Options{})
	name := d.Name() // left down: an up link sends IPv6 router solicitations, and Wait would wake for them
	var fired sync.WaitGroup
	fired.Add(1)
	stop, err := WatchLinkRemoval("", name, fired.Done)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	ch := waitAsync(t, d.Interrupt())
	if err := DeleteLink("", name); err != nil {
		t.Fatal(err)
	}
	werr := waitResult(t, ch)
	if !errors.Is(werr, ErrDeviceGone) || !strings.Contains(werr.Error(), name) {
		t.Errorf("Wait = %v; want ErrDeviceGone naming %s", werr, name)
	}
	bufs, sizes := makeBufs(4, 2048)
	n, rerr := d.ReadBatch(bufs, sizes)
	if n != 0 || !errors.Is(rerr, ErrDeviceGone) || !errors.Is(rerr, unix.EBADFD) {
		t.Errorf("ReadBatch = %d, %v; want 0, ErrDeviceGone (EBADFD)", n, rerr)
	}
	n, wrerr := d.WriteBatch([][]byte{make([]byte, 60)}, nil)
	if n != 0 || !errors.Is(wrerr, ErrDeviceGone) || !errors.Is(wrerr, unix.EBADFD) {
		t.Errorf("WriteBatch = %d, %v; want 0, ErrDeviceGone (EBADFD)", n, wrerr)
	}
	t.Logf("after ip link del:\n  wait:  %v\n  read:  %v\n  write: %v", werr, rerr, wrerr)
	waitGroupOrFail(t, &fired, "WatchLinkRemoval did not fire")
	if err := d.Close(); err != nil {
		t.Errorf("Close after removal: %v", err)
	}
}

func waitGroupOrFail(t *testing.T, wg *sync.WaitGroup, msg string) {
	t.Helper()
	c := make(chan struct{})
	go func() { wg.Wait(); close(c) }()
	select {
	case <-c:
	case <-time.After(5 * time.Second):
		t.Fatal(msg)
	}
}

func TestWatchLinkRemoval(t *testing.T) {
	ns := TempNetns(t, "tdt")
	d := TempTAP(t, "tdt", Options{}, ns)
	name := d.Name()

	if _, err := WatchLinkRemoval("", "tdtnosuch", func() {}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("watch on a missing link = %v; want os.ErrNotExist", err)
	}
	// Stopped before anything happens: fn never runs.
	stop0, err := WatchLinkRemoval("", name, func() { t.Error("stopped watch fired") })
	if err != nil {
		t.Fatal(err)
	}
	stop0()
	stop0()

	// Moving away from the root namespace is a removal there.
	var moved sync.WaitGroup
	moved.Add(1)
	stop1, err := WatchLinkRemoval("", name, moved.Done)
	if err != nil {
		t.Fatal(err)
	}
	if err := SetLinkUp("", name, true); err != nil { // an RTM_NEWLINK: not a removal
		t.Fatal(err)
	}
	if err := MoveLink(name, "", ns); err != nil {
		t.Fatal(err)
	}
	waitGroupOrFail(t, &moved, "move: watch did not fire")
	stop1()

	// Deleted inside a namespace; stop called from fn.
	var deleted sync.WaitGroup
	deleted.Add(1)
	var stop2 func()
	ready := make(chan struct{})
	stop2, err = WatchLinkRemoval(ns, name, func() {
		<-ready
		stop2()
		deleted.Done()
	})
	close(ready)
	if err != nil {
		t.Fatal(err)
	}
	if err := DeleteLink(ns, name); err != nil {
		t.Fatal(err)
	}
	waitGroupOrFail(t, &deleted, "delete in netns: watch did not fire")
	stop2()
}

func fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// cycle does one of everything that opens an fd.
func cycle(t *testing.T) {
	t.Helper()
	ns := RandomName("tdt")
	if err := CreateNetns(ns); err != nil {
		t.Fatal(err)
	}
	defer DeleteNetns(ns)
	name := RandomName("tdt")
	d, _, err := OpenTAP(name, Options{})
	if err != nil {
		t.Fatal(err)
	}
	stop, err := WatchLinkRemoval("", name, func() {})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan error, 1)
	go func() { ch <- d.Interrupt().Wait() }()
	d.Interrupt().Stop()
	<-ch
	if err := MoveLink(name, "", ns); err != nil {
		t.Fatal(err)
	}
	stop()
	if err := ConfigureLink(ns, name, LinkConfig{MTU: 1400, Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.1.1/24")}}); err != nil {
		t.Fatal(err)
	}
	LinkStats(ns, name)
	d.Close()
	v, _, err := OpenTAPAt(ns, RandomName("tdt"), Options{VnetHdr: true})
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	a, b, err := Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
}

func TestNoFdLeft(t *testing.T) {
	RequireRoot(t)
	cycle(t) // warm up: the runtime poller opens its epoll fd on first use
	before := fdCount(t)
	for i := 0; i < 3; i++ {
		cycle(t)
	}
	if after := fdCount(t); after != before {
		out, _ := exec.Command("ls", "-l", "/proc/"+strconv.Itoa(os.Getpid())+"/fd").CombinedOutput()
		t.Errorf("fds: %d before, %d after 3 cycles\n%s", before, after, out)
	}
}

// A link set down is a pulled cable, not a removal: the kernel refuses
// writes with EIO (ErrLinkDown, not ErrDeviceGone) while it is down, and
// writes work again once it is up.
func TestWriteWhileLinkDown(t *testing.T) {
	ns := TempNetns(t, "tdt") // set up, the link sends IPv6 solicitations: keep them in a namespace of ours
	d, name := openTAPIn(t, ns, Options{})
	frame := make([]byte, 60)
	copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x08, 0x06})
	n, err := d.WriteBatch([][]byte{frame, frame}, nil)
	if n != 0 || !errors.Is(err, ErrLinkDown) || errors.Is(err, ErrDeviceGone) || !strings.Contains(err.Error(), name) {
		t.Errorf("WriteBatch on a link that is down = %d, %v; want 0, ErrLinkDown (not ErrDeviceGone) naming %s", n, err, name)
	}
	if c := d.Counters(); c.TxDropped != 0 || c.TxErrors != 0 {
		t.Errorf("counters after a refused write: %+v; want nothing counted (the caller counts)", c)
	}
	if err := SetLinkUp(ns, name, true); err != nil {
		t.Fatal(err)
	}
	if n, err := d.WriteBatch([][]byte{frame, frame}, nil); n != 2 || err != nil {
		t.Errorf("WriteBatch once the link is up = %d, %v; want 2, nil", n, err)
	}
	if err := SetLinkUp(ns, name, false); err != nil {
		t.Fatal(err)
	}
	if n, err := d.WriteBatch([][]byte{frame}, nil); n != 0 || !errors.Is(err, ErrLinkDown) {
		t.Errorf("WriteBatch after the link is set down again = %d, %v; want 0, ErrLinkDown", n, err)
	}
	t.Logf("write while down: %v", err)
}

// A frame longer than the buffer it is read into, on a real TAP: the
// kernel's read (tun_chr_read_iter) copies what fits and returns at most
// the buffer's length, so a jumbo frame would come up as a silently
// truncated frame of exactly len(buf) bytes. ReadBatch must drop it, count
// it in Counters.RxOversize, report no size above a buffer, and read the
// frames after it intact: with read(2) and through the io_uring (from the
// third frame of a batch on), with and without the virtio-net header. The
// frames are put on the TAP's queue by an AF_PACKET socket inside the
// test's namespace (the link's MTU is 9000, so the kernel takes an
// 8000-byte frame); nothing leaves it.
func TestReadBatchDropsFrameLongerThanBuffer(t *testing.T) {
	for _, ring := range []bool{false, true} {
		for _, vnet := range []bool{false, true} {
			name := map[bool]string{true: "io_uring", false: "read"}[ring] + map[bool]string{true: "/vnet", false: ""}[vnet]
			t.Run(name, func(t *testing.T) { testLongFrameOnTAP(t, ring, vnet) })
		}
	}
}

func testLongFrameOnTAP(t *testing.T, ring, vnet bool) {
	ns := TempNetns(t, "tdt")
	// No IPv6 on the TAP: no solicitations queued among the test's frames.
	if err := inNetns(ns, func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", []byte("1"), 0)
	}); err != nil {
		t.Logf("disable IPv6 in %s: %v (foreign frames are skipped)", ns, err)
	}
	SetIOURing(ring)
	defer SetIOURing(true)
	d, name := openTAPIn(t, ns, Options{VnetHdr: vnet})
	if ring {
		requireRing(t, d)
	}
	if err := ConfigureLink(ns, name, LinkConfig{MTU: 9000, Up: true}); err != nil {
		t.Fatal(err)
	}
	inject := packetInjector(t, ns, name)

	const etherType = 0x88b5 // IEEE 802 local experimental
	frame := func(size int, id byte) []byte {
		f := make([]byte, size)
		copy(f, []byte{0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, etherType >> 8, etherType & 0xff})
		for i := 14; i < size; i++ {
			f[i] = id + byte(i)
		}
		return f
	}
	const bufSize = 1600
	var want [][]byte
	var sent []int
	fits := bufSize - d.vnetLen(vnet) // a frame that fills its buffer exactly
	for i, size := range []int{100, 8000, 200, 300, 8000, 400, fits, fits + 1, 500} {
		f := frame(size, byte(i))
		inject(f)
		sent = append(sent, size)
		if size <= bufSize-d.vnetLen(vnet) {
			want = append(want, f)
		}
	}
	var got [][]byte
	foreign := 0
	readAll(t, d, bufSize, func(f []byte) {
		f = f[d.vnetLen(vnet):]
		if len(f) < 14 || binary.BigEndian.Uint16(f[12:]) != etherType {
			foreign++
			return
		}
		got = append(got, bytes.Clone(f))
	})
	if ring && d.ringRefused {
		t.Errorf("the kernel refused reads through the ring: the io_uring path was not tested")
	}
	if len(got) != len(want) {
		lens := make([]int, len(got))
		for i, f := range got {
			lens[i] = len(f)
		}
		t.Fatalf("sent frames of %v bytes into %d-byte buffers; read %d frames of %v bytes, want the %d that fit", sent, bufSize, len(got), lens, len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("frame %d: %d bytes, want %d bytes intact", i, len(got[i]), len(want[i]))
		}
	}
	if c := d.Counters(); c.RxOversize != 3 {
		t.Errorf("Counters().RxOversize = %d, want 3 (two 8000-byte frames, one a byte too long)", c.RxOversize)
	}
	t.Logf("%s: %d frames intact, %d dropped as longer than the buffer, %d foreign frames skipped", d.ReadPath(), len(got), d.Counters().RxOversize, foreign)
}

// vnetLen is the virtio-net header's length when vnet is set.
func (d *Dev) vnetLen(vnet bool) int {
	if vnet {
		return VnetHdrLen
	}
	return 0
}

// packetInjector returns a function that puts a frame on the TAP name's
// queue (the TAP's transmit side, what a reader of its fd sees) through an
// AF_PACKET socket made inside ns, bypassing the qdisc so the frame is
// queued when the call returns. The socket is closed in cleanup.
func packetInjector(t *testing.T, ns, name string) func(frame []byte) {
	t.Helper()
	h, l, err := lookup(ns, name)
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	var fd int
	if err := inNetns(ns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0) // 0: sends only, receives nothing
		return err
	}); err != nil {
		t.Fatalf("packet socket in %s: %v", ns, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
		t.Fatalf("PACKET_QDISC_BYPASS: %v", err)
	}
	to := &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index}
	return func(frame []byte) {
		t.Helper()
		if err := unix.Sendto(fd, frame, 0, to); err != nil {
			t.Fatalf("send a %d-byte frame to %s in %s: %v", len(frame), name, ns, err)
		}
	}
}

// WatchLink reports the link being set down and up (IFF_UP), in order,
// once per change, and then its removal.
func TestWatchLinkUpDown(t *testing.T) {
	ns := TempNetns(t, "tdt")
	_, name := openTAPIn(t, ns, Options{})
	if err := SetLinkUp(ns, name, true); err != nil {
		t.Fatal(err)
	}
	changes := make(chan bool, 8)
	removed := make(chan struct{})
	stop, err := WatchLink(ns, name, func() { close(removed) }, func(up bool) { changes <- up })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	next := func(want bool) {
		t.Helper()
		select {
		case up := <-changes:
			if up != want {
				t.Fatalf("link change up=%v, want up=%v", up, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no link change to up=%v within 5s", want)
		}
	}
	for _, up := range []bool{false, true, false} {
		if err := SetLinkUp(ns, name, up); err != nil {
			t.Fatal(err)
		}
		next(up)
	}
	if err := SetLinkUp(ns, name, false); err != nil { // no change: no call
		t.Fatal(err)
	}
	if err := DeleteLink(ns, name); err != nil {
		t.Fatal(err)
	}
	select {
	case <-removed:
	case <-time.After(5 * time.Second):
		t.Fatal("removal not reported within 5s")
	}
	select {
	case up := <-changes:
		t.Errorf("an extra link change up=%v (setting down a link that is down, or the removal)", up)
	default:
	}
}

// openTAPIn creates a TAP called tdt + a random suffix in namespace ns (a
// test's TempNetns) and closes it, which deletes it, in t.Cleanup.
func openTAPIn(t *testing.T, ns string, o Options) (*Dev, string) {
	t.Helper()
	name := RandomName("tdt")
	d, _, err := OpenTAPAt(ns, name, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, name
}
