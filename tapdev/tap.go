package tapdev

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/songgao/water"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// OpenTAP attaches a queue to the TAP named name in the current namespace,
// creating the TAP when missing; created says whether this call created
// the link (decided by a netlink lookup just before the open, so a TAP
// another process creates in between counts as ours). name "" lets the
// kernel choose (tapN; created is true).
//
// Persistence: a TAP this call creates is non-persistent, so the kernel
// deletes it when its last queue closes (our Close, or process exit). A
// pre-existing TAP keeps the persist flag it had (water clears it on every
// attach; openWater sets it back before anything else can fail), so we
// never delete what we did not create. The one window: if the process
// dies between water's clear and the restore, a pre-created persistent
// TAP goes with it.
//
// Before opening, OpenTAP checks the existing link with netlink and refuses,
// without touching it, a link that is not a TAP, a MultiQueue mismatch
// (EINVAL), and a VnetHdr mismatch on a multi-queue TAP with queues
// attached (the new queue would not get the framing it asked for). A
// second queue on a single-queue TAP fails with EBUSY from the kernel.
// water leaks its fd when the kernel refuses; OpenTAP finds and closes it.
func OpenTAP(name string, o Options) (d *Dev, created bool, err error) {
	return OpenTAPAt("", name, o)
}

// OpenQueue opens one queue of the TAP name, created when missing: a queue
// of a multi-queue TAP when queues > 1; with vnet, with the virtio-net
// header and NegotiateOffload(AllOffloads). It is the opener both the
// miniport's hardware TAP and the binding's NIC TAP use.
func OpenQueue(name string, vnet bool, queues int) (*Dev, bool, error) {
	d, created, err := OpenTAP(name, Options{VnetHdr: vnet, MultiQueue: queues > 1})
	if err != nil {
		return nil, false, err
	}
	if vnet {
		if _, err := d.NegotiateOffload(AllOffloads); err != nil {
			d.Close()
			return nil, false, fmt.Errorf("offloads on %s: %w", name, err)
		}
	}
	return d, created, nil
}

// OpenTAPAt is OpenTAP in namespace ns ("" = current): the queue is opened
// on a throwaway thread inside ns, so the TAP is found or created there.
// The open queue keeps ns alive (the kernel holds the opener's namespace)
// until it is closed.
func OpenTAPAt(ns, name string, o Options) (d *Dev, created bool, err error) {
	if err := validIfName(name); err != nil {
		return nil, false, err
	}
	prior, err := probeTAP(ns, name, o)
	if err != nil {
		return nil, false, err
	}
	fd := -1
	var ifname string
	err = inNetns(ns, func() error {
		var err error
		fd, ifname, err = openQueue(name, o, prior != nil && prior.persist)
		return err
	})
	if err != nil && fd >= 0 {
		// The queue opened but the thread could not leave ns: the
		// error is returned, so the queue must not outlive it (it
		// would keep a TAP we created, and ns, alive). A pre-existing
		// persistent TAP has its flag (openWater) and stays.
		unix.Close(fd)
	}
	if errors.Is(err, unix.EBUSY) {
		return nil, false, fmt.Errorf("tapdev: open tap %q %s: %w (a single-queue TAP takes one queue: is another process attached?)", name, where(ns), err)
	}
	if err != nil {
		return nil, false, fmt.Errorf("tapdev: open tap %q %s: %w", name, where(ns), err)
	}
	d, err = newDev(ifname, fd)
	if err != nil {
		return nil, false, err
	}
	return d, prior == nil, nil
}

// validIfName is the kernel's dev_valid_name, plus "" (kernel's choice).
func validIfName(name string) error {
	if name == "" {
		return nil
	}
	if len(name) >= unix.IFNAMSIZ || name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\v\f\r") {
		return fmt.Errorf("tapdev: bad interface name %q (1..%d bytes, no '/', ':' or space)", name, unix.IFNAMSIZ-1)
	}
	return nil
}

// tapState is what probeTAP learned about a pre-existing TAP.
type tapState struct {
	persist bool
}

// probeTAP returns nil if there is no link called name in ns, the TAP's
// state if it is a TAP we can attach to with o, and an error otherwise.
func probeTAP(ns, name string, o Options) (*tapState, error) {
	if name == "" {
		return nil, nil
	}
	h, err := handleAt(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	fail := func(format string, a ...any) error {
		return fmt.Errorf("tapdev: open tap %q %s: "+format, append([]any{name, where(ns)}, a...)...)
	}
	if err != nil {
		return nil, fail("%w", err)
	}
	t, ok := l.(*netlink.Tuntap)
	if !ok {
		return nil, fail("the link exists and is a %s, not a tap", l.Type())
	}
	if t.Mode != netlink.TUNTAP_MODE_TAP {
		return nil, fail("the link exists and is a tun, not a tap")
	}
	mq := t.Flags&netlink.TUNTAP_MULTI_QUEUE != 0
	if mq != o.MultiQueue {
		hint := "recreate it with `ip tuntap add NAME mode tap multi_queue`, or use one queue (--queues 1)"
		if mq {
			hint = "it is a multi-queue tap: open it with several queues (--queues N), or recreate it without multi_queue"
		}
		return nil, fail("the tap has multi_queue=%v, opened with MultiQueue=%v (%s): %w", mq, o.MultiQueue, hint, unix.EINVAL)
	}
	// Queue counts are reported for multi-queue TAPs only; a single-queue
	// TAP that is already attached fails in TUNSETIFF with EBUSY.
	attached := t.Queues + t.DisabledQueues
	if vnet := t.Flags&netlink.TUNTAP_VNET_HDR != 0; vnet != o.VnetHdr && attached > 0 {
		return nil, fail("the tap has vnet_hdr=%v and %d queues attached; VnetHdr=%v would change their framing: %w", vnet, attached, o.VnetHdr, unix.EINVAL)
	}
	return &tapState{persist: !t.NonPersist}, nil
}

// openQueue opens /dev/net/tun and attaches it to the TAP name, on the
// calling thread's namespace. It returns a non-blocking, close-on-exec fd
// that the Go poller does not know.
func openQueue(name string, o Options, persist bool) (int, string, error) {
	if o.VnetHdr {
		return openVnet(name, o.MultiQueue)
	}
	return openWater(name, o.MultiQueue, persist)
}

// openMu serialises every open of /dev/net/tun in the process (openWater
// and openVnet), so that the stray-fd sweep after a failed water open only
// sees water's fd: another opener's fd is unattached, and so looks stray,
// from its open until its TUNSETIFF. Nothing calls openWater or openVnet
// with openMu held (it is not reentrant); openWater takes
// syscall.ForkLock after it.
var openMu sync.Mutex

// openWater opens the queue through water, then trades water's *os.File
// (no FD_CLOEXEC, registered with the runtime poller) for a dup of its fd
// made with F_DUPFD_CLOEXEC inside SyscallConn().Control, and closes
// water's file. The dup shares the open file description, so the queue
// stays attached and keeps water's O_NONBLOCK. syscall.ForkLock is held
// (read side, as for any non-cloexec fd) until water's fd is closed, so no
// fork+exec inherits it. persist: the TAP existed and was persistent;
// water's TUNSETPERSIST cleared that, and it is set again before anything
// else, so that no failure below, which closes water's fd, deletes a TAP
// we did not create.
func openWater(name string, mq, persist bool) (int, string, error) {
	openMu.Lock()
	defer openMu.Unlock()
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()

	before := tunFds()
	ifce, err := water.New(water.Config{
		DeviceType:             water.TAP,
		PlatformSpecificParams: water.PlatformSpecificParams{Name: name, MultiQueue: mq},
	})
	if err != nil {
		// water does not close its fd when TUNSETIFF or TUNSETPERSIST fails.
		closeStrayTunFds(before)
		return -1, "", fmt.Errorf("water: %w", err)
	}
	f, ok := ifce.ReadWriteCloser.(*os.File)
	if !ok {
		ifce.Close()
		return -1, "", fmt.Errorf("water returned a %T, not an *os.File", ifce.ReadWriteCloser)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return -1, "", fmt.Errorf("water's file: %w", err)
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(raw uintptr) {
		if persist {
			if dupErr = unix.IoctlSetInt(int(raw), unix.TUNSETPERSIST, 1); dupErr != nil {
				dupErr = fmt.Errorf("restore persist flag (the pre-existing TAP is lost): %w", dupErr)
				return
			}
		}
		fd, dupErr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		dupErr = err
	}
	f.Close() // drops water's fd; the dup keeps the queue attached
	if dupErr != nil {
		return -1, "", fmt.Errorf("dup water's fd: %w", dupErr)
	}
	// Already non-blocking (water opens with O_NONBLOCK, a property of the
	// shared description); set it anyway rather than depend on water.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, "", fmt.Errorf("set non-blocking: %w", err)
	}
	return fd, ifce.Name(), nil
}

// openVnet opens the queue without water, which can neither set
// IFF_VNET_HDR nor keep it (its TUNSETIFF flags replace the TAP's). It
// holds openMu: until TUNSETIFF its fd is attached to no TAP, and a
// failed water open on another goroutine would sweep it as water's
// (closing our fd, or a reused fd number when we close it).
func openVnet(name string, mq bool) (int, string, error) {
	openMu.Lock()
	defer openMu.Unlock()
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, "", err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, "", err
	}
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if mq {
		flags |= unix.IFF_MULTI_QUEUE
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, "", fmt.Errorf("TUNSETIFF: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, VnetHdrLen); err != nil {
		unix.Close(fd)
		return -1, "", fmt.Errorf("TUNSETVNETHDRSZ %d: %w", VnetHdrLen, err)
	}
	return fd, ifr.Name(), nil
}

// tunFds lists this process's fds open on /dev/net/tun.
func tunFds() map[int]bool {
	fds := map[int]bool{}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fds
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/net/tun" {
			fds[fd] = true
		}
	}
	return fds
}

// closeStrayTunFds closes the /dev/net/tun fds that were not open before
// and are attached to no TAP (fdinfo "iff:" empty): water's leaked fd. Only
// safe with openMu held, since tapdev is the only opener of /dev/net/tun
// and holds openMu from each open until the fd is attached or closed.
func closeStrayTunFds(before map[int]bool) {
	for fd := range tunFds() {
		if before[fd] {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
		if err == nil && bytes.Contains(info, []byte("\niff:\t\n")) {
			unix.Close(fd)
		}
	}
}
