#!/usr/bin/env bash
# cycles.sh [-n ROUNDS]: start → traffic → SIGTERM, ROUNDS times (default
# 50), and count what each round left. Per round: tapminiport starts with
# its NIC TAP in a host namespace this script created and its wire partner
# in a namespace of its own (one per round); ping and a 1s iperf3 run
# through it; its peak RSS (VmHWM) and open fds are read from /proc just
# before SIGTERM; then the script checks the exit code, the exit report
# (verifier clean, no goroutine or fd of the run left after unload) and
# looks for namespaces and TAPs with the run's suffix. Every step has a time
# limit, so a round is bounded (75s at the very worst: ready 20s, ping 10s,
# iperf3 15s, halt 30s; about 2s normally).
# At the end: rounds ok, non-zero exits, leftovers, and VmHWM first /
# median / last, so a leak across rounds would show. Exit 1 if any round
# failed. Everything it creates carries a per-run suffix and is removed on
# exit.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
N=50
while getopts n: opt; do
	case $opt in
	n) N=$OPTARG ;;
	*) echo "usage: $0 [-n ROUNDS]" >&2; exit 2 ;;
	esac
done
case $N in '' | *[!0-9]* | 0) echo "-n $N: want a positive number of rounds" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "cycles.sh needs root (TAP devices, namespaces): run it with sudo" >&2; exit 1; }
[ -e /dev/net/tun ] || { echo "/dev/net/tun is missing: modprobe tun" >&2; exit 1; }
ensure_tools || exit 1

s=$(run_suffix)
HOST=tmch$s HW=tmhw$s NIC=tmn$s
wire_of() { echo "tmcw$s$1"; } # the round's wire namespace, e.g. tmcw1a2b3c7
OUT=$(mktemp -d)
PID="" SRV=""
cleanup() {
	set +e
	[ -n "$SRV" ] && kill "$SRV" 2>/dev/null && wait "$SRV" 2>/dev/null
	[ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
	for ns in $(ip netns list | awk '{print $1}' | grep -E "^tmc[hw]$s"); do ip netns del "$ns"; done
	for l in "$HW" "$NIC"; do ip link show "$l" >/dev/null 2>&1 && ip link del "$l"; done
	rm -rf "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CGO_ENABLED=0 go build -o "$OUT/tapminiport" ./cmd/tapminiport || exit 1
ip netns add "$HOST" && ip netns exec "$HOST" ip link set lo up || exit 1

# alive PID: the process runs and is not a zombie.
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

ok=0 nonzero=0 leftovers=0 failed=0
hwm=()
echo "cycles: $N rounds, suffix $s (host namespace $HOST, wire namespace tmcw$s<round>)"
began=$(date +%s)
for i in $(seq "$N"); do
	WIRE=$(wire_of "$i")
	t0=$(date +%s.%N)
	problems=()
	"$OUT/tapminiport" --hw-tap "$HW" --nic-tap "$NIC" --nic-netns "$HOST" --wire-netns "$WIRE" \
		--watchdog 250ms --halt-timeout 10s >"$OUT/stdout" 2>"$OUT/stderr" &
	PID=$!
	for _ in $(seq 200); do # ready within 20s
		grep -q '^ready$' "$OUT/stdout" 2>/dev/null && break
		alive "$PID" || break
		sleep 0.1
	done
	pingres="-" iperfres="-" rss="-" fds="-"
	if grep -q '^ready$' "$OUT/stdout"; then
		pingres=$(timeout 10 ip netns exec "$HOST" ping -c 3 -i 0.2 -W 2 198.18.0.2 2>&1 |
			sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) received.*/\2\/\1/p')
		[ "$pingres" = 3/3 ] || problems+=("ping ${pingres:-failed}")
		timeout 10 ip netns exec "$WIRE" iperf3 -s -1 >/dev/null 2>&1 &
		SRV=$!
		for _ in $(seq 50); do
			ip netns exec "$WIRE" ss -ltn 2>/dev/null | grep -q ':5201 ' && break
			sleep 0.1
		done
		iperfres=$(timeout 10 ip netns exec "$HOST" iperf3 -c 198.18.0.2 -t 1 -f g 2>&1 |
			awk '/receiver/ {print $(NF-2) " " $(NF-1)}')
		[ -n "$iperfres" ] || { iperfres=failed; problems+=("iperf3 failed"); }
		wait "$SRV" 2>/dev/null
		SRV=""
		rss=$(awk '/^VmHWM:/ {print $2}' "/proc/$PID/status" 2>/dev/null)
		fds=$(ls "/proc/$PID/fd" 2>/dev/null | wc -l)
		[ -n "$rss" ] && hwm+=("$rss")
	else
		problems+=("not ready in 20s")
	fi
	kill -TERM "$PID" 2>/dev/null
	for _ in $(seq 300); do # the halt within 30s
		alive "$PID" || break
		sleep 0.1
	done
	if alive "$PID"; then
		problems+=("still running 30s after SIGTERM: killed")
		kill -KILL "$PID" 2>/dev/null
	fi
	wait "$PID"
	code=$?
	PID=""
	[ "$code" -eq 0 ] || { nonzero=$((nonzero + 1)); problems+=("exit $code"); }
	grep -q 'verifier: clean' "$OUT/stdout" || problems+=("verifier not clean")
	grep -q 'left after unload: nothing' "$OUT/stdout" || problems+=("$(grep -m1 'left after unload' "$OUT/stdout" || echo 'no exit report')")
	# What the round left: namespaces and TAPs with the run's suffix, other
	# than the script's own host namespace; anything in the host namespace
	# besides lo.
	left=$(
		ip netns list | awk '{print $1}' | grep "$s" | grep -v "^$HOST\$"
		ip -br link | awk '{print $1}' | grep "$s"
		ip netns exec "$HOST" ip -br link | awk '{print $1}' | grep -v '^lo$'
	)
	if [ -n "$left" ]; then
		leftovers=$((leftovers + 1))
		problems+=("left: $(echo $left)")
		for ns in $(ip netns list | awk '{print $1}' | grep "$s" | grep -v "^$HOST\$"); do ip netns del "$ns"; done
		for l in "$HW" "$NIC"; do ip link show "$l" >/dev/null 2>&1 && ip link del "$l"; done
		ip netns exec "$HOST" ip link del "$NIC" 2>/dev/null
	fi
	took=$(echo "$(date +%s.%N) - $t0" | bc)
	if [ ${#problems[@]} -eq 0 ]; then
		ok=$((ok + 1))
		verdict=ok
	else
		failed=$((failed + 1))
		verdict="FAIL: $(IFS=';'; echo "${problems[*]}")"
		sed 's/^/    stderr: /' "$OUT/stderr" | tail -n 15
	fi
	printf 'round %3d: exit %d, ping %s, iperf3 %s, VmHWM %s kB, fds %s, %.1fs, %s\n' \
		"$i" "$code" "${pingres:--}" "${iperfres:--}" "${rss:--}" "${fds:--}" "$took" "$verdict"
done
elapsed=$(($(date +%s) - began))
echo
echo "cycles: $N rounds in ${elapsed}s: $ok ok, $failed failed, $nonzero non-zero exits, $leftovers with leftovers"
if [ ${#hwm[@]} -gt 0 ]; then
	median=$(printf '%s\n' "${hwm[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
	echo "peak RSS (VmHWM) per round: first ${hwm[0]} kB, median $median kB, last ${hwm[${#hwm[@]} - 1]} kB, max $(printf '%s\n' "${hwm[@]}" | sort -n | tail -n 1) kB"
fi
[ "$failed" -eq 0 ]
