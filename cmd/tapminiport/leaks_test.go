package main

import (
	"os"
	"strings"
	"testing"
)

func TestLeftoversSeesAnFDAndAGoroutine(t *testing.T) {
	takeFDBaseline()
	if l := leakedFDs(); len(l) != 0 {
		t.Fatalf("fresh baseline reports %v", l)
	}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	l := leakedFDs()
	f.Close()
	if len(l) != 1 || !strings.Contains(l[0], "/proc/") {
		t.Errorf("an open file after the baseline: got %v, want it named", l)
	}
	if l := leakedFDs(); len(l) != 0 {
		t.Errorf("after close: %v", l)
	}
	stop := make(chan struct{})
	started := make(chan struct{})
	go parkedRoutine(started, stop)
	<-started
	g := leakedGoroutines()
	close(stop)
	if len(g) == 0 || !strings.Contains(strings.Join(g, "\n"), "parkedRoutine") {
		t.Errorf("a goroutine of this module is not reported: %v", g)
	}
}

func parkedRoutine(started, stop chan struct{}) {
	close(started)
	<-stop
}

func TestParseFlagsNamesTheBadFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--mtu", "67"}, "--mtu 67"},
		{[]string{"--batch", "0"}, "--batch 0"},
		{[]string{"--return-delay", "-1s"}, "--return-delay"},
		{[]string{"--halt-timeout", "0s"}, "--halt-timeout"},
		{[]string{"--hw-tap", "a/b"}, "--hw-tap"},
		{[]string{"--nic-tap", "waytoolonganame0"}, "--nic-tap"},
		{[]string{"--wire-netns", ""}, "--wire-netns"},
		{[]string{"extra"}, "unexpected argument"},
	} {
		var sink strings.Builder
		_, err := parseFlags(tc.args, &sink)
		if err == nil || !strings.Contains(err.Error()+sink.String(), tc.want) {
			t.Errorf("%v: error %v does not name %q", tc.args, err, tc.want)
		}
	}
	o, err := parseFlags([]string{"--bridge", "br0"}, &strings.Builder{})
	if err != nil || !o.noWire {
		t.Errorf("--bridge must imply --no-wire: %+v %v", o, err)
	}
	o, err = parseFlags(nil, &strings.Builder{})
	if err != nil || o.hwTap != "tmhw0" || o.nicTap != "tm0" || o.wireNetns != "tmwire" || len(o.nicAddrs) != 2 {
		t.Errorf("defaults: %+v %v", o, err)
	}
}
