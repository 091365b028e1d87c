#!/usr/bin/env bash
# The README's test command: gofmt, go vet, unit tests under -race, every
# benchmark for one iteration (under -race), then the root-only integration
# tests (real TAPs, namespaces, ping, iperf3).
# Outside CI, tests that need root, /dev/net/tun or iperf3 skip and say why;
# with CI=true they fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
if [ "$(id -u)" -eq 0 ]; then ensure_tools; fi

echo "== gofmt"
bad=$(gofmt -l $(find . -name '*.go' -not -path './.git/*'))
if [ -n "$bad" ]; then echo "gofmt would change: $bad"; exit 1; fi
echo "== go vet"
go vet ./...
echo "== unit tests (go test -race)"
go test -race -count=1 $(go list ./... | grep -v /test/integration)
echo "== benchmarks, one iteration each (they check what they move; their figures come from go test -bench)"
go test -race -count=1 -run '^$' -bench . -benchtime 1x $(go list ./... | grep -v /test/integration) | grep -v '^Benchmark'
echo "== integration tests (root, namespaces, ping, iperf3)"
go test -count=1 -p 1 -timeout 15m ./test/integration/ "$@"
