package ndisshim

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Dump is a read-only picture of one adapter at one moment, for an operator
// (tapminiport prints it on SIGUSR1), in the spirit of !ndiskd.miniport: the
// state, who holds which NBLs and for how long, every timer, interrupt, NBL
// pool and memory allocation the adapter and its open bindings still have,
// and what the verifier has found so far.
//
// Taking it changes nothing. It walks the NBL ledger as HeldReport does and
// takes each resource lock briefly to copy what it reads; it never waits for
// a transition, a timer handler or the data path, so it can be taken while
// traffic flows or while pause and halt wait.
type Dump struct {
	At       time.Time
	Adapter  string
	State    State
	Removed  bool // surprise-removed
	Shutdown bool // ShutdownEx was called
	Stats    Stats
	Held     HeldReport  // who holds NBLs now and the oldest of each
	Bindings []string    // open bindings, in the order they were opened
	Owners   []OwnerDump // the adapter's own resources, then each open binding's
	Findings []Finding   // the verifier's findings so far (the whole driver's)
}

// OwnerDump is what one adapter or binding has allocated through the shim now.
type OwnerDump struct {
	Owner        string // "adapter tmhw0", "binding hoststack"
	Timers       []TimerDump
	Interrupts   []InterruptDump
	Pools        []PoolDump
	Tagged       []TaggedDump // by tag
	SharedBlocks int
	SharedBytes  int
	Ports        []PortNumber
	Devices      []string
}

// TimerDump is one timer object.
type TimerDump struct {
	Name    string
	Armed   bool
	Period  time.Duration // 0: one-shot
	Fired   uint64        // how many times its handler started
	Running bool          // its handler runs now
	Where   string        // where it was allocated
	Age     time.Duration // since it was allocated
}

// InterruptDump is one registered interrupt.
type InterruptDump struct {
	Name  string
	Where string
	Age   time.Duration
	Ended bool  // the loop ended on its own (the device failed)
	Err   error // why, when Ended
}

// PoolDump is one NBL pool.
type PoolDump struct {
	Name  string // `NBL pool "TMrx" of adapter tmhw0`
	Size  int
	InUse int // NBLs allocated from it now (by its owner, or indicated, or sent)
	Where string
}

// TaggedDump sums the tagged allocations of one tag.
type TaggedDump struct {
	Tag   Tag
	Count int
	Bytes int
}

// Dump takes the adapter's picture. It is for diagnostics, not the hot path.
func (a *Adapter) Dump() Dump {
	now := time.Now()
	d := Dump{
		At: now, Adapter: a.name, State: a.State(), Removed: a.removed.Load(), Shutdown: a.shutdown.Load(),
		Stats: a.Stats(), Held: a.HeldReport("now", now),
	}
	d.Owners = append(d.Owners, a.Resources.dump(now))
	for _, b := range *a.bindings.Load() {
		d.Bindings = append(d.Bindings, b.name)
		d.Owners = append(d.Owners, b.Resources.dump(now))
	}
	d.Findings = a.v.Findings()
	return d
}

// dump copies what r has allocated; each object is read under its own lock
// after r's lock is released, so no lock is held inside another.
func (r *Resources) dump(now time.Time) OwnerDump {
	r.mu.Lock()
	timers := make([]*Timer, 0, len(r.timers))
	for t := range r.timers {
		timers = append(timers, t)
	}
	intrs := make([]*Interrupt, 0, len(r.interrupts))
	for i := range r.interrupts {
		intrs = append(intrs, i)
	}
	pools := make([]*NBLPool, 0, len(r.pools))
	for p := range r.pools {
		pools = append(pools, p)
	}
	od := OwnerDump{Owner: r.name}
	byTag := map[Tag]*TaggedDump{}
	for _, ta := range r.tagged {
		td := byTag[ta.tag]
		if td == nil {
			td = &TaggedDump{Tag: ta.tag}
			byTag[ta.tag] = td
		}
		td.Count++
		td.Bytes += ta.size
	}
	for s := range r.shared {
		od.SharedBlocks++
		od.SharedBytes += len(s.Bytes)
	}
	for n := range r.ports {
		od.Ports = append(od.Ports, n)
	}
	for dev := range r.devices {
		od.Devices = append(od.Devices, dev.Name)
	}
	r.mu.Unlock()

	for _, t := range timers {
		t.mu.Lock()
		od.Timers = append(od.Timers, TimerDump{Name: t.name, Armed: t.armed, Period: t.period, Fired: t.fired,
			Running: t.running > 0, Where: t.where, Age: now.Sub(t.at)})
		t.mu.Unlock()
	}
	for _, in := range intrs {
		id := InterruptDump{Name: in.name, Where: in.where, Age: now.Sub(in.at)}
		select {
		case <-in.done: // closed after err is written: reading it is safe
			id.Ended, id.Err = true, in.err
		default:
		}
		od.Interrupts = append(od.Interrupts, id)
	}
	for _, p := range pools {
		od.Pools = append(od.Pools, PoolDump{Name: p.String(), Size: p.Size(), InUse: p.InUse(), Where: p.where})
	}
	for _, td := range byTag {
		od.Tagged = append(od.Tagged, *td)
	}
	sort.Slice(od.Timers, func(i, j int) bool { return od.Timers[i].Name < od.Timers[j].Name })
	sort.Slice(od.Interrupts, func(i, j int) bool { return od.Interrupts[i].Name < od.Interrupts[j].Name })
	sort.Slice(od.Pools, func(i, j int) bool { return od.Pools[i].Name < od.Pools[j].Name })
	sort.Slice(od.Tagged, func(i, j int) bool { return od.Tagged[i].Tag.String() < od.Tagged[j].Tag.String() })
	sort.Slice(od.Ports, func(i, j int) bool { return od.Ports[i] < od.Ports[j] })
	sort.Strings(od.Devices)
	return od
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// String is the dump as indented text, one fact a line:
//
//	adapter tmhw0: state Running, removed no, shutdown no
//	  NBLs: 312 receive NBLs held by protocols now (peak 1024), 0 sends in flight, 0 drained during pause/halt
//	  held: 312 receive indications held by hoststack, oldest 201ms
//	  bindings: hoststack
//	  adapter tmhw0:
//	    timer "statistics": armed, period 1s, fired 12, allocated at miniport.go:190 12s ago
//	    interrupt "tmhw0 rx": running, registered at miniport.go:183 12s ago
//	    NBL pool "TMrx" of adapter tmhw0: 312 of 1024 in use, allocated at pool.go:160
//	    shared memory: 1 block(s), 2162688 bytes
//	    tagged memory: TMad 1 allocation(s), 4096 bytes
//	    devices: tmhw0
//	  binding hoststack:
//	    ...
//	  verifier: no findings so far
func (d Dump) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "adapter %s: state %s, removed %s, shutdown %s\n", d.Adapter, d.State, yesNo(d.Removed), yesNo(d.Shutdown))
	fmt.Fprintf(&b, "  NBLs: %d receive NBLs held by protocols now (peak %d), %d sends in flight, %d drained during pause/halt\n",
		d.Stats.HeldNow, d.Stats.PeakHeld, d.Stats.SendsNow, d.Stats.DrainedNBLs)
	fmt.Fprintf(&b, "  held: %s\n", d.Held.String())
	if len(d.Bindings) == 0 {
		b.WriteString("  bindings: none\n")
	} else {
		fmt.Fprintf(&b, "  bindings: %s\n", strings.Join(d.Bindings, ", "))
	}
	for _, o := range d.Owners {
		fmt.Fprintf(&b, "  %s:\n", o.Owner)
		empty := true
		for _, t := range o.Timers {
			empty = false
			st := "not armed"
			if t.Armed {
				st = "armed"
			}
			if t.Period > 0 {
				st += ", period " + t.Period.String()
			} else {
				st += ", one-shot"
			}
			if t.Running {
				st += ", handler running"
			}
			fmt.Fprintf(&b, "    timer %q: %s, fired %d, allocated at %s %s ago\n", t.Name, st, t.Fired, t.Where, t.Age.Round(time.Millisecond))
		}
		for _, i := range o.Interrupts {
			empty = false
			st := "running"
			if i.Ended {
				st = fmt.Sprintf("ended: %v", i.Err)
			}
			fmt.Fprintf(&b, "    interrupt %q: %s, registered at %s %s ago\n", i.Name, st, i.Where, i.Age.Round(time.Millisecond))
		}
		for _, p := range o.Pools {
			empty = false
			fmt.Fprintf(&b, "    %s: %d of %d in use, allocated at %s\n", p.Name, p.InUse, p.Size, p.Where)
		}
		if o.SharedBlocks > 0 {
			empty = false
			fmt.Fprintf(&b, "    shared memory: %d block(s), %d bytes\n", o.SharedBlocks, o.SharedBytes)
		}
		for _, t := range o.Tagged {
			empty = false
			fmt.Fprintf(&b, "    tagged memory: %s %d allocation(s), %d bytes\n", t.Tag, t.Count, t.Bytes)
		}
		if len(o.Ports) > 0 {
			empty = false
			ps := make([]string, len(o.Ports))
			for i, p := range o.Ports {
				ps[i] = fmt.Sprint(uint32(p))
			}
			fmt.Fprintf(&b, "    ports: %s\n", strings.Join(ps, ", "))
		}
		if len(o.Devices) > 0 {
			empty = false
			fmt.Fprintf(&b, "    devices: %s\n", strings.Join(o.Devices, ", "))
		}
		if empty {
			b.WriteString("    nothing allocated\n")
		}
	}
	if len(d.Findings) == 0 {
		b.WriteString("  verifier: no findings so far\n")
	} else {
		fmt.Fprintf(&b, "  verifier: %d finding(s) so far\n", len(d.Findings))
		for _, f := range d.Findings {
			fmt.Fprintf(&b, "    %s\n", f)
		}
	}
	return b.String()
}
