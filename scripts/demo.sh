#!/usr/bin/env bash
# The README's main job: build tapminiport, run it with the host side and the
# wire partner each in a namespace this script creates, push real traffic
# through the miniport (ping, iperf3 each way), then SIGTERM it while
# traffic flows with a return delay set, and show the halt log and report.
# Everything it creates is named with a per-run suffix and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ "$(id -u)" -eq 0 ] || { echo "demo.sh needs root (TAP devices, namespaces): run it with sudo" >&2; exit 1; }
[ -e /dev/net/tun ] || { echo "/dev/net/tun is missing: modprobe tun" >&2; exit 1; }
ensure_tools

s=$(run_suffix)
HOST=tmdh$s WIRE=tmdw$s HW=tmhw$s NIC=tmn$s
OUT=$(mktemp -d)
PID="" SRV="" CLIENT=""
cleanup() {
	set +e
	[ -n "$SRV" ] && kill "$SRV" 2>/dev/null
	[ -n "$CLIENT" ] && kill "$CLIENT" 2>/dev/null
	[ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
	for ns in "$HOST" "$WIRE"; do ip netns del "$ns" 2>/dev/null; done
	for l in "$HW" "$NIC"; do ip link del "$l" 2>/dev/null; done
	rm -rf "$OUT"
}
trap cleanup EXIT

echo "== build"
CGO_ENABLED=0 go build -o "$OUT/tapminiport" ./cmd/tapminiport
ip netns add "$HOST"
ip netns exec "$HOST" ip link set lo up

# start DELAY: run tapminiport in the background, wait for "ready".
start() {
	"$OUT/tapminiport" --hw-tap "$HW" --nic-tap "$NIC" --nic-netns "$HOST" --wire-netns "$WIRE" \
		--return-delay "$1" --watchdog 250ms >"$OUT/stdout" 2>"$OUT/stderr" &
	PID=$!
	for _ in $(seq 100); do
		grep -q '^ready$' "$OUT/stdout" 2>/dev/null && { cat "$OUT/stdout"; return 0; }
		# gone, or exited and not yet reaped (a zombie answers kill -0)
		{ kill -0 "$PID" 2>/dev/null && ! grep -q ') Z' "/proc/$PID/stat" 2>/dev/null; } || break
		sleep 0.1
	done
	echo "tapminiport did not start:" >&2; cat "$OUT/stderr" >&2; exit 1
}
iperf() { # iperf() ARGS...: one bounded client run against a one-shot server in the wire namespace
	timeout 20 ip netns exec "$WIRE" iperf3 -s -1 >/dev/null 2>&1 &
	SRV=$!
	sleep 0.5
	timeout 20 ip netns exec "$HOST" iperf3 -c 198.18.0.2 -t 5 "$@" | tail -n 4
	wait "$SRV" 2>/dev/null || true
	SRV=""
}

echo "== run 1: traffic through the miniport"
start 0
echo "-- ping 198.18.0.2 (IPv4) and 2001:2::2 (IPv6) from netns $HOST"
ip netns exec "$HOST" ping -c 5 -i 0.2 -W 2 198.18.0.2 | tail -n 2
ip netns exec "$HOST" ping -6 -c 3 -i 0.2 -w 10 2001:2::2 | tail -n 2
echo "-- iperf3 TCP, host → wire"
iperf
echo "-- iperf3 TCP, wire → host (-R)"
iperf -R
kill -TERM "$PID"
code1=0; wait "$PID" || code1=$?; PID=""
sed -n '/exit report/,$p' "$OUT/stdout"
[ "$code1" -eq 0 ] || echo "run 1: tapminiport exited with $code1 (want 0)" >&2

echo
echo "== run 2: SIGTERM during iperf3 -R (wire → host), the stack holding each buffer 200ms"
start 200ms
timeout 20 ip netns exec "$WIRE" iperf3 -s -1 >/dev/null 2>&1 &
SRV=$!
sleep 0.5
timeout 20 ip netns exec "$HOST" iperf3 -c 198.18.0.2 -t 8 -R >/dev/null 2>&1 &
CLIENT=$!
sleep 2
echo "-- kill -TERM $PID while iperf3 runs"
kill -TERM "$PID"
code=0; wait "$PID" || code=$?; PID=""
echo "-- halt log"
grep -E 'signal received|pause:|unbind:|halt:|unload:|removed wire' "$OUT/stderr" | sed 's/^/   /'
sed -n '/exit report/,$p' "$OUT/stdout"
kill "$CLIENT" "$SRV" 2>/dev/null || true; wait 2>/dev/null || true; SRV="" CLIENT=""
echo "tapminiport exited with $code"
ip netns del "$HOST"
leftover=$( (ip netns list; ip -br link) | grep -E "$s" || true)
if [ -z "$leftover" ]; then
	echo "nothing left behind (no namespace or TAP with suffix $s)"
else
	echo "LEFT BEHIND: $leftover" >&2
	[ "$code" -ne 0 ] || code=1
fi
# The first failure decides: run 1's exit code, else run 2's, else leftovers.
[ "$code1" -eq 0 ] || code=$code1
exit "$code"
