package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestDecide is the table of leftovers.go: what start does with a name it
// finds, by where, whether it exists, whether it carries our mark, and
// whether the mark's owner still runs.
func TestDecide(t *testing.T) {
	for _, tc := range []struct {
		w                     where
		exists, marked, alive bool
		want                  action
	}{
		// Nothing there: create as usual, whatever the place.
		{wireNetns, false, false, false, actNone},
		{tapHere, false, false, false, actNone},
		{nicAway, false, false, false, actNone},
		{hwInLeftover, false, false, false, actNone},
		// Ours, owner dead: a killed run's leftover, removed.
		{wireNetns, true, true, false, actRemove},
		{tapHere, true, true, false, actRemove},
		{nicAway, true, true, false, actRemove},
		{hwInLeftover, true, true, false, actRemove},
		// Ours, owner alive: a running tapminiport's, refused.
		{wireNetns, true, true, true, actRefuseRunning},
		{tapHere, true, true, true, actRefuseRunning},
		{nicAway, true, true, true, actRefuseRunning},
		{hwInLeftover, true, true, true, actRefuseRunning},
		// Not ours: never deleted.
		{wireNetns, true, false, false, actRefuseForeign},
		{tapHere, true, false, false, actAttach},
		{nicAway, true, false, false, actRefuseForeign},
		{hwInLeftover, true, false, false, actMoveHome},
		// Without a mark there is no owner to ask: alive changes nothing.
		{wireNetns, true, false, true, actRefuseForeign},
		{tapHere, true, false, true, actAttach},
		{nicAway, true, false, true, actRefuseForeign},
		{hwInLeftover, true, false, true, actMoveHome},
	} {
		if got := decide(tc.w, tc.exists, tc.marked, tc.alive); got != tc.want {
			t.Errorf("decide(where %d, exists %v, marked %v, alive %v) = %s, want %s", tc.w, tc.exists, tc.marked, tc.alive, got, tc.want)
		}
	}
}

func TestMarkRoundTrip(t *testing.T) {
	k := mark{pid: 1234, start: 5678, pidns: 4026531836, role: "wire"}
	s := k.String()
	if s != "tapminiport pid=1234 start=5678 pidns=4026531836 role=wire" {
		t.Errorf("mark text %q", s)
	}
	if got, ok := parseMark(s); !ok || got != k {
		t.Errorf("parseMark(%q) = %+v, %v", s, got, ok)
	}
}

// TestParseMarkRefusesWhatIsNotAMark: an alias the user wrote, or a mark
// cut short, is no mark (the thing is then not ours).
func TestParseMarkRefusesWhatIsNotAMark(t *testing.T) {
	for _, alias := range []string{
		"",
		"uplink to the lab",
		"tapminiport",
		"tapminiport pid=1234 role=hw", // no start, no pidns
		"tapminiport pid=0 start=1 pidns=2 role=hw",              // pid 0
		"tapminiport pid=-5 start=1 pidns=2 role=hw",             // negative
		"tapminiport pid=12x start=1 pidns=2 role=hw",            // not a number
		"tapminiport pid=12 start=1 pidns=2 role=hw garbage",     // a field without '='
		"Tapminiport pid=12 start=1 pidns=2 role=hw",             // another prefix
		"my tapminiport pid=12 start=1 pidns=2 role=hw",          // not at the start
		"tapminiport pid=12 start=abc pidns=2 role=hw",           // bad start
		"tapminiport pid=12 start=1 pidns=4026531836x role=wire", // bad pidns
	} {
		if k, ok := parseMark(alias); ok {
			t.Errorf("parseMark(%q) = %+v, a mark", alias, k)
		}
	}
	// Unknown keys are skipped (a later version may add some).
	if _, ok := parseMark("tapminiport pid=12 start=1 pidns=2 role=hw queue=3"); !ok {
		t.Error("an extra key spoils the mark")
	}
}

// TestOwnerAlive checks the owner against /proc: this process is alive;
// the same pid with another start time is a reused pid (dead); an exited
// child is dead; a pid of another pid namespace counts as alive.
func TestOwnerAlive(t *testing.T) {
	self, err := procIdentity(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if self.start == 0 || self.pidns == 0 || self.comm == "" {
		t.Fatalf("identity of this process: %+v", self)
	}
	k := mark{pid: self.pid, start: self.start, pidns: self.pidns, role: "hw"}
	if alive, why, _ := ownerAlive(k, self); !alive {
		t.Errorf("this process counts as dead: %s", why)
	}
	reused := k
	reused.start++
	if alive, why, _ := ownerAlive(reused, self); alive || !strings.Contains(why, "another process") {
		t.Errorf("a reused pid: alive %v (%s)", alive, why)
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skipf("cannot run true: %v", err)
	}
	gone := mark{pid: cmd.Process.Pid, start: 1, pidns: self.pidns, role: "nic"}
	if alive, why, _ := ownerAlive(gone, self); alive {
		t.Errorf("an exited process counts as alive: %s", why)
	}
	other := k
	other.pidns++
	if alive, why, _ := ownerAlive(other, self); !alive || !strings.Contains(why, "another pid namespace") {
		t.Errorf("a pid of another pid namespace: alive %v (%s)", alive, why)
	}
}

// TestOwnerAliveZombie: a killed process not yet reaped (a zombie) holds
// nothing; its leftovers may go.
func TestOwnerAliveZombie(t *testing.T) {
	self, err := procIdentity(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot run sleep: %v", err)
	}
	child, err := procIdentity(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	k := mark{pid: child.pid, start: child.start, pidns: child.pidns, role: "wire"}
	if alive, why, _ := ownerAlive(k, self); !alive {
		t.Errorf("a running child counts as dead: %s", why)
	}
	_ = cmd.Process.Kill()
	// Not reaped yet: wait until it is a zombie, then check, then reap.
	for i := 0; i < 400; i++ {
		if _, err := procIdentity(child.pid); err != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	alive, why, _ := ownerAlive(k, self)
	_ = cmd.Wait()
	if alive {
		t.Errorf("a killed, unreaped child counts as alive: %s", why)
	}
}

// TestOwnerAliveWhenProcRefuses: an owner whose /proc entry cannot be read
// (EACCES for a non-dumpable process seen by a run with capabilities only,
// ENOENT under hidepid) but which exists counts as alive, unsure: its TAP
// and namespace are refused, never removed. (Any error but ENOENT counted
// as dead, and a running owner's things were removed.) A pid that is gone
// is still dead.
func TestOwnerAliveWhenProcRefuses(t *testing.T) {
	self, err := procIdentity(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { identify = procIdentity }()
	for _, e := range []error{os.ErrPermission, os.ErrNotExist} {
		identify = func(pid int) (identity, error) {
			return identity{pid: pid}, fmt.Errorf("open /proc/%d/ns/pid: %w", pid, e)
		}
		k := mark{pid: self.pid, start: self.start, pidns: self.pidns, role: "hw"}
		if alive, why, unsure := ownerAlive(k, self); !alive || !unsure || !strings.Contains(why, "exists") {
			t.Errorf("/proc says %v for a running owner: alive %v, unsure %v (%s); want alive, unsure", e, alive, unsure, why)
		}
		cmd := exec.Command("true")
		if err := cmd.Run(); err != nil {
			t.Skipf("cannot run true: %v", err)
		}
		gone := mark{pid: cmd.Process.Pid, start: 1, pidns: self.pidns, role: "nic"}
		if alive, why, _ := ownerAlive(gone, self); alive {
			t.Errorf("/proc says %v for an exited process: counts as alive (%s)", e, why)
		}
	}
}
