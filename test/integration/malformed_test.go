package integration

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tapminiport/tapminiport/tapdev"
)

// TestMalformedFramesFromTheWire writes garbage into the miniport's
// hardware from the wire namespace, through an AF_PACKET socket bound to
// the hardware TAP's kernel side, while ping runs through the miniport:
//
//   - runts (1..13 bytes). Linux refuses to send an Ethernet frame under
//     14 bytes (AF_PACKET: EINVAL, checked here), so the wire cannot make
//     one. The test makes the hardware truncate instead, as a faulty NIC
//     would: a classic BPF socket filter on the TAP queue (TUNATTACHFILTER
//     on a pidfd_getfd copy of tapminiport's queue fd) trims every frame
//     that carries the test's mark (SO_MARK 0x7e57_00NN) to NN bytes before
//     the TAP hands it to the reader; frames without the mark pass whole;
//   - frames over the MTU, 1600 and 9000 bytes (the wire side's MTU raised
//     to 9000 first so the kernel lets them out);
//   - garbage of valid sizes to foreign unicast MACs (the packet filter's
//     job);
//   - frames to the NIC's MAC with a random payload (they go up; the host
//     stack drops them).
//
// Then: the process still runs, ping got every reply before, during and
// after, and after SIGTERM the report counts at least the runts, oversize
// frames and foreign frames sent, exit 0, the verifier is clean.
func TestMalformedFramesFromTheWire(t *testing.T) {
	r := start(t)
	nicMAC, err := tapdev.LinkMAC(r.host, r.nic)
	if err != nil {
		t.Fatal(err)
	}
	if tx, rx, out := ping(t, r.host, "-c", "5", "-i", "0.2", "-W", "2", "198.18.0.2"); rx != tx {
		t.Fatalf("before the garbage: %d of %d replies:\n%s", rx, tx, out)
	}
	mustIn(t, r.wire, 5*time.Second, "ip", "link", "set", r.hw, "mtu", "9000")
	if err := truncateMarkedFrames(r.cmd.Process.Pid, r.hw); err != nil {
		t.Fatalf("make the hardware TAP truncate marked frames: %v", err)
	}
	sock, err := packetSocket(r.wire, r.hw)
	if err != nil {
		t.Fatalf("AF_PACKET socket on %s in %s: %v", r.hw, r.wire, err)
	}
	closeSock := sync.OnceFunc(func() { unix.Close(sock) })
	defer closeSock()

	// The kernel's own refusal of runts, for the record.
	if err := sendFrame(sock, 0, make([]byte, 13)); !errors.Is(err, unix.EINVAL) {
		t.Logf("a 13-byte write on AF_PACKET: %v (Linux has said EINVAL: shorter than the 14-byte header)", err)
	}

	// ping runs through the whole barrage (3s of it at 10/s).
	type pingResult struct {
		out string
		err error
	}
	during := make(chan pingResult, 1)
	go func() {
		out, err := in(t, r.host, 30*time.Second, "ping", "-c", "40", "-i", "0.1", "-W", "2", "198.18.0.2")
		during <- pingResult{out, err}
	}()

	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0x7e57))
	t.Logf("random frames from seed %d", seed)
	var runts, oversize, foreign, toNIC int
	send := func(what *int, mark uint32, f []byte) {
		t.Helper()
		switch err := sendFrame(sock, mark, f); {
		case err == nil:
			*what++
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.ENOBUFS):
			// not sent, not counted
		default:
			t.Fatalf("send a %d-byte frame (mark %#x): %v", len(f), mark, err)
		}
	}
	for round := 0; round < 15; round++ {
		for n := 1; n <= 13; n++ {
			f := ethFrame(nicMAC, 60, rng)
			send(&runts, runtMark|uint32(n), f)
		}
		send(&oversize, 0, ethFrame(nicMAC, 1600, rng))
		send(&oversize, 0, ethFrame(nicMAC, 9000, rng))
		for i := 0; i < 10; i++ {
			dst := make(net.HardwareAddr, 6)
			for bytesEqual(dst, nicMAC) || dst[0]&1 == 1 {
				for j := range dst {
					dst[j] = byte(rng.Uint32())
				}
				dst[0] &^= 1 // unicast: multicast and broadcast are the filter's other cases
			}
			f := make([]byte, 14+rng.IntN(1501))
			for j := range f {
				f[j] = byte(rng.Uint32())
			}
			copy(f, dst)
			send(&foreign, 0, f)
		}
		send(&toNIC, 0, ethFrame(nicMAC, 60+rng.IntN(1455), rng))
		time.Sleep(200 * time.Millisecond)
	}
	closeSock() // before SIGTERM: the socket holds the wire namespace
	t.Logf("sent %d runts (trimmed by the hardware), %d oversize, %d to foreign MACs, %d to the NIC with random payload", runts, oversize, foreign, toNIC)

	var res pingResult
	select {
	case res = <-during:
	case <-time.After(40 * time.Second):
		t.Fatal("ping during the garbage did not end")
	}
	if m := pingRe.FindStringSubmatch(res.out); m == nil || m[1] != m[2] {
		t.Errorf("during the garbage: not every reply (%v):\n%s", res.err, res.out)
	}
	select {
	case <-r.exited:
		t.Fatalf("tapminiport exited %d under the garbage:\n%s", r.exitCode, r.stderr)
	default:
	}
	if tx, rx, out := ping(t, r.host, "-c", "5", "-i", "0.2", "-W", "2", "198.18.0.2"); rx != tx {
		t.Errorf("after the garbage: %d of %d replies:\n%s", rx, tx, out)
	}

	code := r.stop(syscall.SIGTERM, 30*time.Second)
	rep := r.stdout.String()
	if code != 0 {
		t.Fatalf("exit code %d, want 0:\n%s", code, rep)
	}
	gotRunt := reportInt(t, rep, `receive drops:.* runt=(\d+)`)
	gotOversize := reportInt(t, rep, `receive drops:.* oversize=(\d+)`)
	gotFiltered := reportInt(t, rep, `receive drops:.* filtered=(\d+)`)
	t.Logf("report: runt=%d oversize=%d filtered=%d", gotRunt, gotOversize, gotFiltered)
	if runts == 0 || oversize == 0 || foreign == 0 {
		t.Errorf("the kernel took %d runts, %d oversize, %d foreign frames: nothing to test", runts, oversize, foreign)
	}
	if gotRunt < int64(runts) {
		t.Errorf("report counts %d runts, %d sent", gotRunt, runts)
	}
	if gotOversize < int64(oversize) {
		t.Errorf("report counts %d oversize frames, %d sent", gotOversize, oversize)
	}
	if gotFiltered < int64(foreign) {
		t.Errorf("report counts %d filtered frames, %d sent to foreign MACs", gotFiltered, foreign)
	}
	if !strings.Contains(rep, "verifier: clean") || !strings.Contains(rep, "left after unload: nothing") {
		t.Errorf("halt after the garbage not clean:\n%s", rep)
	}
	r.assertGone()
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

// ethFrame is a frame of size bytes to dst from a local MAC, ethertype
// 0x88b5 (IEEE local experimental: no stack parses it), random payload.
func ethFrame(dst net.HardwareAddr, size int, rng *rand.Rand) []byte {
	f := make([]byte, size)
	for i := range f {
		f[i] = byte(rng.Uint32())
	}
	copy(f, dst)
	copy(f[6:], []byte{0x02, 0x7e, 0x57, 0x00, 0x00, 0x01})
	f[12], f[13] = 0x88, 0xb5
	return f
}

// runtMark is the SO_MARK prefix of a frame the hardware trims: mark
// runtMark|n leaves n bytes.
const runtMark = 0x7e570000

// truncateMarkedFrames attaches a classic BPF socket filter to the TAP
// queue tapminiport (pid) reads hardware TAP tap from: a frame whose mark
// is runtMark|n is trimmed to n bytes (the TAP runs its queue's filter as
// it hands a frame to the reader, and a filter's return value is the
// length to keep); any other frame passes whole. The fd is borrowed with
// pidfd_getfd for the ioctl and closed at once (a TAP lives as long as a
// queue fd is open, so keeping it would keep the TAP after tapminiport
// closes its own).
func truncateMarkedFrames(pid int, tap string) error {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	target := -1
	for _, e := range ents {
		b, _ := os.ReadFile(dir + "/" + e.Name())
		if strings.Contains(string(b), "iff:\t"+tap+"\n") {
			fmt.Sscan(e.Name(), &target)
			break
		}
	}
	if target < 0 {
		return fmt.Errorf("no fd of TAP %s in process %d", tap, pid)
	}
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pfd)
	fd, err := unix.PidfdGetfd(pfd, target, 0)
	if err != nil {
		return fmt.Errorf("pidfd_getfd %d fd %d: %w", pid, target, err)
	}
	defer unix.Close(fd)
	const (
		ldMark  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		skfMark = 0xfffff000 + 20 // SKF_AD_OFF + SKF_AD_MARK
	)
	prog := []unix.SockFilter{
		{Code: ldMark, K: skfMark},                                      // A = skb->mark
		{Code: unix.BPF_MISC | unix.BPF_TAX},                            // X = A
		{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: 0xffff0000}, // A &= 0xffff0000
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 3, K: runtMark},
		{Code: unix.BPF_MISC | unix.BPF_TXA},                        // A = X
		{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: 0xffff}, // A &= 0xffff
		{Code: unix.BPF_RET | unix.BPF_A},                           // keep A bytes
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},            // keep it all
	}
	fp := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNATTACHFILTER, uintptr(unsafe.Pointer(&fp))); errno != 0 {
		return fmt.Errorf("TUNATTACHFILTER on %s: %w", tap, errno)
	}
	runtime.KeepAlive(prog)
	return nil
}

// packetSocket opens a non-blocking AF_PACKET raw socket in namespace ns,
// bound to link dev there, for sending only (protocol 0: it receives
// nothing). It is made on a throwaway thread that enters ns and is never
// unlocked (so the runtime discards it); the socket stays in ns.
func packetSocket(ns, dev string) (int, error) {
	type result struct {
		fd  int
		err error
	}
	c := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: the thread dies with this goroutine
		h, err := netns.GetFromName(ns)
		if err != nil {
			c <- result{-1, err}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			c <- result{-1, err}
			return
		}
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			c <- result{-1, err}
			return
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			c <- result{-1, err}
			return
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			c <- result{-1, err}
			return
		}
		c <- result{fd, nil}
	}()
	r := <-c
	return r.fd, r.err
}

// sendFrame writes f as one frame with SO_MARK mark.
func sendFrame(fd int, mark uint32, f []byte) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
		return fmt.Errorf("SO_MARK: %w", err)
	}
	n, err := unix.Write(fd, f)
	if err == nil && n != len(f) {
		return fmt.Errorf("short write %d of %d", n, len(f))
	}
	return err
}
