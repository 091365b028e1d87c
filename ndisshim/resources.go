package ndisshim

import (
	"fmt"
	"sort"
	"sync"
	"time"
)

// Resources tracks what one adapter (or one protocol binding) allocated
// through the shim, so that halt (or unbind) can check that everything was
// undone. Adapter and Binding embed it; its methods are the NDIS allocation
// calls (NdisAllocateTimerObject, NdisAllocateNetBufferListPool, ...).
type Resources struct {
	name string // "adapter tm0", "binding hoststack"
	v    *Verifier

	mu         sync.Mutex
	closed     bool // halted / unbound: further allocations are findings
	pools      map[*NBLPool]struct{}
	timers     map[*Timer]struct{}
	interrupts map[*Interrupt]struct{}
	tagged     map[*byte]taggedAlloc
	shared     map[*SharedMemory]struct{}
	ports      map[PortNumber]*port
	devices    map[*DeviceRegistration]struct{}
	nextPort   PortNumber
}

func (r *Resources) init(name string, v *Verifier) {
	r.name = name
	r.v = v
	r.pools = map[*NBLPool]struct{}{}
	r.timers = map[*Timer]struct{}{}
	r.interrupts = map[*Interrupt]struct{}{}
	r.tagged = map[*byte]taggedAlloc{}
	r.shared = map[*SharedMemory]struct{}{}
	r.ports = map[PortNumber]*port{}
	r.devices = map[*DeviceRegistration]struct{}{}
	r.nextPort = 1
}

// live returns an error (and records a finding) once the owner is halted.
func (r *Resources) live(op string) error {
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		r.v.Record(Finding{Kind: FindCallAfterHalt, Object: r.name, Where: callerSite(2), Detail: op})
		return fmt.Errorf("ndisshim: %s on %s after halt: %w", op, r.name, ErrHalted)
	}
	return nil
}

// leaks lists everything still allocated, oldest first, and marks r closed.
func (r *Resources) leaks() []Finding {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	var fs []Finding
	for p := range r.pools {
		fs = append(fs, Finding{Kind: FindLivePool, Object: p.String(), Where: p.where, Age: now.Sub(p.at),
			Detail: fmt.Sprintf("%d of %d NBLs allocated", p.InUse(), p.Size())})
		for _, f := range p.heldFindings(now) {
			fs = append(fs, f)
		}
	}
	for t := range r.timers {
		fs = append(fs, Finding{Kind: FindLiveTimer, Object: fmt.Sprintf("timer %q", t.name), Where: t.where, Age: now.Sub(t.at)})
	}
	for i := range r.interrupts {
		fs = append(fs, Finding{Kind: FindLiveInterrupt, Object: fmt.Sprintf("interrupt %q", i.name), Where: i.where, Age: now.Sub(i.at)})
	}
	for _, a := range r.tagged {
		fs = append(fs, Finding{Kind: FindTaggedMemory, Object: fmt.Sprintf("%d bytes tagged %s", a.size, a.tag), Where: a.where, Age: now.Sub(a.at)})
	}
	for s := range r.shared {
		fs = append(fs, Finding{Kind: FindSharedMemory, Object: fmt.Sprintf("%d bytes of shared memory", len(s.Bytes)), Where: s.where, Age: now.Sub(s.at)})
	}
	for n, p := range r.ports {
		fs = append(fs, Finding{Kind: FindPortNotFreed, Object: fmt.Sprintf("port %d", n), Where: p.where, Age: now.Sub(p.at)})
	}
	for d := range r.devices {
		fs = append(fs, Finding{Kind: FindDeviceRegistered, Object: fmt.Sprintf("device %q", d.Name), Where: d.where, Age: now.Sub(d.at)})
	}
	sort.SliceStable(fs, func(i, j int) bool { return fs[i].Age > fs[j].Age })
	return fs
}

// PortNumber is an NDIS_PORT_NUMBER; port 0 is the default port, always there.
type PortNumber uint32

// DefaultPort is NDIS_DEFAULT_PORT_NUMBER.
const DefaultPort PortNumber = 0

type port struct {
	active bool
	where  string
	at     time.Time
}

// AllocatePort allocates an NDIS port (NdisMAllocatePort).
func (r *Resources) AllocatePort() (PortNumber, error) {
	if err := r.live("AllocatePort"); err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.nextPort
	r.nextPort++
	r.ports[n] = &port{where: callerSite(1), at: time.Now()}
	return n, nil
}

// ActivatePort activates an allocated port (NdisMNetPnPEvent PortActivation).
func (r *Resources) ActivatePort(n PortNumber) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.ports[n]
	if !ok {
		return fmt.Errorf("ndisshim: activate port %d on %s: %w", n, r.name, ErrNoSuchPort)
	}
	p.active = true
	return nil
}

// FreePort frees a port (NdisMFreePort); an active port is deactivated first.
func (r *Resources) FreePort(n PortNumber) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.ports[n]; !ok {
		return fmt.Errorf("ndisshim: free port %d on %s: %w", n, r.name, ErrNoSuchPort)
	}
	delete(r.ports, n)
	return nil
}

// DeviceRegistration is the analog of NdisMRegisterIoPortRange: the
// miniport's claim on its hardware (here: the hardware TAP's name).
type DeviceRegistration struct {
	Name  string
	owner *Resources
	where string
	at    time.Time
}

// RegisterDevice claims the named device for this adapter.
func (r *Resources) RegisterDevice(name string) (*DeviceRegistration, error) {
	if err := r.live("RegisterDevice"); err != nil {
		return nil, err
	}
	d := &DeviceRegistration{Name: name, owner: r, where: callerSite(1), at: time.Now()}
	r.mu.Lock()
	r.devices[d] = struct{}{}
	r.mu.Unlock()
	return d, nil
}

// Release gives the device back (NdisMDeregisterIoPortRange).
func (d *DeviceRegistration) Release() {
	r := d.owner
	r.mu.Lock()
	_, ok := r.devices[d]
	delete(r.devices, d)
	r.mu.Unlock()
	if !ok {
		r.v.Record(Finding{Kind: FindBadFree, Object: fmt.Sprintf("device %q", d.Name), Where: callerSite(1), Detail: "released twice"})
	}
}
