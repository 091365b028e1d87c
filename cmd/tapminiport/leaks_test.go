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

// Goroutine dumps as runtime.Stack(buf, true) prints them when leftovers
// runs: the caller, the halt goroutine stop starts, comes first. The built
// binary (go build, no -trimpath) names package main's functions "main."
// and its files by absolute path; go test names them by import path, and
// its own goroutine 1 runs the harness's main.main in _testmain.go.
const (
	binaryCaller = `goroutine 23 [running]:
main.leakedGoroutines()
	/work/main/cmd/tapminiport/leaks.go:38 +0x45
main.leftovers()
	/work/main/cmd/tapminiport/leaks.go:20 +0x25
main.(*machine).halt(0xc0001a2000)
	/work/main/cmd/tapminiport/stop.go:113 +0x8b1
main.(*machine).stop.func2()
	/work/main/cmd/tapminiport/stop.go:50 +0x1d
created by main.(*machine).stop in goroutine 1
	/work/main/cmd/tapminiport/stop.go:50 +0x1a5`
	testCaller = `goroutine 23 [running]:
github.com/tapminiport/tapminiport/cmd/tapminiport.leakedGoroutines()
	/work/main/cmd/tapminiport/leaks.go:38 +0x45
github.com/tapminiport/tapminiport/cmd/tapminiport.leftovers()
	/work/main/cmd/tapminiport/leaks.go:20 +0x25
github.com/tapminiport/tapminiport/cmd/tapminiport.(*machine).halt(0xc0001a2000)
	/work/main/cmd/tapminiport/stop.go:113 +0x8b1
github.com/tapminiport/tapminiport/cmd/tapminiport.(*machine).stop.func2()
	/work/main/cmd/tapminiport/stop.go:50 +0x1d
created by github.com/tapminiport/tapminiport/cmd/tapminiport.(*machine).stop in goroutine 7
	/work/main/cmd/tapminiport/stop.go:50 +0x1a5`
)

// TestGoroutineLeaks classifies one goroutine at a time, after the caller,
// in both namings: what this run started and did not end counts; what stop
// legitimately keeps alive while the halt goroutine asks, and what is not
// ours, does not.
func TestGoroutineLeaks(t *testing.T) {
	for _, tc := range []struct {
		name, caller, g string
		leak            bool
	}{
		{"binary: --stats goroutine parked", binaryCaller, `goroutine 19 [select]:
main.(*machine).routineStats(0xc0001a2000, 0xc000180060, 0xc0001800c0)
	/work/main/cmd/tapminiport/observe.go:155 +0x1d1
created by main.(*machine).startStats in goroutine 1
	/work/main/cmd/tapminiport/observe.go:145 +0xc5`, true},
		{"test: --stats goroutine parked", testCaller, `goroutine 19 [select]:
github.com/tapminiport/tapminiport/cmd/tapminiport.(*machine).routineStats(0xc0001a2000, 0xc000180060, 0xc0001800c0)
	/work/main/cmd/tapminiport/observe.go:155 +0x1d1
created by github.com/tapminiport/tapminiport/cmd/tapminiport.(*machine).startStats in goroutine 7
	/work/main/cmd/tapminiport/observe.go:145 +0xc5`, true},
		{"binary: SIGUSR1 goroutine parked", binaryCaller, `goroutine 20 [select, 2 minutes]:
main.(*machine).routineDumps(0xc0001a2000, 0xc000180120, 0xc000180180)
	/work/main/cmd/tapminiport/observe.go:191 +0xa5
created by main.(*machine).startDumps in goroutine 1
	/work/main/cmd/tapminiport/observe.go:184 +0xc5`, true},
		{"binary: metrics server still accepting", binaryCaller, `goroutine 25 [IO wait]:
internal/poll.runtime_pollWait(0x7f3c1c1e0e08, 0x72)
	/usr/local/go/src/runtime/netpoll.go:351 +0x85
internal/poll.(*FD).Accept(0xc0001b2080)
	/usr/local/go/src/internal/poll/fd_unix.go:613 +0x28c
net.(*TCPListener).Accept(0xc0001a8140)
	/usr/local/go/src/net/tcpsock.go:380 +0x30
net/http.(*Server).Serve(0xc0001c6000, {0xa3f4b0, 0xc0001a8140})
	/usr/local/go/src/net/http/server.go:3424 +0x30c
main.(*metricsServer).serve.func2()
	/work/main/cmd/tapminiport/metrics.go:232 +0x4d
created by main.(*metricsServer).serve in goroutine 1
	/work/main/cmd/tapminiport/metrics.go:230 +0x6c5`, true},
		{"binary: library code started by a go statement of ours", binaryCaller, `goroutine 26 [IO wait]:
net/http.(*Server).Serve(0xc0001c6000, {0xa3f4b0, 0xc0001a8140})
	/usr/local/go/src/net/http/server.go:3424 +0x30c
created by main.(*metricsServer).serve in goroutine 1
	/work/main/cmd/tapminiport/metrics.go:230 +0x6c5`, true},
		{"binary: another closure of stop, not the watcher", binaryCaller, `goroutine 27 [chan send]:
main.(*machine).stop.func3()
	/work/main/cmd/tapminiport/stop.go:60 +0x35
created by main.(*machine).stop in goroutine 1
	/work/main/cmd/tapminiport/stop.go:60 +0x1f`, true},
		{"binary: goroutine 1 waiting in stop for the halt", binaryCaller, `goroutine 1 [select]:
main.(*machine).stop(0xc0001a2000, 0xc000080300)
	/work/main/cmd/tapminiport/stop.go:51 +0x1e5
main.run({0xc0000a4010, 0x4, 0x4}, {0xa3c2e0, 0xc000012018}, {0xa3c2e0, 0xc000012020})
	/work/main/cmd/tapminiport/main.go:117 +0x7a5
main.main()
	/work/main/cmd/tapminiport/main.go:48 +0x5d`, false},
		{"test: goroutine waiting in stop for the halt", testCaller, `goroutine 7 [select]:
github.com/tapminiport/tapminiport/cmd/tapminiport.(*machine).stop(0xc0001a2000, 0xc000080300)
	/work/main/cmd/tapminiport/stop.go:51 +0x1e5
github.com/tapminiport/tapminiport/cmd/tapminiport.run({0xc0000a4010, 0x4, 0x4}, {0xa3c2e0, 0xc000012018}, {0xa3c2e0, 0xc000012020})
	/work/main/cmd/tapminiport/main.go:117 +0x7a5
github.com/tapminiport/tapminiport/cmd/tapminiport.TestStop(0xc000003c00)
	/work/main/cmd/tapminiport/stop_test.go:12 +0x45
testing.tRunner(0xc000003c00, 0x8d1f28)
	/usr/local/go/src/testing/testing.go:2036 +0xea
created by testing.(*T).Run in goroutine 1
	/usr/local/go/src/testing/testing.go:2101 +0x4c5`, false},
		{"binary: the signal watcher", binaryCaller, `goroutine 22 [select]:
main.(*machine).stop.func1()
	/work/main/cmd/tapminiport/stop.go:26 +0xa5
created by main.(*machine).stop in goroutine 1
	/work/main/cmd/tapminiport/stop.go:23 +0x125`, false},
		{"test: the signal watcher", testCaller, `goroutine 22 [select]:
github.com/tapminiport/tapminiport/cmd/tapminiport.(*machine).stop.func1()
	/work/main/cmd/tapminiport/stop.go:26 +0xa5
created by github.com/tapminiport/tapminiport/cmd/tapminiport.(*machine).stop in goroutine 7
	/work/main/cmd/tapminiport/stop.go:23 +0x125`, false},
		{"binary: the runtime's signal loop", binaryCaller, `goroutine 6 [syscall]:
os/signal.signal_recv()
	/usr/local/go/src/runtime/sigqueue.go:152 +0x29
os/signal.loop()
	/usr/local/go/src/os/signal/signal_unix.go:23 +0x13
created by os/signal.Notify.func1.1 in goroutine 1
	/usr/local/go/src/os/signal/signal.go:152 +0x1f`, false},
		{"test: another module's goroutine", testCaller, `goroutine 31 [syscall]:
syscall.Syscall6(0x2d, 0x9, 0xc000400000, 0x10000, 0x0, 0xc0003b1e40, 0xc0003b1e3c)
	/usr/local/go/src/syscall/syscall_linux.go:95 +0x39
github.com/vishvananda/netlink/nl.(*NetlinkSocket).Receive(0xc0001c2040)
	/root/go/pkg/mod/github.com/vishvananda/netlink@v1.3.1/nl/nl_linux.go:800 +0xa5
github.com/vishvananda/netlink.linkSubscribeAt.func2()
	/root/go/pkg/mod/github.com/vishvananda/netlink@v1.3.1/link_linux.go:2594 +0x95
created by github.com/vishvananda/netlink.linkSubscribeAt in goroutine 35
	/root/go/pkg/mod/github.com/vishvananda/netlink@v1.3.1/link_linux.go:2585 +0x2b4`, false},
		{"test: the test harness's goroutine 1", testCaller, `goroutine 1 [chan receive]:
testing.(*T).Run(0xc000003a40, {0x8a5f1e?, 0x0?}, 0x8d1f28)
	/usr/local/go/src/testing/testing.go:2109 +0x4e5
testing.(*M).Run(0xc000136140)
	/usr/local/go/src/testing/testing.go:2443 +0x6ac
main.main()
	_testmain.go:48 +0x9b`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := goroutineLeaks(tc.caller + "\n\n" + tc.g + "\n")
			if (len(got) > 0) != tc.leak || len(got) > 1 {
				t.Errorf("leak = %v, want %v; reported: %q", len(got) > 0, tc.leak, got)
			}
		})
	}
}

// TestGoroutineLeaksNamesTheLeak: a whole dump of the built binary whose
// --stats goroutine was never stopped reports that one, by number and
// function, and nothing else.
func TestGoroutineLeaksNamesTheLeak(t *testing.T) {
	dump := binaryCaller + `

goroutine 1 [select]:
main.(*machine).stop(0xc0001a2000, 0xc000080300)
	/work/main/cmd/tapminiport/stop.go:51 +0x1e5
main.run({0xc0000a4010, 0x4, 0x4}, {0xa3c2e0, 0xc000012018}, {0xa3c2e0, 0xc000012020})
	/work/main/cmd/tapminiport/main.go:117 +0x7a5
main.main()
	/work/main/cmd/tapminiport/main.go:48 +0x5d

goroutine 6 [syscall]:
os/signal.signal_recv()
	/usr/local/go/src/runtime/sigqueue.go:152 +0x29
os/signal.loop()
	/usr/local/go/src/os/signal/signal_unix.go:23 +0x13
created by os/signal.Notify.func1.1 in goroutine 1
	/usr/local/go/src/os/signal/signal.go:152 +0x1f

goroutine 19 [select]:
main.(*machine).routineStats(0xc0001a2000, 0xc000180060, 0xc0001800c0)
	/work/main/cmd/tapminiport/observe.go:155 +0x1d1
created by main.(*machine).startStats in goroutine 1
	/work/main/cmd/tapminiport/observe.go:145 +0xc5

goroutine 22 [select]:
main.(*machine).stop.func1()
	/work/main/cmd/tapminiport/stop.go:26 +0xa5
created by main.(*machine).stop in goroutine 1
	/work/main/cmd/tapminiport/stop.go:23 +0x125
`
	got := goroutineLeaks(dump)
	want := "goroutine 19 in main.(*machine).routineStats(0xc0001a2000, 0xc000180060, 0xc0001800c0)"
	if len(got) != 1 || got[0] != want {
		t.Errorf("got %q, want [%q]", got, want)
	}
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
		{[]string{"--wire-netns", "a/b"}, "--wire-netns"},
		{[]string{"--nic-netns", ".."}, "--nic-netns"},
		{[]string{"--nic-netns", "tmwire"}, "--nic-netns and --wire-netns are both"},
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
