#!/usr/bin/env bash
# bench/logs/run.sh — the workload log pipeline at full rate, without an
# emulated guest CPU: kestrel's capture and agent-channel server (the guest
# side) in one process, the VM supervisor's agent hub writing the bounded,
# rotated workload log (the host side) in another, joined by a unix stream
# socket as the hub is joined to QEMU's chardev; the workload is the
# logflood program the real-VM test runs, writing 100-byte numbered lines to
# stdout and stderr. N rounds of RATE bytes/s (10 MB/s) for 10 s with the
# host reading, then one round of 24 MiB with the host process stopped
# (SIGSTOP). Every line is checked to arrive exactly once and in order, and
# every lost byte to be counted by a gap entry. Prints each round and the
# medians (throughput, latency, CPU per second of flood for each side, the
# guest process's memory, the load average) and writes
# bench/results/logs.json.
#
#   N=5 RATE=10000000 bash bench/logs/run.sh      (no root needed)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-5}
RATE=${RATE:-10000000}
out=$PWD/bench/results/logs.json
mkdir -p bench/results
tags="containers_image_openpgp libsqlite3"
VOLANT_BENCH_N=$N VOLANT_BENCH_RATE=$RATE VOLANT_BENCH_OUT=$out \
  go test -tags "$tags" -run '^$' -bench '^BenchmarkLogPipelineFlood$' -benchtime 1x -timeout 30m ./lib/agenthub/ | grep -v '^goos\|^goarch\|^pkg\|^cpu'
echo "bench/logs: results in $out" >&2
