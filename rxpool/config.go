package rxpool

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/tapminiport/tapminiport/ndisshim"
)

// Limits and defaults of a Config.
const (
	CacheLine        = 64              // buffer sizes are rounded up to a multiple of this
	MinFrame         = 14              // an Ethernet header: the least room a buffer must leave after Headroom
	MaxBlocks        = 1 << 20         // Count at most
	MaxLargeBlocks   = 1 << 16         // LargeCount at most
	MaxBufferSize    = 1 << 20         // BufferSize and LargeSize at most
	MaxSlabBytes     = 1 << 34         // one slab (Count*BufferSize or LargeCount*LargeSize) at most, 16 GiB
	LargeFrame       = 65536           // the frame room of a large buffer when LargeSize is 0
	DefaultHolder    = "the stack"     // Config.Holder when empty
	DefaultReportDur = time.Second     // Config.ReportEvery when 0
	defaultName      = "rxpool"        // Config.Name when empty
	defaultTag       = "TMrx"          // Config.Tag when zero
	maxHolders       = 1 << holderBits // distinct holder names a pool remembers
)

// ErrConfig is wrapped by every error of Config.Validate.
var ErrConfig = errors.New("invalid receive pool configuration")

// Config is the blueprint of a Pool: pure data, checked by Validate without
// any system call; New makes the live pool from it.
type Config struct {
	Name       string // for reports, e.g. "tmhw0 rx" (default "rxpool")
	Count      int    // number of regular blocks, 1..MaxBlocks
	BufferSize int    // bytes per regular buffer (Headroom + the largest frame); rounded up to CacheLine
	Headroom   int    // bytes kept free before the frame in every buffer (room for a virtio-net header)
	LargeCount int    // number of blocks of the large class (0 = none)
	LargeSize  int    // bytes per large buffer (0: LargeFrame+Headroom); rounded up to CacheLine
	LowWater   int    // LowResources() is true when free regular blocks <= LowWater; 0 <= LowWater < Count

	// Holder names who holds an indicated block in reports, when
	// MarkIndicated does not say (default DefaultHolder).
	Holder string
	// Tag is the NBL pool's tag (default "TMrx").
	Tag ndisshim.Tag
	// ReportEvery is how often Drain reports what is still held while it
	// waits (default DefaultReportDur); the first report comes at once.
	ReportEvery time.Duration
	// Log receives ledger errors of Recycle and MarkIndicated (which
	// return nothing) and Drain's reports when no OnHeld function is set
	// (default slog.Default()).
	Log *slog.Logger
}

func (c Config) invalid(field string, format string, args ...any) error {
	return fmt.Errorf("rxpool %q: Config.%s: %s: %w", c.name(), field, fmt.Sprintf(format, args...), ErrConfig)
}

func (c Config) name() string {
	if c.Name == "" {
		return defaultName
	}
	return c.Name
}

// Validate checks c and returns an error naming the first field that is
// wrong. It makes no system call.
func (c Config) Validate() error {
	switch {
	case c.Count < 1 || c.Count > MaxBlocks:
		return c.invalid("Count", "%d is out of range 1..%d", c.Count, MaxBlocks)
	case c.Headroom < 0:
		return c.invalid("Headroom", "%d is negative", c.Headroom)
	case c.BufferSize > MaxBufferSize:
		return c.invalid("BufferSize", "%d is more than %d", c.BufferSize, MaxBufferSize)
	case c.BufferSize-c.Headroom < MinFrame:
		return c.invalid("BufferSize", "%d leaves %d bytes after Headroom %d; a frame needs at least %d",
			c.BufferSize, c.BufferSize-c.Headroom, c.Headroom, MinFrame)
	case int64(c.Count)*int64(roundUp(c.BufferSize)) > MaxSlabBytes:
		return c.invalid("BufferSize", "%d blocks of %d bytes make a slab larger than %d bytes", c.Count, roundUp(c.BufferSize), int64(MaxSlabBytes))
	case c.LargeCount < 0 || c.LargeCount > MaxLargeBlocks:
		return c.invalid("LargeCount", "%d is out of range 0..%d", c.LargeCount, MaxLargeBlocks)
	case c.LargeSize < 0:
		return c.invalid("LargeSize", "%d is negative", c.LargeSize)
	case c.LargeSize > MaxBufferSize:
		return c.invalid("LargeSize", "%d is more than %d", c.LargeSize, MaxBufferSize)
	case c.LargeCount > 0 && c.LargeSize > 0 && c.LargeSize-c.Headroom < MinFrame:
		return c.invalid("LargeSize", "%d leaves %d bytes after Headroom %d; a frame needs at least %d",
			c.LargeSize, c.LargeSize-c.Headroom, c.Headroom, MinFrame)
	case c.LargeCount > 0 && c.LargeSize == 0 && LargeFrame+c.Headroom > MaxBufferSize:
		return c.invalid("Headroom", "%d makes the default LargeSize more than %d", c.Headroom, MaxBufferSize)
	case int64(c.LargeCount)*int64(roundUp(c.largeSize())) > MaxSlabBytes:
		return c.invalid("LargeSize", "%d blocks of %d bytes make a slab larger than %d bytes", c.LargeCount, roundUp(c.largeSize()), int64(MaxSlabBytes))
	case c.LowWater < 0 || c.LowWater >= c.Count:
		return c.invalid("LowWater", "%d is out of range 0..Count-1 (%d)", c.LowWater, c.Count-1)
	case c.ReportEvery < 0:
		return c.invalid("ReportEvery", "%s is negative", c.ReportEvery)
	}
	return nil
}

func (c Config) largeSize() int {
	if c.LargeSize == 0 {
		return LargeFrame + c.Headroom
	}
	return c.LargeSize
}

func roundUp(n int) int { return (n + CacheLine - 1) / CacheLine * CacheLine }

// withDefaults fills the defaults and rounds the sizes; c must be valid.
func (c Config) withDefaults() Config {
	c.Name = c.name()
	c.BufferSize = roundUp(c.BufferSize)
	if c.LargeCount > 0 {
		c.LargeSize = roundUp(c.largeSize())
	} else {
		c.LargeSize = 0
	}
	if c.Holder == "" {
		c.Holder = DefaultHolder
	}
	if c.Tag == (ndisshim.Tag{}) {
		c.Tag = ndisshim.MakeTag(defaultTag)
	}
	if c.ReportEvery == 0 {
		c.ReportEvery = DefaultReportDur
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return c
}
