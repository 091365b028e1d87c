package ndisshim

import (
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Tag is a 4-character pool tag, as in NdisAllocateMemoryWithTagPriority.
type Tag [4]byte

// MakeTag turns a 4-character string into a Tag; it panics on any other
// length, since tags are constants written in the source.
func MakeTag(s string) Tag {
	if len(s) != 4 {
		panic(fmt.Sprintf("ndisshim: tag %q is not 4 characters", s))
	}
	var t Tag
	copy(t[:], s)
	return t
}

func (t Tag) String() string { return string(t[:]) }

type taggedAlloc struct {
	tag   Tag
	size  int
	where string
	at    time.Time
}

// AllocateTagged returns size zeroed bytes charged to tag
// (NdisAllocateMemoryWithTagPriority). Free them with FreeTagged.
func (r *Resources) AllocateTagged(size int, tag Tag) ([]byte, error) {
	if size <= 0 {
		return nil, fmt.Errorf("ndisshim: tagged allocation of %d bytes (tag %s): size must be positive", size, tag)
	}
	if err := r.live("AllocateTagged"); err != nil {
		return nil, err
	}
	b := make([]byte, size)
	r.mu.Lock()
	r.tagged[&b[0]] = taggedAlloc{tag: tag, size: size, where: callerSite(1), at: time.Now()}
	r.mu.Unlock()
	return b, nil
}

// FreeTagged releases memory from AllocateTagged (NdisFreeMemory). Freeing
// anything else, or twice, is a verifier finding.
func (r *Resources) FreeTagged(b []byte) {
	if len(b) == 0 {
		r.v.Record(Finding{Kind: FindBadFree, Object: "tagged memory", Where: callerSite(1), Detail: "empty slice"})
		return
	}
	r.mu.Lock()
	_, ok := r.tagged[&b[0]]
	delete(r.tagged, &b[0])
	r.mu.Unlock()
	if !ok {
		r.v.Record(Finding{Kind: FindBadFree, Object: fmt.Sprintf("tagged memory %p", &b[0]), Where: callerSite(1), Detail: "not allocated here or freed twice"})
	}
}

// SharedMemory is a page-aligned region mapped with mmap
// (NdisMAllocateSharedMemory). After Free the pages are unmapped, so a use
// after free faults instead of corrupting another allocation.
type SharedMemory struct {
	Bytes []byte // the usable region, len == the size asked for
	mem   []byte // the whole mapping
	owner *Resources
	where string
	at    time.Time
	freed bool
}

// AllocateSharedMemory maps size bytes of anonymous, zeroed, page-aligned
// memory (NdisMAllocateSharedMemory).
func (r *Resources) AllocateSharedMemory(size int) (*SharedMemory, error) {
	if size <= 0 {
		return nil, fmt.Errorf("ndisshim: shared memory of %d bytes: size must be positive", size)
	}
	if err := r.live("AllocateSharedMemory"); err != nil {
		return nil, err
	}
	page := unix.Getpagesize()
	n := (size + page - 1) / page * page
	mem, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("ndisshim: mmap %d bytes of shared memory: %w", n, err)
	}
	sm := &SharedMemory{Bytes: mem[:size:size], mem: mem, owner: r, where: callerSite(1), at: time.Now()}
	r.mu.Lock()
	r.shared[sm] = struct{}{}
	r.mu.Unlock()
	return sm, nil
}

// Free unmaps the region (NdisMFreeSharedMemory). The caller must be sure
// nothing still points into it: a later access faults.
func (sm *SharedMemory) Free() error {
	r := sm.owner
	r.mu.Lock()
	_, ok := r.shared[sm]
	delete(r.shared, sm)
	r.mu.Unlock()
	if !ok || sm.freed {
		r.v.Record(Finding{Kind: FindBadFree, Object: fmt.Sprintf("shared memory %p", unsafe.SliceData(sm.mem)), Where: callerSite(1), Detail: "freed twice"})
		return fmt.Errorf("ndisshim: shared memory at %p freed twice", unsafe.SliceData(sm.mem))
	}
	sm.freed = true
	if err := unix.Munmap(sm.mem); err != nil {
		return fmt.Errorf("ndisshim: munmap shared memory: %w", err)
	}
	return nil
}
