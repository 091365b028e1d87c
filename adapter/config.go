package adapter

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
	"github.com/tapminiport/tapminiport/tapdev"
)

// Device is the hardware seam under the miniport: a frame-oriented fd
// with batch I/O and an interrupt line. A *tapdev.Dev (a TAP queue, or one
// end of a socketpair in unit tests) satisfies it.
type Device = tapdev.FrameDevice

// Opener opens queue `queue` of the hardware by name (0 first, the one
// that may create it) and says whether it created it. With Config.Queues
// above 1 every queue is one fd of a multi-queue TAP.
type Opener func(name string, queue int) (dev Device, created bool, err error)

// Config is the adapter's blueprint: the registry keywords of a real
// driver. It is pure data; Validate makes no syscalls. InitializeEx turns
// it into the live adapter.
type Config struct {
	HardwareName string           // the hardware TAP, e.g. "tmhw0"
	MTU          int              // the NIC's MTU (*JumboPacket), 68..9000
	MAC          net.HardwareAddr // the NIC's permanent address; nil: a random local one
	Bridge       string           // enslave the hardware TAP to this bridge (a NIC on a real LAN)
	RxBuffers    int              // receive blocks (*ReceiveBuffers)
	Batch        int              // frames per indication at most
	// Queues is the number of receive queues (RSS): one hardware queue (a
	// multi-queue TAP's fd), one interrupt and one DPC goroutine each, all
	// filling one receive pool. 0 means 1.
	Queues int
	// Moderation is the receive DPC's interrupt moderation (off: zero).
	Moderation ndisshim.Moderation
	// PollOnSend: a small send (at most 2 frames of at most 256 bytes)
	// runs the receive DPC of its queue once on the sender's goroutine
	// after it is written, when that DPC is idle: the reply to a ping
	// goes up without waiting for the interrupt goroutine to wake.
	PollOnSend   bool
	LowWater     int           // indicate with RESOURCES when this few blocks are left (0: RxBuffers/8)
	StatsPeriod  time.Duration // the statistics timer's period (0: 1s)
	LinkSpeedBps uint64        // reported link speed (0: 10 Gbit/s)
	// VnetHdr: every frame on the device carries a virtio-net header (a TAP
	// opened with IFF_VNET_HDR and TUNSETOFFLOAD, see OpenTAPOffload). The
	// miniport maps it to and from NBL checksum and large-send information,
	// and receives into 64 KiB buffers so a large send crosses as one NBL.
	VnetHdr bool

	// Open opens the hardware (default: a TAP through tapdev, created when
	// missing). Unit tests put a socketpair here.
	Open Opener
	// Configure sets the hardware link up (MTU, up, bridge); nil skips it
	// (unit tests). The default for a TAP is set by Defaults.
	Configure func(name string, mtu int, bridge string) error
	// Unconfigure puts the link down on halt or shutdown; nil skips it.
	Unconfigure func(name string) error
	// FailAt makes InitializeEx fail at the named step (see InitSteps), to
	// test that a failing initialize undoes its partial work.
	FailAt string
	Log    *slog.Logger
}

// InitSteps are InitializeEx's steps in order; Config.FailAt names one.
var InitSteps = []string{"context", "register", "open", "configure", "rxpool", "interrupt", "timer"}

// Errors of Validate name the field.
var errConfig = errors.New("invalid adapter configuration")

// Validate checks the blueprint; it names the bad field.
func (c Config) Validate() error {
	switch {
	case c.HardwareName == "" || len(c.HardwareName) > 15:
		return fmt.Errorf("%w: hardware name %q must be 1..15 characters", errConfig, c.HardwareName)
	case c.MTU < 68 || c.MTU > 9000:
		return fmt.Errorf("%w: MTU %d out of range 68..9000", errConfig, c.MTU)
	case c.MAC != nil && (len(c.MAC) != 6 || c.MAC[0]&1 == 1):
		return fmt.Errorf("%w: MAC %s must be a 6-byte unicast address", errConfig, c.MAC)
	case c.RxBuffers < 2 || c.RxBuffers > 1<<20:
		return fmt.Errorf("%w: rx buffers %d out of range 2..1048576", errConfig, c.RxBuffers)
	case c.Batch < 1 || c.Batch > 1024:
		return fmt.Errorf("%w: batch %d out of range 1..1024", errConfig, c.Batch)
	case c.Queues < 0 || c.Queues > MaxQueues:
		return fmt.Errorf("%w: queues %d out of range 1..%d", errConfig, c.Queues, MaxQueues)
	case c.LowWater < 0 || c.LowWater >= c.RxBuffers:
		return fmt.Errorf("%w: low water %d must be below rx buffers %d", errConfig, c.LowWater, c.RxBuffers)
	case c.FailAt != "" && !contains(InitSteps, c.FailAt):
		return fmt.Errorf("%w: fail-at step %q is not one of %v", errConfig, c.FailAt, InitSteps)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// MaxQueues is the most receive queues a hardware TAP gets.
const MaxQueues = 16

// maxFrame is the largest Ethernet frame the NIC accepts: MTU plus the
// Ethernet header and one VLAN tag.
func (c Config) maxFrame() int { return c.MTU + 14 + 4 }
