package ndisshim

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"
)

// FindingKind names what the verifier saw.
type FindingKind string

// The verifier's findings. Each is a broken NDIS rule.
const (
	FindHeldNBL           FindingKind = "NBL still held"             // an indicated or sent NBL not back at halt
	FindLiveTimer         FindingKind = "timer not freed"            // a timer object still allocated at halt
	FindLiveInterrupt     FindingKind = "interrupt not deregistered" // an interrupt still registered at halt
	FindTaggedMemory      FindingKind = "tagged memory not freed"
	FindSharedMemory      FindingKind = "shared memory not freed"
	FindLivePool          FindingKind = "NBL pool not freed"
	FindPoolFreedInUse    FindingKind = "NBL pool freed while in use"
	FindPortNotFreed      FindingKind = "port not freed"
	FindDeviceRegistered  FindingKind = "device registration not released"
	FindDoubleReturn      FindingKind = "double return"
	FindForeignReturn     FindingKind = "foreign return"
	FindDoubleComplete    FindingKind = "double send completion"
	FindForeignComplete   FindingKind = "foreign send completion"
	FindCallAfterHalt     FindingKind = "call after halt"
	FindIllegalIndication FindingKind = "indication in wrong state"
	FindBadFree           FindingKind = "bad free"
	FindAdapterNotHalted  FindingKind = "adapter not halted at unload"
)

// Finding is one verifier report: what broke the rule, where it was
// allocated or done, and how long it had been held.
type Finding struct {
	Kind   FindingKind
	Object string        // e.g. `NBL 17 of pool "TMrx"`, `timer "stats"`
	Where  string        // file:line of the allocation or the bad call
	Age    time.Duration // how long it had been held or allocated, when known
	Detail string
}

func (f Finding) String() string {
	var b strings.Builder
	b.WriteString(string(f.Kind))
	b.WriteString(": ")
	b.WriteString(f.Object)
	if f.Age > 0 {
		fmt.Fprintf(&b, " (held %s)", f.Age.Round(time.Millisecond))
	}
	if f.Where != "" {
		b.WriteString(" at ")
		b.WriteString(f.Where)
	}
	if f.Detail != "" {
		b.WriteString(": ")
		b.WriteString(f.Detail)
	}
	return b.String()
}

// VerifierError carries findings to the caller of Halt, Unbind or Deregister.
type VerifierError struct {
	Scope    string // "halt of adapter tm0", "unload of driver tapminiport"
	Findings []Finding
}

func (e *VerifierError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "verifier: %d finding(s) at %s", len(e.Findings), e.Scope)
	for _, f := range e.Findings {
		b.WriteString("\n  ")
		b.WriteString(f.String())
	}
	return b.String()
}

// Verifier collects findings for one driver (and its adapters and the
// bindings to them). Findings seen on the fly (double returns, calls after
// halt) are kept and reported again at unload.
type Verifier struct {
	mu       sync.Mutex
	findings []Finding
	onFind   func(Finding)
}

// Record adds a finding and passes it to the observer, if any.
func (v *Verifier) Record(f Finding) {
	v.mu.Lock()
	v.findings = append(v.findings, f)
	cb := v.onFind
	v.mu.Unlock()
	if cb != nil {
		cb(f)
	}
}

// Findings returns a copy of everything recorded so far.
func (v *Verifier) Findings() []Finding {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]Finding(nil), v.findings...)
}

// callerSite returns file:line of the caller skip frames above callerSite's caller.
func callerSite(skip int) string {
	_, file, line, ok := runtime.Caller(skip + 1)
	if !ok {
		return "?"
	}
	if i := strings.LastIndexByte(file, '/'); i >= 0 {
		if j := strings.LastIndexByte(file[:i], '/'); j >= 0 {
			file = file[j+1:]
		}
	}
	return fmt.Sprintf("%s:%d", file, line)
}
