#!/usr/bin/env bash
# bench/boot/run.sh — boot-to-healthy of a kestrel initramfs vs the same
# kernel, modules and workload (busybox httpd) under a minimal busybox init,
# N boots each, alternating. Prints medians and the ratio kestrel/busybox
# (target <= 1.15, by QEMU's CPU time) and writes bench/results/boot.json.
#
#   N=7 bash bench/boot/run.sh      (needs root, qemu, the guest kernel)
#   BEFORE=/path/to/older/kestrel N=7 bash bench/boot/run.sh
#                                   (boots that build too, interleaved: a
#                                   before/after pair under one load)
#   GOFLOOR=1 N=7 bash bench/boot/run.sh
#                                   (boots the script through the smallest
#                                   Go init too: the floor of any Go PID 1)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-7}
out=bench/results/boot.json
mkdir -p bench/results
VOLANT_BENCH_N=$N VOLANT_BENCH_OUT=$PWD/$out VOLANT_BENCH_BEFORE=${BEFORE:-} VOLANT_BENCH_GOFLOOR=${GOFLOOR:-} \
  go test -run '^$' -bench '^BenchmarkVMBootVsBusybox$' -benchtime 1x -timeout 30m ./lib/kestrel/ | grep -v '^goos\|^goarch\|^pkg\|^cpu'
echo "bench/boot: results in $out" >&2
