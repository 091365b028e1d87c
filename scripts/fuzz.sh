#!/usr/bin/env bash
# Runs every Go fuzz target in the module (go test -fuzz), one after
# another, each for FUZZTIME (default 60s), and prints one line per target:
# name, package, executions, new interesting inputs, result. Exits non-zero
# if any target failed; the failing input is then in the package's
# testdata/fuzz/<target>/ and `go test -run <target> ./<package>` replays it.
# Not part of scripts/test.sh (there the seed corpora run as normal tests).
# Targets are found with `go test -list '^Fuzz'`, so new ones join by
# themselves. A bare "context deadline exceeded" at the end of the fuzz
# time with no failing input is Go's own race (go.dev/issue/75804), not a
# finding: that target is run once more.
#
#   bash scripts/fuzz.sh                      # every target, 60s each
#   FUZZTIME=10s bash scripts/fuzz.sh         # a quick pass
#   bash scripts/fuzz.sh FuzzReceiveDPC       # only targets matching a regexp
#   FUZZPARALLEL=1 bash scripts/fuzz.sh       # one fuzzing worker (default: one per CPU)
#
# Needs no root: the targets run over socketpairs and in memory.
set -uo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-60s}
FUZZPARALLEL=${FUZZPARALLEL:-$(nproc)}
match=${1:-.}
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

targets=()
for pkg in $(go list ./... | grep -v /test/integration); do
	for t in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' | grep -E -- "$match"); do
		targets+=("$pkg $t")
	done
done
if [ ${#targets[@]} -eq 0 ]; then
	echo "no fuzz targets match $match" >&2
	exit 1
fi
echo "fuzzing ${#targets[@]} targets, $FUZZTIME each, $FUZZPARALLEL workers"
printf '%-26s %-22s %12s %6s  %s\n' target package execs new result
# fuzz PKG TARGET OUT: one bounded run; prints ok, FAIL or flake. A flake is
# Go's fuzz-coordinator race at the -fuzztime boundary (go.dev/issue/75804,
# fixed in Go 1.27): a bare "context deadline exceeded" with no failing
# input written and no panic. It is not a finding; the run is retried once.
fuzz() {
	# -timeout bounds a hung target: the fuzz time plus room to build and to
	# minimize a failing input.
	if go test -run '^$' -fuzz "^$2\$" -fuzztime "$FUZZTIME" -parallel "$FUZZPARALLEL" -timeout 30m "$1" >"$3" 2>&1; then
		echo ok
	elif grep -q 'context deadline exceeded' "$3" && ! grep -q -E 'Failing input written|panic:|fuzz: minimizing' "$3"; then
		echo flake
	else
		echo FAIL
	fi
}
failed=0
for entry in "${targets[@]}"; do
	pkg=${entry% *} t=${entry#* }
	short=${pkg#github.com/tapminiport/tapminiport/}
	out="$log/$t.out"
	result=$(fuzz "$pkg" "$t" "$out")
	if [ "$result" = flake ]; then
		result=$(fuzz "$pkg" "$t" "$out")
		[ "$result" = ok ] && result="ok (retried after a go.dev/issue/75804 deadline flake)"
		[ "$result" = flake ] && result="ok (twice the go.dev/issue/75804 deadline flake, no failing input)"
	fi
	execs=$(grep -o 'execs: [0-9]*' "$out" | tail -n 1 | grep -o '[0-9]*$')
	newin=$(grep -o 'new interesting: [0-9]*' "$out" | tail -n 1 | grep -o '[0-9]*$')
	printf '%-26s %-22s %12s %6s  %s\n' "$t" "$short" "${execs:-0}" "${newin:-0}" "$result"
	if [ "$result" = FAIL ]; then
		failed=$((failed + 1))
		grep -v -E '^fuzz: elapsed' "$out" | tail -n 30 | sed 's/^/    /'
	fi
done
if [ "$failed" -gt 0 ]; then
	echo "$failed of ${#targets[@]} fuzz targets failed"
	exit 1
fi
echo "all ${#targets[@]} fuzz targets ok"
