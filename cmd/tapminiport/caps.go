package main

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"unsafe"
)

// capget(2)/capset(2)'s header and data (linux/capability.h), version 3:
// two data structs, capabilities 0-31 and 32-63.
type capHeader struct {
	version uint32
	pid     int32
}

type capData struct{ effective, permitted, inheritable uint32 }

const capVersion3 = 0x20080522 // _LINUX_CAPABILITY_VERSION_3

// Capabilities the run keeps once its devices are set up.
const (
	capNetAdmin = 12 // CAP_NET_ADMIN: put links down, move them home, at halt
	capSysAdmin = 21 // CAP_SYS_ADMIN: setns into the run's namespaces, umount the wire namespace at halt
)

// dropCapabilities keeps CAP_NET_ADMIN, and CAP_SYS_ADMIN while the run
// works in network namespaces (netlink handles into a namespace need
// setns, and removing the wire namespace needs umount), and drops every
// other capability from the effective, permitted and inheritable sets of
// every thread. It returns what it kept.
//
// Capabilities are per thread, so the change goes through
// syscall.AllThreadsSyscall, which a binary that links cgo cannot use:
// such a binary keeps its privileges and says so (build with
// CGO_ENABLED=0, as the scripts do).
func dropCapabilities(namespaces bool) (kept []string, err error) {
	mask := uint32(1) << capNetAdmin
	kept = []string{"CAP_NET_ADMIN"}
	if namespaces {
		mask |= 1 << capSysAdmin
		kept = append(kept, "CAP_SYS_ADMIN")
	}
	hdr := capHeader{capVersion3, 0} // this thread (all threads, through AllThreadsSyscall)
	var data [2]capData
	data[0].effective, data[0].permitted = mask, mask
	_, _, e := syscall.AllThreadsSyscall(syscall.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	if e != 0 {
		if errors.Is(e, syscall.ENOTSUP) {
			return nil, fmt.Errorf("cannot drop capabilities: this binary links cgo (build it with CGO_ENABLED=0): %w", e)
		}
		return nil, fmt.Errorf("capset: %w", e)
	}
	return kept, nil
}

// missingCapabilities names what of CAP_NET_ADMIN (and CAP_SYS_ADMIN,
// for a run that works in namespaces) the process lacks in its effective
// set ("" when it has them, or when the kernel would not say). A start
// without them fails at its first TAP or namespace; preflight asks first,
// so the message is the same whatever /dev/net/tun's mode lets an
// unprivileged user open.
func missingCapabilities(namespaces bool) string {
	hdr := capHeader{capVersion3, 0} // this thread
	var data [2]capData
	if _, _, e := syscall.RawSyscall(syscall.SYS_CAPGET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return ""
	}
	var missing []string
	for _, c := range []struct {
		bit  uint
		name string
	}{{capNetAdmin, "CAP_NET_ADMIN"}, {capSysAdmin, "CAP_SYS_ADMIN"}} {
		if c.bit == capSysAdmin && !namespaces {
			continue
		}
		if data[0].effective&(1<<c.bit) == 0 {
			missing = append(missing, c.name)
		}
	}
	return strings.Join(missing, " and ")
}
