#!/usr/bin/env bash
# bench/kestrel/run.sh — kestrel in real guests (QEMU TCG, Debian's kernel):
# the initramfs and the rootfs path side by side, N boots each, alternating.
# Prints medians of launch -> first HTTP 200 through kestrel's proxy,
# kestrel's RSS in the guest and power button -> QEMU exit, the ratio
# rootfs/initramfs, and writes bench/results/kestrel.json.
#
#   N=5 bash bench/kestrel/run.sh      (needs root, qemu, the guest kernel)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-5}
out=bench/results/kestrel.json
mkdir -p bench/results
VOLANT_BENCH_N=$N VOLANT_BENCH_OUT=$PWD/$out \
  go test -run '^$' -bench '^BenchmarkVMBoot$' -benchtime 1x -timeout 30m ./lib/kestrel/ | grep -v '^goos\|^goarch\|^pkg\|^cpu'
echo "bench/kestrel: results in $out" >&2
