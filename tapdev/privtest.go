package tapdev

// Helpers for privileged tests, exported for every package's tests. They
// import "testing" from a non-test file on purpose; keep them in this file.

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// privileged skips tb with msg, or fails it when the environment has
// CI=true (privileged tests must not silently vanish from CI).
func privileged(tb testing.TB, msg string) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatal(msg + " (CI=true: this test must run in CI)")
		return
	}
	tb.Skip(msg)
}

// RequireRoot skips the test (fails it with CI=true) unless the process is
// root and /dev/net/tun is a character device.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	why := ""
	if euid := os.Geteuid(); euid != 0 {
		why = fmt.Sprintf("running as uid %d", euid)
	} else if fi, err := os.Stat("/dev/net/tun"); err != nil {
		why = err.Error()
	} else if fi.Mode()&os.ModeCharDevice == 0 {
		why = "/dev/net/tun is not a character device"
	}
	if why != "" {
		privileged(tb, "needs root and /dev/net/tun: "+why)
	}
}

// RequireTool skips the test (fails it with CI=true) unless the named
// program is on PATH.
func RequireTool(tb testing.TB, name string) {
	tb.Helper()
	if _, err := exec.LookPath(name); err != nil {
		privileged(tb, fmt.Sprintf("needs %s: %v", name, err))
	}
}

// RandomName returns prefix followed by 6 random hex digits, e.g.
// "tdt3fa9c1": the per-run suffix for namespaces and links. Keep prefix to
// 9 bytes or less for an interface name (15 bytes at most).
func RandomName(prefix string) string {
	var b [3]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// TempNetns creates a namespace called prefix + a random suffix with lo up
// and no other link or route, and deletes it in tb.Cleanup even when the
// test fails. It calls RequireRoot first.
func TempNetns(tb testing.TB, prefix string) string {
	tb.Helper()
	RequireRoot(tb)
	name := RandomName(prefix)
	if err := CreateNetns(name); err != nil {
		tb.Fatalf("temp netns: %v", err)
	}
	tb.Cleanup(func() {
		if !NetnsExists(name) { // the test deleted it itself
			return
		}
		if err := DeleteNetns(name); err != nil {
			tb.Errorf("temp netns cleanup: %v", err)
		}
	})
	if err := SetLinkUp(name, "lo", true); err != nil {
		tb.Fatalf("temp netns: %v", err)
	}
	return name
}

// TempTAP opens (creates) a TAP called prefix + a random suffix in the
// current namespace and, in tb.Cleanup, closes it and deletes the link by
// name wherever the test left it (the current namespace or the ones
// listed in alsoIn), in case it outlives the Dev. It calls RequireRoot.
func TempTAP(tb testing.TB, prefix string, o Options, alsoIn ...string) *Dev {
	tb.Helper()
	RequireRoot(tb)
	name := RandomName(prefix)
	d, created, err := OpenTAP(name, o)
	if err != nil {
		tb.Fatalf("temp tap: %v", err)
	}
	if !created {
		d.Close()
		tb.Fatalf("temp tap %s: already existed", name)
	}
	tb.Cleanup(func() {
		d.Close()
		for _, ns := range append([]string{""}, alsoIn...) {
			if (ns == "" || NetnsExists(ns)) && LinkExists(ns, name) {
				if err := DeleteLink(ns, name); err != nil {
					tb.Errorf("temp tap cleanup: %v", err)
				}
			}
		}
	})
	return d
}
