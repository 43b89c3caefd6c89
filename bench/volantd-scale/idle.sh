#!/usr/bin/env bash
# bench/volantd-scale/idle.sh — volantd's idle RSS, side by side with another
# build of it: each round starts both (alternating which goes first) on the
# fake Cloud Hypervisor's host in a private netns, installs one plugin, lets
# it settle 3 s and reads /proc/PID/smaps_rollup. Prints the medians of
# Rss, Anonymous and the file-backed rest per build and their ratios;
# writes bench/results/volantd-idle-rss.json.
#
#   BEFORE=/path/to/old/volantd ROUNDS=5 bash bench/volantd-scale/idle.sh   (root)
#
# Build the old one from a commit with the Makefile's tags, e.g.
#   git worktree add /tmp/old COMMIT && (cd /tmp/old && go build -tags "containers_image_openpgp libsqlite3" -o /tmp/old-volantd ./cmd/volantd)
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${BEFORE:?BEFORE must name the volantd binary to compare with}"
out=bench/results/volantd-idle-rss.json
mkdir -p bench/results
VOLANT_BENCH_BEFORE=$BEFORE VOLANT_BENCH_ROUNDS=${ROUNDS:-5} VOLANT_BENCH_OUT=$PWD/$out \
  VOLANT_BENCH_AFTER=${AFTER:-} VOLANT_BIN=${VOLANT_BIN:-$PWD/bin} \
  go test -tags "${TAGS:-containers_image_openpgp libsqlite3}" -run '^$' -bench '^BenchmarkDaemonIdleRSS$' -benchtime 1x -timeout 30m ./cmd/volantd/ |
  grep -v '^goos\|^goarch\|^pkg\|^cpu'
echo "bench/volantd-scale/idle.sh: results in $out" >&2
