#!/usr/bin/env bash
# bench/volantd-events/run.sh — the event stream under a deployment
# scale-up: SUBSCRIBERS (default 1000) clients read GET /api/v1/events on
# volantd's unix socket while a deployment of VMS (default 200) replicas
# scales up (the fake Cloud Hypervisor, real volant-launch supervisors and
# taps in a private netns); every subscriber receives every event. Side by
# side in one run: the same scale-up watched by one subscriber. Prints each
# phase's delivery lag (arrival - event timestamp: p50, p99, max) and the
# ratio of the p99s; writes bench/results/volantd-events.json.
#
#   VMS=200 SUBSCRIBERS=1000 bash bench/volantd-events/run.sh     (root, make build)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=bench/results/volantd-events.json
mkdir -p bench/results
VOLANT_BENCH_VMS=${VMS:-200} VOLANT_BENCH_SUBSCRIBERS=${SUBSCRIBERS:-1000} \
  VOLANT_BENCH_OUT=$PWD/$out VOLANT_BIN=${VOLANT_BIN:-$PWD/bin} \
  go test -tags "${TAGS:-containers_image_openpgp libsqlite3}" -run '^$' -bench '^BenchmarkEventFanout$' -benchtime 1x -timeout 30m ./cmd/volantd/ |
  grep -v '^goos\|^goarch\|^pkg\|^cpu'
echo "bench/volantd-events: results in $out" >&2
