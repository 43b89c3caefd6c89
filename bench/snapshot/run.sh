#!/usr/bin/env bash
# bench/snapshot/run.sh — create → running through volantd for one plugin
# (busybox httpd with kestrel, 1 vCPU, 128 MiB; QEMU TCG here), cold boots
# against VMs started from a snapshot of a running VM of it, N of each
# (default 5), alternating, side by side in one daemon. Prints both medians
# and the ratio restore/cold (target <= 0.3), and the snapshot's size on
# disk against the guest memory; writes bench/results/snapshot.json.
#
#   N=5 bash bench/snapshot/run.sh     (root, qemu, busybox-static, make build, make kernel)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=bench/results/snapshot.json
mkdir -p bench/results
VOLANT_BENCH_N=${N:-5} VOLANT_BENCH_OUT=$PWD/$out VOLANT_BIN=${VOLANT_BIN:-$PWD/bin} \
  VOLANT_KESTREL=${VOLANT_KESTREL:-$PWD/bin/kestrel} \
  go test -tags "${TAGS:-containers_image_openpgp libsqlite3}" -run '^$' -bench '^BenchmarkSnapshotRestore$' -benchtime 1x -timeout 60m ./cmd/volantd/ |
  grep -v '^goos\|^goarch\|^pkg\|^cpu'
echo "bench/snapshot: results in $out" >&2
