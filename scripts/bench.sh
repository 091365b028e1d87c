#!/usr/bin/env bash
# Throughput and latency through tapminiport next to a kernel veth pair (the
# limit), in one run, rounds interleaved (the machine drifts between rounds).
# Prints one table of medians. All traffic runs between namespaces this
# script creates, on 198.18.0.0/15, bounded in time; everything is removed
# at the end.
#
#   bash scripts/bench.sh [-r ROUNDS] [-t SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROUNDS=3 SECS=5
while getopts "r:t:" o; do case $o in r) ROUNDS=$OPTARG ;; t) SECS=$OPTARG ;; *) echo "usage: $0 [-r rounds] [-t seconds]" >&2; exit 2 ;; esac; done
[ "$(id -u)" -eq 0 ] || { echo "bench.sh needs root: run it with sudo" >&2; exit 1; }
ensure_tools

s=$(run_suffix)
VA=tmba$s VB=tmbb$s HOST=tmbh$s WIRE=tmbw$s HW=tmhw$s NIC=tmn$s
OUT=$(mktemp -d)
PID=""
cleanup() {
	set +e
	[ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
	for ns in "$VA" "$VB" "$HOST" "$WIRE"; do ip netns del "$ns" 2>/dev/null; done
	rm -rf "$OUT"
}
trap cleanup EXIT
go build -o "$OUT/tapminiport" ./cmd/tapminiport

# veth pair: VA 198.18.1.1 ⇄ VB 198.18.1.2
ip netns add "$VA"; ip netns add "$VB"
ip link add "v$s" netns "$VA" type veth peer name "w$s" netns "$VB"
ip -n "$VA" addr add 198.18.1.1/24 dev "v$s"; ip -n "$VB" addr add 198.18.1.2/24 dev "w$s"
for ns in "$VA" "$VB"; do ip -n "$ns" link set lo up; done
ip -n "$VA" link set "v$s" up; ip -n "$VB" link set "w$s" up
ip netns add "$HOST"; ip -n "$HOST" link set lo up

start_tm() {
	"$OUT/tapminiport" --hw-tap "$HW" --nic-tap "$NIC" --nic-netns "$HOST" --wire-netns "$WIRE" "$@" >"$OUT/tm.out" 2>"$OUT/tm.err" &
	PID=$!
	for _ in $(seq 100); do grep -q '^ready$' "$OUT/tm.out" && return 0; sleep 0.1; done
	echo "tapminiport did not start" >&2; cat "$OUT/tm.err" >&2; exit 1
}
stop_tm() { kill -TERM "$PID"; wait "$PID" || { echo "tapminiport exited non-zero" >&2; cat "$OUT/tm.out" >&2; }; PID=""; }

# measure NAME CLIENT_NS SERVER_NS SERVER_ADDR: appends "name metric value" lines
measure() {
	local name=$1 cns=$2 sns=$3 addr=$4 out
	for dir in up down; do
		timeout $((SECS + 15)) ip netns exec "$sns" iperf3 -s -1 -B "$addr" >/dev/null 2>&1 &
		sleep 0.5
		local flag=""; [ $dir = down ] && flag=-R
		out=$(timeout $((SECS + 10)) ip netns exec "$cns" iperf3 -c "$addr" -t "$SECS" $flag -f g 2>&1 | awk '/receiver/ {print $7}')
		wait || true
		echo "$name tcp_$dir ${out:-0}" >>"$OUT/results"
	done
	timeout $((SECS + 15)) ip netns exec "$sns" iperf3 -s -1 -B "$addr" >/dev/null 2>&1 &
	sleep 0.5
	# UDP 64-byte payloads, as fast as the sender goes; delivered = total - lost
	out=$(timeout $((SECS + 10)) ip netns exec "$cns" iperf3 -c "$addr" -u -b 0 -l 64 -t "$SECS" 2>&1 |
		awk -v secs="$SECS" '/receiver/ { split($0, a, /[ \/()]+/); for (i = 1; i <= length(a); i++) if (a[i] ~ /^[0-9]+$/ && a[i+1] ~ /^[0-9]+$/ && a[i+2] ~ /%$/) { printf "%.0f", (a[i+1] - a[i]) / secs; exit } }')
	wait || true
	echo "$name udp64_kpps $(awk -v p="${out:-0}" 'BEGIN { printf "%.1f", p / 1000 }')" >>"$OUT/results"
	out=$(timeout 30 ip netns exec "$cns" ping -c 200 -i 0.002 -W 1 "$addr" 2>&1 | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | sort -n |
		awk '{ v[NR] = $1 } END { if (NR) printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
	echo "$name ping_ms ${out:-nan}" >>"$OUT/results"
}

for r in $(seq "$ROUNDS"); do
	echo "round $r/$ROUNDS: veth" >&2
	measure veth "$VA" "$VB" 198.18.1.2
	echo "round $r/$ROUNDS: tapminiport" >&2
	start_tm
	measure tapminiport "$HOST" "$WIRE" 198.18.0.2
	stop_tm
done

echo
echo "Medians of $ROUNDS interleaved rounds, ${SECS}s each, $(nproc) CPUs, $(iperf3 --version | head -n1 | awk '{print $1, $2}')"
awk '
	{ k = $1 SUBSEP $2; n[k]++; v[k, n[k]] = $3; names[$1] = 1 }
	function median(k,   i, j, t, c, a) {
		c = n[k]; for (i = 1; i <= c; i++) a[i] = v[k, i]
		for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		return (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
	}
	END {
		printf "| %-12s | %14s | %14s | %16s | %13s |\n", "datapath", "TCP up Gbit/s", "TCP down Gbit/s", "UDP 64B kpps", "ping RTT ms"
		printf "| %-12s | %14s | %14s | %16s | %13s |\n", "---", "---", "---", "---", "---"
		split("veth tapminiport", order, " ")
		for (o = 1; o <= 2; o++) { d = order[o]
			printf "| %-12s | %14.2f | %14.2f | %16.1f | %13.3f |\n", d, median(d SUBSEP "tcp_up"), median(d SUBSEP "tcp_down"), median(d SUBSEP "udp64_kpps"), median(d SUBSEP "ping_ms") }
		printf "| %-12s | %13.0f%% | %13.0f%% | %15.0f%% | %12.1fx |\n", "tm / veth",
			100 * median("tapminiport" SUBSEP "tcp_up") / median("veth" SUBSEP "tcp_up"),
			100 * median("tapminiport" SUBSEP "tcp_down") / median("veth" SUBSEP "tcp_down"),
			100 * median("tapminiport" SUBSEP "udp64_kpps") / median("veth" SUBSEP "udp64_kpps"),
			median("tapminiport" SUBSEP "ping_ms") / median("veth" SUBSEP "ping_ms")
	}' "$OUT/results"
