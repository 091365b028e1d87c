package main

// Crash leftovers: what a run killed with SIGKILL (or a crash) leaves, and
// what the next start does with it.
//
// What a killed run leaves (measured: start, ping, kill -9): its wire
// namespace, which is a bind mount under /run/netns and outlives the
// process, with only lo in it. The TAPs it created are gone: they are not
// persistent, so the kernel deletes them when the dying process's
// descriptors close (the hardware TAP from inside the wire namespace, the
// NIC TAP from --nic-netns). A TAP of the user's that the run attached to
// is persistent and stays where the run had moved it.
//
// The ownership mark. Right after creating something, a run writes an
// IFLA_IFALIAS on it:
//
//	tapminiport pid=1234 start=5678 pidns=4026531836 role=hw
//
// role=hw on the hardware TAP (cmd, after AddAdapter when the miniport
// created it; the alias survives the move into the wire namespace),
// role=nic on the NIC TAP (cmd, after Bind when the binding created it),
// role=wire on the lo link of the wire namespace (cmd, after
// CreateNetns), since a namespace has no alias of its own. The lo alias
// rather than a marker file under /run/tapminiport: the mark lives and
// dies with the namespace it is on. A file can outlive it (the namespace
// removed by hand with ip netns del, the name then reused by the user) and
// would then claim a namespace this program never created. An alias cannot
// say anything about an object it is not on.
//
// start is the owner's start time (clock ticks since boot, field 22 of
// /proc/PID/stat): a pid that is alive with another start time was reused
// by another process, and the owner is dead. It decides more exactly than
// /proc/PID/comm, which the check still reads to say who has the pid now.
// pidns is the owner's pid namespace: a pid from another one cannot be
// checked from here, so its owner counts as alive (refuse, never delete).
// An alias that does not parse completely is no mark: the thing is not
// ours.
//
// At start, before creating anything, the run looks at every name it is
// about to use and decides (decide, a pure function):
//
//	where                            exists  mark     owner   action
//	any                              no      -        -       none: create as usual
//	any                              yes     ours     alive   refuse, naming the pid and the flag
//	any                              yes     ours     dead    remove, log "removed leftover of killed run pid=N: ..."
//	wire namespace                   yes     none     -       refuse (not ours: never deleted)
//	TAP where it is opened (current) yes     none     -       attach (the user's TAP, as always)
//	NIC TAP in --nic-netns           yes     none     -       refuse (not ours; the run moves its NIC TAP there, it would collide)
//	hardware TAP in a leftover       yes     none     -       move it home to the current namespace before the
//	  wire namespace                                          namespace goes (a namespace takes its TAPs with it)
//
// Every refusal is decided before anything is removed: a start that
// refuses changes nothing.

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tapminiport/tapminiport/tapdev"
)

// markPrefix starts every ownership mark.
const markPrefix = "tapminiport "

// mark is an ownership mark: who created the thing.
type mark struct {
	pid   int
	start uint64 // the owner's start time, clock ticks since boot
	pidns uint64 // the owner's pid namespace (inode)
	role  string // hw, nic, wire
}

func (k mark) String() string {
	return fmt.Sprintf("%spid=%d start=%d pidns=%d role=%s", markPrefix, k.pid, k.start, k.pidns, k.role)
}

// parseMark reads an alias. ok is false unless it is a complete mark.
func parseMark(alias string) (k mark, ok bool) {
	rest, ok := strings.CutPrefix(alias, markPrefix)
	if !ok {
		return mark{}, false
	}
	const all = 1 | 2 | 4 | 8
	seen := 0
	for _, f := range strings.Fields(rest) {
		key, val, ok := strings.Cut(f, "=")
		if !ok {
			return mark{}, false
		}
		var err error
		switch key {
		case "pid":
			k.pid, err = strconv.Atoi(val)
			if err == nil && k.pid <= 0 {
				err = errors.New("not positive")
			}
			seen |= 1
		case "start":
			k.start, err = strconv.ParseUint(val, 10, 64)
			seen |= 2
		case "pidns":
			k.pidns, err = strconv.ParseUint(val, 10, 64)
			seen |= 4
		case "role":
			k.role = val
			seen |= 8
		}
		if err != nil {
			return mark{}, false
		}
	}
	return k, seen == all
}

// identity is a process as a mark names it.
type identity struct {
	pid          int
	start, pidns uint64
	comm         string
}

// procIdentity reads /proc/PID/{stat,ns/pid,comm}. A zombie (or a dying
// process) is an error: it holds nothing any more.
func procIdentity(pid int) (identity, error) {
	id := identity{pid: pid}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return id, err
	}
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return id, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 { // f[0] is field 3 (state), f[19] field 22 (starttime)
		return id, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	if f[0] == "Z" || f[0] == "X" || f[0] == "x" {
		return id, fmt.Errorf("pid %d: %w", pid, errZombie)
	}
	if id.start, err = strconv.ParseUint(f[19], 10, 64); err != nil {
		return id, fmt.Errorf("/proc/%d/stat: starttime: %w", pid, err)
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil {
		return id, err
	}
	if _, err := fmt.Sscanf(ns, "pid:[%d]", &id.pidns); err != nil {
		return id, fmt.Errorf("/proc/%d/ns/pid %q: %w", pid, ns, err)
	}
	c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	id.comm = strings.TrimSpace(string(c))
	return id, nil
}

// errZombie: the process has exited and holds nothing.
var errZombie = errors.New("a zombie")

// identify is procIdentity; a variable so that a test can make /proc
// refuse.
var identify = procIdentity

// ownerAlive says whether the mark's owner still runs, and why not; unsure
// when it could not be checked and counts as alive. self is this process:
// a pid of another pid namespace cannot be checked, so that owner counts
// as alive. A pid that exists but whose /proc entry cannot be read (a
// non-dumpable or privileged owner seen by a run with capabilities only,
// or /proc mounted with hidepid) also counts as alive: only a pid that is
// gone (kill(pid, 0) says ESRCH), a zombie, or one now started at another
// time is dead, so a running owner's TAP or namespace is never removed.
func ownerAlive(k mark, self identity) (alive bool, why string, unsure bool) {
	if k.pidns != self.pidns {
		return true, fmt.Sprintf("pid %d is in another pid namespace: cannot tell whether it still runs", k.pid), true
	}
	id, err := identify(k.pid)
	if errors.Is(err, errZombie) {
		return false, err.Error(), false
	}
	if err != nil {
		if unix.Kill(k.pid, 0) == unix.ESRCH {
			return false, fmt.Sprintf("pid %d: no such process", k.pid), false
		}
		return true, fmt.Sprintf("pid %d exists, but /proc will not say what it is (%v)", k.pid, err), true
	}
	if id.start != k.start {
		return false, fmt.Sprintf("pid %d now belongs to another process (%s, started at %d, not %d)", k.pid, id.comm, id.start, k.start), false
	}
	return true, fmt.Sprintf("pid %d (%s) is running", k.pid, id.comm), false
}

// where is one place a name of the run is looked for at start.
type where int

const (
	wireNetns    where = iota // the --wire-netns namespace
	tapHere                   // a TAP name in the namespace tapminiport opens it in (the current one)
	nicAway                   // the NIC TAP's name in --nic-netns
	hwInLeftover              // the hardware TAP's name inside a leftover wire namespace
)

// action is what start does with what it found.
type action int

const (
	actNone          action = iota // nothing there: create as usual
	actAttach                      // the user's TAP: attach to it, never delete it
	actRemove                      // a killed run's: remove it
	actMoveHome                    // the user's TAP in a leftover namespace: move it to the current one first
	actRefuseRunning               // a running tapminiport's
	actRefuseForeign               // not ours, and in the way
)

func (a action) String() string {
	return [...]string{"none", "attach", "remove", "move home", "refuse: running", "refuse: not ours"}[a]
}

// decide is the table in the file comment.
func decide(w where, exists, marked, ownerAlive bool) action {
	switch {
	case !exists:
		return actNone
	case marked && ownerAlive:
		return actRefuseRunning
	case marked:
		return actRemove
	case w == wireNetns || w == nicAway:
		return actRefuseForeign
	case w == hwInLeftover:
		return actMoveHome
	default:
		return actAttach
	}
}

// finding is one name looked at.
type finding struct {
	w        where
	what     string // "netns tmwire", "hardware TAP tmhw0 in the current namespace"
	flag     string // the flag that names it
	name, ns string // the thing, and the namespace it is in (a TAP)
	exists   bool
	marked   bool
	owner    mark
	why      string // the owner check's reason
	unsure   bool   // the owner could not be checked (another pid namespace, /proc refused): counted alive
	act      action
}

// look fills in f from the system: exists, mark, owner.
func (f *finding) look(self identity) error {
	var alias string
	if f.w == wireNetns {
		if f.exists = tapdev.NetnsExists(f.name); f.exists {
			alias, _ = tapdev.LinkAlias(f.name, "lo") // no lo, no mark: not ours
		}
	} else {
		var err error
		alias, err = tapdev.LinkAlias(f.ns, f.name)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return fmt.Errorf("check for a leftover %s: %w", f.what, err)
		default:
			f.exists = true
		}
	}
	alive := false
	if f.exists {
		f.owner, f.marked = parseMark(alias)
		if f.marked {
			alive, f.why, f.unsure = ownerAlive(f.owner, self)
		}
	}
	f.act = decide(f.w, f.exists, f.marked, alive)
	return nil
}

// refusal is the error for a refuse action.
func (f *finding) refusal() error {
	switch {
	case f.act == actRefuseRunning && f.unsure:
		return fmt.Errorf("%s belongs to a running tapminiport (pid %d, as far as can be told: %s): stop it, or choose another name with %s", f.what, f.owner.pid, f.why, f.flag)
	case f.act == actRefuseRunning:
		return fmt.Errorf("%s belongs to a running tapminiport (pid %d): stop it, or choose another name with %s", f.what, f.owner.pid, f.flag)
	case f.w == wireNetns:
		return foreignNetns(f.name)
	default: // nicAway
		return fmt.Errorf("%s exists and is not a tapminiport's (no mark in its alias): an existing NIC TAP is attached only in the current namespace (the run moves it into --nic-netns itself): move it out with `ip -n %s link set %s netns 1`, delete it, or choose another name with --nic-tap", f.what, f.ns, f.name)
	}
}

// foreignNetns refuses a wire namespace this program did not create.
func foreignNetns(name string) error {
	return fmt.Errorf("network namespace %q already exists (left by an earlier run?): it carries no tapminiport mark (the alias of its lo), so it is not ours to delete: remove it with `ip netns del %s`, or name another with --wire-netns", name, name)
}

// clearLeftovers looks at every name the run is about to use, refuses
// (changing nothing) when one is a running tapminiport's or in the way, and
// otherwise removes what a killed run left, saying what it found. It also
// learns this process's identity for the marks the run writes.
func (m *machine) clearLeftovers() error {
	o := m.o
	self, err := procIdentity(os.Getpid())
	if err != nil {
		return fmt.Errorf("read this process's identity for the ownership marks: %w", err)
	}
	m.self = self
	var wire, hwIn *finding
	var all []*finding
	add := func(f *finding) (*finding, error) {
		if err := f.look(self); err != nil {
			return nil, err
		}
		all = append(all, f)
		return f, nil
	}
	if !o.noWire {
		if wire, err = add(&finding{w: wireNetns, what: "network namespace " + o.wireNetns, flag: "--wire-netns", name: o.wireNetns}); err != nil {
			return err
		}
		if wire.act == actRemove {
			if hwIn, err = add(&finding{w: hwInLeftover, what: fmt.Sprintf("hardware TAP %s in leftover netns %s", o.hwTap, o.wireNetns), flag: "--hw-tap", name: o.hwTap, ns: o.wireNetns}); err != nil {
				return err
			}
		}
	}
	hw, err := add(&finding{w: tapHere, what: "hardware TAP " + o.hwTap + " in the current namespace", flag: "--hw-tap", name: o.hwTap})
	if err != nil {
		return err
	}
	if _, err := add(&finding{w: tapHere, what: "NIC TAP " + o.nicTap + " in the current namespace", flag: "--nic-tap", name: o.nicTap}); err != nil {
		return err
	}
	if o.nicNetns != "" && tapdev.NetnsExists(o.nicNetns) {
		if _, err := add(&finding{w: nicAway, what: fmt.Sprintf("NIC TAP %s in netns %s", o.nicTap, o.nicNetns), flag: "--nic-tap", name: o.nicTap, ns: o.nicNetns}); err != nil {
			return err
		}
	}
	// Refuse first: a start that refuses changes nothing.
	for _, f := range all {
		if f.act == actRefuseRunning || f.act == actRefuseForeign {
			return f.refusal()
		}
	}
	if hwIn != nil && hwIn.act == actMoveHome && hw.exists && hw.act != actRemove {
		return fmt.Errorf("%s is not a tapminiport's, and the current namespace has another %s: it cannot be moved home before the leftover namespace is removed: rename or delete one of them (`ip -n %s link del %s` deletes the one in the namespace)", hwIn.what, o.hwTap, o.wireNetns, o.hwTap)
	}
	// Then act: TAPs first, the namespace (after rescuing what is not ours) last.
	for _, f := range all {
		switch {
		case f.act == actAttach:
			m.log.Info("existing TAP carries no tapminiport mark: attaching to it (the user's, never deleted)", "tap", f.name, "flag", f.flag)
		case f.act == actRemove && f.w != wireNetns && f.w != hwInLeftover:
			if err := tapdev.DeleteLink(f.ns, f.name); err != nil {
				return fmt.Errorf("remove leftover %s of killed run pid=%d: %w", f.what, f.owner.pid, err)
			}
			m.log.Info(fmt.Sprintf("removed leftover of killed run pid=%d: %s", f.owner.pid, f.what), "mark", f.owner.String(), "owner", f.why)
		}
	}
	if wire == nil || wire.act != actRemove {
		return nil
	}
	found := "its hardware TAP " + o.hwTap + " had gone with the process"
	switch hwIn.act {
	case actMoveHome:
		if err := tapdev.MoveLink(o.hwTap, o.wireNetns, ""); err != nil {
			return fmt.Errorf("move %s home before removing the namespace: %w", hwIn.what, err)
		}
		m.log.Info("moved the user's TAP out of a killed run's leftover namespace (not ours to delete)", "tap", o.hwTap, "netns", o.wireNetns, "pid", wire.owner.pid)
		found = "the user's hardware TAP " + o.hwTap + ", moved home"
	case actRemove:
		found = fmt.Sprintf("its hardware TAP %s, still there (%s): removed with the namespace", o.hwTap, hwIn.owner)
	}
	if err := tapdev.DeleteNetns(o.wireNetns); err != nil {
		return fmt.Errorf("remove leftover network namespace %s of killed run pid=%d: %w", o.wireNetns, wire.owner.pid, err)
	}
	m.log.Info(fmt.Sprintf("removed leftover of killed run pid=%d: netns %s", wire.owner.pid, o.wireNetns), "found", found, "mark", wire.owner.String(), "owner", wire.why)
	return nil
}

// markAs is this run's ownership mark for what it creates in role.
func (m *machine) markAs(role string) string {
	return mark{pid: m.self.pid, start: m.self.start, pidns: m.self.pidns, role: role}.String()
}
