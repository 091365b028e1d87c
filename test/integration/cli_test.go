package integration

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
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

// TestBadFlagsNameThemselves: a bad flag exits 2 with a message that names it.
func TestBadFlagsNameThemselves(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--mtu", "20"}, "--mtu 20"},
		{[]string{"--rx-buffers", "1"}, "--rx-buffers 1"},
		{[]string{"--nic-addr", "banana"}, "nic-addr"},
		{[]string{"--hw-tap", "x", "--nic-tap", "x"}, "--hw-tap and --nic-tap"},
		{[]string{"--mac", "01:00:5e:00:00:01"}, "--mac"},
		{[]string{"--fail-at", "nowhere"}, "--fail-at"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
	} {
		out, err := runBinary(t, 10*time.Second, tc.args...)
		if code := exitCode(err); code != 2 {
			t.Errorf("%v: exit code %d, want 2:\n%s", tc.args, code, out)
		}
		if !strings.Contains(out, tc.want) {
			t.Errorf("%v: message does not name %q:\n%s", tc.args, tc.want, out)
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
