#!/usr/bin/env bash
# Throughput and latency through tapminiport next to a kernel veth pair (the
# limit), in one run, rounds interleaved (the machine drifts between rounds).
# Prints one table of medians. All traffic runs between namespaces this
# script creates, on 198.18.0.0/15, bounded in time; everything is removed
# at the end.
#
#   bash scripts/bench.sh [-r ROUNDS] [-t SECONDS] [-c CONTENDER,...] [-C ALGO] [-s] [-b BINARY]
#
# -c runs only the contenders named (default: all, in the order below), e.g.
# -c tapfwd-offload,tapminiport for a head-to-head with more rounds in the
# same time. Even rounds run the contenders in reverse order, so that a
# drift of the machine within a round favours neither of two neighbours.
#
# -s runs only the single-stream TCP tests (up and down), for a
# head-to-head with many rounds; every figure is also printed as it comes
# (stderr), so the per-round values can be read off the log.
#
# -C sets the TCP congestion control of every TCP test (iperf3 -C, sender
# and receiver); without it the tests use the machine's default, which the
# header names. It matters: BBR paces the sender at its own estimate of the
# path's bandwidth, so a single stream through a CPU-bound datapath runs
# below what the datapath can move and changes from run to run with the
# estimate; CUBIC (the kernel's default) fills the path until the datapath
# is the limit. README's Performance section has both.
#
# -b BINARY adds the contender tapminiport-base: that tapminiport binary
# (built from another commit: `git worktree add /tmp/base REV && cd
# /tmp/base && go build -o /tmp/tm-base ./cmd/tapminiport`) with default
# flags, so a change is measured against its parent in the same run; the
# tables then have tapminiport / tapminiport-base.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ALL="veth tapfwd tapfwd-offload tapminiport tapfwd-pipe tapminiport-plain tapminiport-nocoal tapminiport-q2 tapminiport-nomod tapminiport-nopoll tapminiport-read"
ROUNDS=3 SECS=5 CONTENDERS=$ALL CC="" SINGLE="" BASE=""
usage() { echo "usage: $0 [-r rounds] [-t seconds] [-c contender,...] [-C congestion-control] [-s] [-b tapminiport-binary]; contenders: ${ALL// /, } (and tapminiport-base with -b)" >&2; exit 2; }
while getopts "r:t:c:C:sb:" o; do case $o in r) ROUNDS=$OPTARG ;; t) SECS=$OPTARG ;; c) CONTENDERS=${OPTARG//,/ } ;; C) CC=$OPTARG ;; s) SINGLE=1 ;; b) BASE=$OPTARG ;; *) usage ;; esac; done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "-r $ROUNDS: rounds must be a whole number ≥ 1" >&2; usage; }
[[ $SECS =~ ^[1-9][0-9]*$ ]] || { echo "-t $SECS: seconds must be a whole number ≥ 1" >&2; usage; }
if [ -n "$BASE" ]; then
	[ -f "$BASE" ] && [ -x "$BASE" ] || { echo "-b $BASE: no executable file there (build one: go build -o FILE ./cmd/tapminiport)" >&2; usage; }
	BASE=$(realpath "$BASE")
	ALL="$ALL tapminiport-base"
	[[ " $CONTENDERS " == *" tapminiport-base "* ]] || CONTENDERS="$CONTENDERS tapminiport-base"
fi
for c in $CONTENDERS; do [[ " $ALL " == *" $c "* ]] || { echo "-c: no contender named \"$c\"$([ "$c" = tapminiport-base ] && echo " (it needs -b BINARY)")" >&2; usage; }; done
[ -n "${CONTENDERS// /}" ] || { echo "-c: no contender named" >&2; usage; }
CCS=$(cat /proc/sys/net/ipv4/tcp_available_congestion_control 2>/dev/null || true)
if [ -n "$CC" ] && [[ " $CCS " != *" $CC "* ]]; then
	echo "-C $CC: no such TCP congestion control here (available: ${CCS:-none listed})" >&2
	usage
fi
[ "$(id -u)" -eq 0 ] || { echo "bench.sh needs root: run it with sudo" >&2; exit 1; }
ensure_tools

s=$(run_suffix)
VA=tmba$s VB=tmbb$s HOST=tmbh$s WIRE=tmbw$s HW=tmhw$s NIC=tmn$s FA=tmbfa$s FB=tmbfb$s
OUT=$(mktemp -d)
# PID: the running contender (tapminiport or tapfwd), LOGS: its output
# files, SRV: the running iperf3 server, CLI: the running iperf3 client or
# ping (timeout's PIDs; a TERM to timeout reaches its command). cleanup
# kills them by PID before the namespaces go, so that nothing is left
# running in an unnamed namespace.
PID="" LOGS=() SRV="" CLI=""
cleanup() {
	set +e
	[ -n "$CLI" ] && kill "$CLI" 2>/dev/null && wait "$CLI" 2>/dev/null
	[ -n "$SRV" ] && kill "$SRV" 2>/dev/null && wait "$SRV" 2>/dev/null
	[ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
	for ns in "$VA" "$VB" "$HOST" "$WIRE" "$FA" "$FB"; do ip netns del "$ns" 2>/dev/null; done
	rm -rf "$OUT"
}
trap cleanup EXIT
CGO_ENABLED=0 go build -o "$OUT/tapminiport" ./cmd/tapminiport
CGO_ENABLED=0 go build -o "$OUT/tapfwd" ./cmd/tapfwd

# veth pair: VA 198.18.1.1 ⇄ VB 198.18.1.2
ip netns add "$VA"; ip netns add "$VB"
ip link add "v$s" netns "$VA" type veth peer name "w$s" netns "$VB"
ip -n "$VA" addr add 198.18.1.1/24 dev "v$s"; ip -n "$VB" addr add 198.18.1.2/24 dev "w$s"
for ns in "$VA" "$VB"; do ip -n "$ns" link set lo up; done
ip -n "$VA" link set "v$s" up; ip -n "$VB" link set "w$s" up
ip netns add "$HOST"; ip -n "$HOST" link set lo up
# bare forwarder: FA 198.18.2.1 ⇄ tapfwd ⇄ FB 198.18.2.2
ip netns add "$FA"; ip netns add "$FB"
for ns in "$FA" "$FB"; do ip -n "$ns" link set lo up; done

start_tm() { # TM_BIN, if set, is the binary (-b); else this tree's
	"${TM_BIN:-$OUT/tapminiport}" --hw-tap "$HW" --nic-tap "$NIC" --nic-netns "$HOST" --wire-netns "$WIRE" "$@" >"$OUT/tm.out" 2>"$OUT/tm.err" &
	PID=$! LOGS=("$OUT/tm.out" "$OUT/tm.err")
	for _ in $(seq 100); do grep -q '^ready$' "$OUT/tm.out" && return 0; sleep 0.1; done
	echo "tapminiport did not start" >&2; cat "$OUT/tm.err" >&2; exit 1
}
start_fwd() { # start_fwd [--offload]: tapfwd between fa$s (in FA) and fb$s (in FB)
	"$OUT/tapfwd" -a "fa$s" -b "fb$s" -up=false "$@" >"$OUT/fwd.out" 2>&1 &
	PID=$! LOGS=("$OUT/fwd.out")
	for _ in $(seq 100); do grep -q '^ready$' "$OUT/fwd.out" && break; sleep 0.1; done
	grep -q '^ready$' "$OUT/fwd.out" || { echo "tapfwd did not start" >&2; cat "$OUT/fwd.out" >&2; exit 1; }
	ip link set "fa$s" netns "$FA"; ip link set "fb$s" netns "$FB"
	ip -n "$FA" addr add 198.18.2.1/24 dev "fa$s"; ip -n "$FB" addr add 198.18.2.2/24 dev "fb$s"
	ip -n "$FA" link set "fa$s" up; ip -n "$FB" link set "fb$s" up
}
# stop_tm: stops the contender start_tm or start_fwd started and prints its
# output (LOGS) when it exits non-zero; a contender that failed (or is gone
# already) is reported, and the bench goes on with the next.
stop_tm() {
	kill -TERM "$PID" 2>/dev/null || true
	wait "$PID" || { echo "process $PID exited non-zero" >&2; cat "${LOGS[@]}" >&2 || true; }
	PID="" LOGS=()
}

# listening NS: wait (bounded) until iperf3's server listens in NS.
listening() { for _ in $(seq 50); do ip netns exec "$1" ss -ltn 2>/dev/null | grep -q ':5201 ' && return 0; sleep 0.1; done; return 0; }

# cpu_ticks PID: the process's user + system time so far, in clock ticks;
# nothing when the process is gone (a failed measurement, not an abort)
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || true; }

# CPU_RATE is the rate of the CPU-per-GB test: one every offload contender
# reaches in a slow hour here, so that all do the same work.
CPU_RATE=5G

# record NAME METRIC VALUE: a missing value is reported, not counted as 0.
record() { if [ -n "$3" ]; then echo "$1 $2 $3 $r" >>"$OUT/results"; echo "  $1 $2 $3" >&2; else echo "  $1 $2: measurement failed (left out of the medians)" >&2; fi; }

# iperf CLIENT_NS SERVER_NS SERVER_ADDR ARGS...: one iperf3 client run of
# SECS seconds against a one-off server in SERVER_NS; writes the client's
# output to $OUT/iperf.out (no result in it when it failed: the caller
# records a failed measurement). Call it as a command, not inside $(...):
# the server's PID must be set in this shell for cleanup to kill it.
iperf() {
	local cns=$1 sns=$2 addr=$3
	shift 3
	timeout $((SECS + 15)) ip netns exec "$sns" iperf3 -s -1 -B "$addr" >/dev/null 2>&1 &
	SRV=$!
	listening "$sns"
	timeout $((SECS + 10)) ip netns exec "$cns" iperf3 -c "$addr" -t "$SECS" "$@" >"$OUT/iperf.out" 2>&1 &
	CLI=$!
	wait "$CLI" || true
	CLI=""
	wait "$SRV" || true
	SRV=""
}

# measure NAME CLIENT_NS SERVER_NS SERVER_ADDR: appends "name metric value" lines
measure() {
	local name=$1 cns=$2 sns=$3 addr=$4 out tests="up down p4_up p4_down"
	[ -n "$SINGLE" ] && tests="up down"
	for test in $tests; do
		local flags=${CC:+-C $CC}
		case $test in down) flags+=" -R" ;; p4_up) flags+=" -P 4" ;; p4_down) flags+=" -P 4 -R" ;; esac
		# one stream: its receiver line; -P 4: the [SUM] receiver line
		iperf "$cns" "$sns" "$addr" $flags -f g
		out=$(awk -v p4="${test%%_*}" '/receiver/ && (p4 != "p4" || /SUM/) { for (i = 1; i <= NF; i++) if ($i == "Gbits/sec") v = $(i-1) } END { print v }' "$OUT/iperf.out")
		record "$name" "tcp_$test" "$out"
	done
	[ -n "$SINGLE" ] && return
	# UDP 64-byte payloads, as fast as the sender goes; delivered = total - lost
	iperf "$cns" "$sns" "$addr" -u -b 0 -l 64
	out=$(awk -v secs="$SECS" '/receiver/ { split($0, a, /[ \/()]+/); for (i = 1; i <= length(a); i++) if (a[i] ~ /^[0-9]+$/ && a[i+1] ~ /^[0-9]+$/ && a[i+2] ~ /%$/) { printf "%.0f", (a[i+1] - a[i]) / secs; exit } }' "$OUT/iperf.out")
	[ -n "$out" ] && out=$(awk -v p="$out" 'BEGIN { printf "%.1f", p / 1000 }')
	record "$name" udp64_kpps "$out"
	if [ -n "$PID" ]; then
		# the datapath's CPU time per GB moved, one TCP stream up at a
		# fixed rate (the same work for every contender that reaches it)
		local t0 t1
		t0=$(cpu_ticks "$PID")
		iperf "$cns" "$sns" "$addr" -b "$CPU_RATE" ${CC:+-C $CC} -f g
		out=$(awk '/receiver/ { for (i = 1; i <= NF; i++) { if ($i == "GBytes") v = $(i-1); if ($i == "MBytes") v = $(i-1) / 1024 } } END { print v }' "$OUT/iperf.out")
		t1=$(cpu_ticks "$PID")
		[ -n "$t0" ] && [ -n "$t1" ] || out=""
		[ -n "$out" ] && out=$(awk -v gib="$out" -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { if (gib > 0) printf "%.3f", t / hz / (gib * 1.073741824) }')
		record "$name" cpu_gb "$out"
	fi
	timeout 30 ip netns exec "$cns" ping -c 200 -i 0.002 -W 1 "$addr" >"$OUT/ping.out" 2>&1 &
	CLI=$!
	wait "$CLI" || true
	CLI=""
	out=$(sed -n 's/.*time=\([0-9.]*\) ms/\1/p' "$OUT/ping.out" | sort -n |
		awk '{ v[NR] = $1 } END { if (NR) printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }') || true
	record "$name" ping_ms "$out"
}

# contender NAME: starts what NAME names, measures it, stops it.
contender() {
	case $1 in
	veth)
		echo "round $r/$ROUNDS: veth" >&2
		measure veth "$VA" "$VB" 198.18.1.2
		return ;;
	tapfwd) echo "round $r/$ROUNDS: tapfwd (bare forwarder)" >&2; start_fwd ;;
	tapfwd-offload) echo "round $r/$ROUNDS: tapfwd --offload" >&2; start_fwd --offload ;;
	tapfwd-pipe)
		echo "round $r/$ROUNDS: tapfwd --offload -pipeline (reader and writer goroutines per direction)" >&2
		start_fwd --offload -pipeline ;;
	tapminiport-plain)
		echo "round $r/$ROUNDS: tapminiport --offload=false --nic-offload=false --udp-coalesce=false (plain frames both sides)" >&2
		start_tm --offload=false --nic-offload=false --udp-coalesce=false ;;
	tapminiport-nocoal) echo "round $r/$ROUNDS: tapminiport --udp-coalesce=false" >&2; start_tm --udp-coalesce=false ;;
	tapminiport) echo "round $r/$ROUNDS: tapminiport (default flags)" >&2; start_tm ;;
	tapminiport-base) echo "round $r/$ROUNDS: tapminiport-base: $BASE (default flags)" >&2; TM_BIN=$BASE start_tm ;;
	tapminiport-q2) echo "round $r/$ROUNDS: tapminiport --queues 2" >&2; start_tm --queues 2 ;;
	tapminiport-nomod)
		echo "round $r/$ROUNDS: tapminiport --interrupt-moderation 0 (no interrupt moderation)" >&2
		start_tm --interrupt-moderation 0 ;;
	tapminiport-nopoll)
		echo "round $r/$ROUNDS: tapminiport --rx-poll-on-send=false --nic-poll-on-receive=false (replies wait for the interrupt goroutines)" >&2
		start_tm --rx-poll-on-send=false --nic-poll-on-receive=false ;;
	tapminiport-read)
		echo "round $r/$ROUNDS: tapminiport with TAPDEV_IO_URING=0 (read(2) per frame, no io_uring)" >&2
		TAPDEV_IO_URING=0 start_tm ;;
	esac
	case $1 in
	tapfwd*) measure "$1" "$FA" "$FB" 198.18.2.2 ;;
	*) measure "$1" "$HOST" "$WIRE" 198.18.0.2 ;;
	esac
	stop_tm
}

for r in $(seq "$ROUNDS"); do
	order=$CONTENDERS
	if [ $((r % 2)) -eq 0 ]; then order=$(echo $CONTENDERS | tr ' ' '\n' | tac | tr '\n' ' '); fi
	for c in $order; do contender "$c"; done
done

echo
echo "Medians of $ROUNDS interleaved rounds (even rounds in reverse order), ${SECS}s each, $(nproc) CPUs, $(iperf3 --version | head -n1 | awk '{print $1, $2}')"
echo "(TCP: iperf3 receiver Gbit/s, one stream and -P 4, congestion control ${CC:-$(cat /proc/sys/net/ipv4/tcp_congestion_control) (the default)}; UDP: 64-byte datagrams delivered per second at -b 0; ping: median of 200 at 2 ms; CPU: CPU-seconds of the datapath process per GB, one TCP stream up at ${CPU_RATE}bit/s)"
awk -f scripts/benchtable.awk "$OUT/results"
