package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tapminiport/tapminiport/tapdev"
)

func runBinary(t *testing.T, limit time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, args...).CombinedOutput()
	return string(out), err
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// TestBadFlagsNameThemselves: a bad flag exits 2 with a message that names
// it, and creates nothing. Every run names its own TAPs and namespaces (a
// host namespace of the test's, as root), so that a bad flag accepted by
// mistake would create only what cleanup removes by name, never the
// defaults (tmhw0, tm0, tmwire).
func TestBadFlagsNameThemselves(t *testing.T) {
	var r *run
	if os.Geteuid() == 0 {
		r = newRun(t) // cleanup removes its namespaces and TAPs by name
	} else { // nothing can be created: only the names
		s := suffix()
		r = &run{t: t, host: "tmih" + s, wire: "tmiw" + s, hw: "tmhw" + s, nic: "tmn" + s}
	}
	names := []string{"--hw-tap", r.hw, "--nic-tap", r.nic, "--nic-netns", r.host, "--wire-netns", r.wire}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--mtu", "20"}, "--mtu 20"},
		{[]string{"--rx-buffers", "1"}, "--rx-buffers 1"},
		{[]string{"--nic-addr", "banana"}, "nic-addr"},
		{[]string{"--hw-tap", r.hw, "--nic-tap", r.hw}, "--hw-tap and --nic-tap"},
		{[]string{"--mac", "01:00:5e:00:00:01"}, "--mac"},
		{[]string{"--fail-at", "nowhere"}, "--fail-at"},
		{[]string{"--moderation-budget", "-1"}, "--moderation-budget -1"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
	} {
		// The flag under test comes last: it overrides the run's names.
		out, err := runBinary(t, 10*time.Second, append(slices.Clone(names), tc.args...)...)
		if code := exitCode(err); code != 2 {
			t.Errorf("%v: exit code %d, want 2:\n%s", tc.args, code, out)
		}
		if !strings.Contains(out, tc.want) {
			t.Errorf("%v: message does not name %q:\n%s", tc.args, tc.want, out)
		}
		if tapdev.NetnsExists(r.wire) || tapdev.LinkExists("", r.hw) || tapdev.LinkExists("", r.nic) ||
			(tapdev.NetnsExists(r.host) && tapdev.LinkExists(r.host, r.nic)) {
			t.Errorf("%v: a namespace or TAP of the run was created", tc.args)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	out, err := runBinary(t, 10*time.Second, "--help")
	if exitCode(err) != 0 || !strings.Contains(out, "--return-delay") || !strings.Contains(out, "Exit codes") {
		t.Errorf("--help: exit %d:\n%s", exitCode(err), out)
	}
	out, err = runBinary(t, 10*time.Second, "--version")
	if exitCode(err) != 0 || !strings.HasPrefix(out, "tapminiport ") {
		t.Errorf("--version: %q (exit %d)", out, exitCode(err))
	}
}

// TestBenchBadOptionsNameThemselves: scripts/bench.sh refuses a bad option
// before it builds or creates anything (exit 2, the option named), so a
// typo does not cost a half-hour run with the wrong settings.
func TestBenchBadOptionsNameThemselves(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-r", "0"}, "-r 0"},
		{[]string{"-t", "five"}, "-t five"},
		{[]string{"-c", "tapminiport,tapfwd-offlaod"}, `"tapfwd-offlaod"`},
		{[]string{"-C", "nosuchcc"}, "-C nosuchcc"},
		{[]string{"-x"}, "-- x"},
		{[]string{"-c", "tapminiport-base"}, `"tapminiport-base" (it needs -b BINARY)`},
		{[]string{"-b", "/nonexistent/tm-base"}, "-b /nonexistent/tm-base"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := exec.CommandContext(ctx, "bash", append([]string{"../../scripts/bench.sh"}, tc.args...)...).CombinedOutput()
		cancel()
		if code := exitCode(err); code != 2 {
			t.Errorf("bench.sh %v: exit code %d, want 2:\n%s", tc.args, code, out)
		}
		if !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "usage:") {
			t.Errorf("bench.sh %v: message does not name %q or give the usage:\n%s", tc.args, tc.want, out)
		}
	}
}

// TestBenchTable: scripts/benchtable.awk, which prints bench.sh's tables,
// on results with known answers: the medians, the ratio of medians, the
// median of per-round ratios, and with 6 rounds or more the order-statistic
// interval and the rounds with a ratio of 1 or more; a metric that was not
// measured shows as "-" and its ratios as n/a.
func TestBenchTable(t *testing.T) {
	table := func(t *testing.T, results string) string {
		t.Helper()
		f := filepath.Join(t.TempDir(), "results")
		if err := os.WriteFile(f, []byte(results), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("awk", "-f", "../../scripts/benchtable.awk", f).CombinedOutput()
		if err != nil {
			t.Fatalf("benchtable.awk: %v\n%s", err, out)
		}
		return string(out)
	}
	// rows returns the cells of every row whose first cell is name: for a
	// datapath its medians; for a pair, in order, the ratio of medians,
	// the median of per-round ratios and (6 rounds or more) the interval
	rows := func(out, name string) [][]string {
		var got [][]string
		for _, l := range strings.Split(out, "\n") {
			cells := strings.Split(strings.Trim(l, "|"), "|")
			for i := range cells {
				cells[i] = strings.TrimSpace(cells[i])
			}
			if cells[0] == name {
				got = append(got, cells)
			}
		}
		return got
	}

	t.Run("a base binary (-b)", func(t *testing.T) {
		var b strings.Builder
		for r := 1; r <= 3; r++ {
			fmt.Fprintf(&b, "tapfwd-offload tcp_up 10 %d\ntapminiport tcp_up 12 %d\ntapminiport-base tcp_up 8 %d\n", r, r, r)
		}
		out := table(t, b.String())
		if m := rows(out, "tapminiport-base"); len(m) != 1 || m[0][1] != "8.00" {
			t.Errorf("medians rows %q: want one, TCP up 8.00", m)
		}
		if r := rows(out, "tapminiport / tapminiport-base"); len(r) != 2 || r[0][1] != "1.50" || r[1][1] != "1.50" {
			t.Errorf("tapminiport / tapminiport-base rows %q: want the ratio of medians and the per-round median, both 1.50", r)
		}
		if r := rows(out, "tapminiport-base / tapfwd-offload"); len(r) != 2 || r[0][1] != "0.80" {
			t.Errorf("tapminiport-base / tapfwd-offload rows %q: want 0.80", r)
		}
	})

	t.Run("6 rounds", func(t *testing.T) {
		var b strings.Builder
		for r := 1; r <= 6; r++ {
			fmt.Fprintf(&b, "tapfwd-offload tcp_up 10 %d\ntapminiport tcp_up %d %d\n", r, 8+r, r) // ratios 0.9 … 1.4
		}
		out := table(t, b.String())
		if m := rows(out, "tapminiport"); len(m) != 1 || m[0][1] != "11.50" || m[0][2] != "-" || m[0][7] != "-" {
			t.Errorf("medians rows %q: want one, TCP up 11.50 and '-' for what was not measured", m)
		}
		r := rows(out, "tapminiport / tapfwd-offload")
		if len(r) != 3 {
			t.Fatalf("%d ratio rows, want 3 (ratio of medians, per-round median, interval):\n%s", len(r), out)
		}
		if r[0][1] != "1.15" || r[1][1] != "1.15" || r[0][2] != "n/a" {
			t.Errorf("ratio rows %q, %q: want 1.15 and 1.15 for TCP up, n/a for TCP dn", r[0], r[1])
		}
		if got := r[2][1]; got != "0.90–1.40 (5/6)" {
			t.Errorf("interval %q, want the smallest and largest of 6 ratios and 5 of 6 at 1 or more", got)
		}
	})

	t.Run("30 rounds", func(t *testing.T) {
		var b strings.Builder
		for r := 1; r <= 30; r++ {
			fmt.Fprintf(&b, "tapfwd-offload tcp_down 20 %d\ntapminiport tcp_down %.1f %d\n", r, 20*(0.85+0.01*float64(r)), r) // ratios 0.86 … 1.15
		}
		r := rows(table(t, b.String()), "tapminiport / tapfwd-offload")
		if len(r) != 3 {
			t.Fatalf("%d ratio rows, want 3", len(r))
		}
		// Bin(30, 1/2): P(X <= 9) = 0.021, P(X <= 10) = 0.049: the 10th
		// smallest and the 10th largest
		if got := r[2][2]; got != "0.95–1.06 (16/30)" {
			t.Errorf("interval %q, want 0.95–1.06 (16/30)", got)
		}
	})

	t.Run("5 rounds: no interval", func(t *testing.T) {
		var b strings.Builder
		for r := 1; r <= 5; r++ {
			fmt.Fprintf(&b, "tapfwd-offload tcp_up 10 %d\ntapminiport tcp_up 11 %d\n", r, r)
		}
		out := table(t, b.String())
		if r := rows(out, "tapminiport / tapfwd-offload"); len(r) != 2 || strings.Contains(out, "95 %") {
			t.Errorf("with 5 rounds: %d ratio rows and an interval table?\n%s", len(r), out)
		}
	})
}

// TestBadBridgeNamesItself: --bridge naming no link, or a link that is not
// a bridge, exits 1 (start-up) before anything is created, with a message
// that names --bridge and the fix. Run inside a namespace of the test's.
func TestBadBridgeNamesItself(t *testing.T) {
	r := newRun(t) // root, and a namespace (r.host) to run in
	for _, tc := range []struct{ bridge, want string }{
		{"tmnobr" + suffix(), "no link named"},
		{"lo", "not a bridge"},
	} {
		out, err := in(t, r.host, 20*time.Second, binary, "--bridge", tc.bridge, "--hw-tap", r.hw, "--nic-tap", r.nic)
		if code := exitCode(err); code != 1 {
			t.Errorf("--bridge %s: exit code %d, want 1:\n%s", tc.bridge, code, out)
		}
		if !strings.Contains(out, "--bridge "+tc.bridge) || !strings.Contains(out, tc.want) {
			t.Errorf("--bridge %s: message does not name --bridge %s and say %q:\n%s", tc.bridge, tc.bridge, tc.want, out)
		}
		links, _ := in(t, r.host, 5*time.Second, "ip", "-br", "link")
		if strings.Contains(links, r.hw) || strings.Contains(links, r.nic) {
			t.Errorf("--bridge %s: a TAP was created before the check:\n%s", tc.bridge, links)
		}
	}
}
