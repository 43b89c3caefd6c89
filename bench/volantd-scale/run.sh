#!/usr/bin/env bash
# bench/volantd-scale/run.sh — the control plane with many VMs, side by side
# with a plain HTTP server: volantd's RSS idle and with VMS (default 200) VMs
# tracked (real volant-launch supervisors, the fake Cloud Hypervisor as
# hypervisor, real taps, in a private netns), its CPU use while they idle,
# and GET /api/v1/vms with them under wrk from a second process (bounded:
# -t2 -c16 -d10s per round), alternating with bench/volantd-scale/static
# serving the same answer's bytes. Prints medians and the ratios; writes
# bench/results/volantd-scale.json.
#
#   VMS=200 ROUNDS=3 bash bench/volantd-scale/run.sh     (root, wrk, make build)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=bench/results/volantd-scale.json
mkdir -p bench/results
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/static" ./bench/volantd-scale/static
VOLANT_BENCH_STATIC=$tmp/static VOLANT_BENCH_VMS=${VMS:-200} VOLANT_BENCH_ROUNDS=${ROUNDS:-3} \
  VOLANT_BENCH_OUT=$PWD/$out VOLANT_BIN=${VOLANT_BIN:-$PWD/bin} \
  go test -tags "${TAGS:-containers_image_openpgp libsqlite3}" -run '^$' -bench '^BenchmarkDaemonScale$' -benchtime 1x -timeout 30m ./cmd/volantd/ |
  grep -v '^goos\|^goarch\|^pkg\|^cpu'
echo "bench/volantd-scale: results in $out" >&2
