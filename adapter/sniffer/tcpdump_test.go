package sniffer

import (
	"bytes"
	"context"
	"encoding/binary"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/tapdev"
)

// checksum is the Internet checksum (RFC 1071) of b.
func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// icmpEcho builds an Ethernet + IPv4 + ICMP echo frame (request when
// request, else reply) with correct checksums and a 32-byte payload.
func icmpEcho(srcMAC, dstMAC []byte, srcIP, dstIP [4]byte, request bool, id, seq uint16) []byte {
	const payload = 32
	f := make([]byte, 14+20+8+payload)
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:14], 0x0800) // IPv4

	ip := f[14:34]
	ip[0] = 0x45 // version 4, 20-byte header
	binary.BigEndian.PutUint16(ip[2:4], uint16(20+8+payload))
	binary.BigEndian.PutUint16(ip[4:6], seq) // identification
	binary.BigEndian.PutUint16(ip[6:8], 0x4000)
	ip[8] = 64 // TTL
	ip[9] = 1  // ICMP
	copy(ip[12:16], srcIP[:])
	copy(ip[16:20], dstIP[:])
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip))

	icmp := f[34:]
	if request {
		icmp[0] = 8
	}
	binary.BigEndian.PutUint16(icmp[4:6], id)
	binary.BigEndian.PutUint16(icmp[6:8], seq)
	for i := 8; i < len(icmp); i++ {
		icmp[i] = byte(i)
	}
	binary.BigEndian.PutUint16(icmp[2:4], checksum(icmp))
	return f
}

// A ping through the wrapped device, both ways, read back by the real
// tcpdump.
func TestTcpdumpReadsTheCapture(t *testing.T) {
	tapdev.RequireTool(t, "tcpdump")
	r := newRig(t, 0)
	hostMAC := []byte{0x02, 0x54, 0x4d, 0, 0, 0x01}
	wireMAC := []byte{0x02, 0x54, 0x4d, 0, 0, 0x02}
	host, wire := [4]byte{198, 18, 0, 1}, [4]byte{198, 18, 0, 2} // benchmarking range
	for seq := uint16(1); seq <= 2; seq++ {
		req := icmpEcho(hostMAC, wireMAC, host, wire, true, 0x1234, seq)
		writeAll(t, r.dev, req) // host → wire
		if got := readAll(t, r.peer, 1); !bytes.Equal(got[0], req) {
			t.Fatal("the wire got a different request")
		}
		writeAll(t, r.peer, icmpEcho(wireMAC, hostMAC, wire, host, false, 0x1234, seq)) // wire → host
		readAll(t, r.dev, 1)
	}
	if err := r.w.Close(); err != nil {
		t.Fatal(err)
	}

	for _, verbose := range []bool{false, true} {
		args := []string{"-r", r.path, "-nn"}
		if verbose {
			args = append(args, "-v") // -v makes tcpdump check the checksums
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, "tcpdump", args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		cancel()
		if err != nil {
			t.Fatalf("tcpdump %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
		}
		text := string(out)
		t.Logf("tcpdump %s:\n%s%s", strings.Join(args, " "), stderr.Bytes(), text)
		if !strings.Contains(stderr.String(), "link-type EN10MB (Ethernet)") {
			t.Errorf("tcpdump did not see an Ethernet capture: %s", stderr.Bytes())
		}
		lines := strings.Split(strings.TrimSpace(text), "\n")
		if !verbose {
			want := []string{
				"IP 198.18.0.1 > 198.18.0.2: ICMP echo request, id 4660, seq 1, length 40",
				"IP 198.18.0.2 > 198.18.0.1: ICMP echo reply, id 4660, seq 1, length 40",
				"IP 198.18.0.1 > 198.18.0.2: ICMP echo request, id 4660, seq 2, length 40",
				"IP 198.18.0.2 > 198.18.0.1: ICMP echo reply, id 4660, seq 2, length 40",
			}
			if len(lines) != len(want) {
				t.Fatalf("tcpdump printed %d lines; want %d", len(lines), len(want))
			}
			for i, w := range want {
				if !strings.Contains(lines[i], w) {
					t.Errorf("line %d: %q; want it to contain %q", i+1, lines[i], w)
				}
			}
		} else {
			for _, bad := range []string{"bad cksum", "wrong", "truncated"} {
				if strings.Contains(text, bad) || strings.Contains(stderr.String(), bad) {
					t.Errorf("tcpdump -v says %q about the capture", bad)
				}
			}
		}
	}
}
