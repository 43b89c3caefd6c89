#!/usr/bin/env bash
# bench/density/run.sh — how many real guests reach healthy within a window
# on this host: one deployment of VMS replicas (default 36) of a busybox
# httpd initramfs plugin through volantd, QEMU (TCG here, KVM where it
# works), WINDOW (default 120s). Writes bench/results/density.json.
#
#   VMS=36 WINDOW=120s bash bench/density/run.sh   (root, qemu, make build, make kernel)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=bench/results/density.json
mkdir -p bench/results
VOLANT_BENCH_VMS=${VMS:-36} VOLANT_BENCH_WINDOW=${WINDOW:-120s} VOLANT_BENCH_OUT=$PWD/$out \
  VOLANT_BIN=${VOLANT_BIN:-$PWD/bin} VOLANT_KESTREL=${VOLANT_KESTREL:-$PWD/bin/kestrel} \
  go test -tags "${TAGS:-containers_image_openpgp libsqlite3}" -run '^$' -bench '^BenchmarkVMDensity$' -benchtime 1x -timeout 30m ./cmd/volantd/ |
  grep -v '^goos\|^goarch\|^pkg\|^cpu'
echo "bench/density: results in $out" >&2
