package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/help.golden from the current --help")

// TestHelpGolden: --help prints exactly testdata/help.golden, on stdout,
// and exits 0. After a deliberate change: go test ./cmd/tapminiport -run TestHelpGolden -update
func TestHelpGolden(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--help"}, &stdout, &stderr, signals{}); code != exitOK {
		t.Fatalf("--help exit code %d, stderr:\n%s", code, stderr.String())
	}
	if stderr.Len() != 0 {
		t.Errorf("--help wrote to stderr:\n%s", stderr.String())
	}
	golden := filepath.Join("testdata", "help.golden")
	if *update {
		if err := os.WriteFile(golden, stdout.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote %s", golden)
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (create it with -update)", err)
	}
	if got := stdout.String(); got != string(want) {
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		for i := 0; i < max(len(gl), len(wl)); i++ {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("--help differs from %s at line %d:\n got: %q\nwant: %q\n(if the change is meant: go test ./cmd/tapminiport -run TestHelpGolden -update)", golden, i+1, g, w)
			}
		}
	}
}

// TestEveryFlagInOneGroup: --help shows each flag once, under a group.
func TestEveryFlagInOneGroup(t *testing.T) {
	fs := newFlagSet(&options{})
	seen := map[string]string{}
	for _, g := range flagGroups {
		for _, n := range g.names {
			if fs.Lookup(n) == nil {
				t.Errorf("group %q names --%s, which is not a flag", g.title, n)
			}
			if prev, ok := seen[n]; ok {
				t.Errorf("--%s is in groups %q and %q", n, prev, g.title)
			}
			seen[n] = g.title
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		if _, ok := seen[f.Name]; !ok {
			t.Errorf("--%s is in no group of --help", f.Name)
		}
	})
}

func TestObservabilityFlags(t *testing.T) {
	o, err := parseFlags(nil, &strings.Builder{})
	if err != nil || o.stats != 0 || o.metrics != "" || o.pcap != "" || o.pcapMax != 100<<20 {
		t.Fatalf("defaults: stats %v metrics %q pcap %q pcap-max %d, %v", o.stats, o.metrics, o.pcap, o.pcapMax, err)
	}
	o, err = parseFlags([]string{"--stats", "200ms", "--metrics", "127.0.0.1:0", "--pcap", "/tmp/x.pcap", "--pcap-max", "64KiB"}, &strings.Builder{})
	if err != nil || o.stats != 200*time.Millisecond || o.metrics != "127.0.0.1:0" || o.pcap != "/tmp/x.pcap" || o.pcapMax != 64<<10 {
		t.Fatalf("parsed %+v, %v", o, err)
	}
	for _, tc := range []struct {
		in   string
		want int64
	}{{"104857600", 104857600}, {"100MiB", 100 << 20}, {"100M", 100 << 20}, {"64k", 64 << 10}, {"1GiB", 1 << 30}, {"0", 0}, {"512b", 512}} {
		var n int64
		if err := (byteSize{&n}).Set(tc.in); err != nil || n != tc.want {
			t.Errorf("byte size %q = %d, %v; want %d", tc.in, n, err, tc.want)
		}
	}
	for _, bad := range []string{"", "MiB", "-1", "1.5M", "lots"} {
		var n int64
		if err := (byteSize{&n}).Set(bad); err == nil {
			t.Errorf("byte size %q accepted as %d", bad, n)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--stats", "-1s"}, "--stats -1s"},
		{[]string{"--stats", "1ms"}, "--stats 1ms"},
		{[]string{"--metrics", "9464"}, "--metrics"},
		{[]string{"--metrics", "127.0.0.1:99999"}, "--metrics"},
		{[]string{"--pcap-max", "10"}, "--pcap-max 10"},
		{[]string{"--pcap-max", "lots"}, "--pcap-max"},
		{[]string{"--no-such-flag"}, "--no-such-flag"},
	} {
		_, err := parseFlags(tc.args, &strings.Builder{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v does not name %q", tc.args, err, tc.want)
		}
	}
}

// TestWithFixSaysSudo: a permission error from any start step names the fix.
func TestWithFixSaysSudo(t *testing.T) {
	err := withFix(fmt.Errorf("open hardware TAP tmhw0: %w", &os.SyscallError{Syscall: "ioctl", Err: syscall.EPERM}))
	if !strings.Contains(err.Error(), "needs root or CAP_NET_ADMIN") || !strings.Contains(err.Error(), "run with sudo") || !errors.Is(err, syscall.EPERM) {
		t.Errorf("EPERM: %v", err)
	}
	if err := withFix(errors.New("no such device")); strings.Contains(err.Error(), "sudo") {
		t.Errorf("not a permission error: %v", err)
	}
	already := fmt.Errorf("cannot open /dev/net/tun: needs root or CAP_NET_ADMIN: run with sudo: %w", os.ErrPermission)
	if err := withFix(already); strings.Count(err.Error(), "sudo") != 1 {
		t.Errorf("fix said twice: %v", err)
	}
}
