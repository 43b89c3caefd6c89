#!/usr/bin/env bash
# bench/density/run.sh — how many real guests reach healthy within a window
# on this host, side by side in one run (one side after the other, in one
# private netns):
#
#   volantd  one deployment of VMS replicas (default 36) of a busybox httpd
#            initramfs plugin with kestrel, health checks at their defaults
#   script   VMS guests with the same kernel, QEMU command line and workload
#            whose /init is a busybox shell script, started directly,
#            CPUs + 1 at a time (volantd's default boot admission)
#
# QEMU TCG here (KVM where it works), 1 vCPU and 128 MiB each, WINDOW
# (default 120s; the count within 60 s is reported too). Then each side's
# running guests idle for IDLE (default 20s): QEMU's CPU use over it is
# the idle cost per guest; the volantd side also reports volantd's and the
# volant-launch supervisors' CPU. Each side says where every guest's time
# went (breakdown_*): its boot (hypervisor start to healthy, the time it
# held its boot slot), and on the volantd side also the seconds from the
# create to its hypervisor's start (queued for a slot, lease, tap, spec,
# supervisor), to the hypervisor answering, and to volantd recording it
# healthy (vm.started and vm.healthy events; healthy frees the slot). SIDES (default "volantd script") picks
# the sides and their order; the side "before" is the volantd side with the
# volantd, volant-launch, kestrel and (when there) fledge of another build, in directory BEFORE
# (a change and what it changed, in one run). Writes bench/results/density.json.
#
#   VMS=36 WINDOW=120s bash bench/density/run.sh   (root, qemu, make build, make kernel)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=bench/results/density.json
mkdir -p bench/results
VOLANT_BENCH_VMS=${VMS:-36} VOLANT_BENCH_WINDOW=${WINDOW:-120s} VOLANT_BENCH_IDLE=${IDLE:-20s} \
  VOLANT_BENCH_SIDES=${SIDES:-volantd script} VOLANT_BENCH_BEFORE=${BEFORE:-} VOLANT_BENCH_OUT=$PWD/$out \
  VOLANT_BIN=${VOLANT_BIN:-$PWD/bin} VOLANT_KESTREL=${VOLANT_KESTREL:-$PWD/bin/kestrel} \
  go test -tags "${TAGS:-containers_image_openpgp libsqlite3}" -run '^$' -bench '^BenchmarkVMDensity$' -benchtime 1x -timeout 60m ./cmd/volantd/ |
  grep -v '^goos\|^goarch\|^pkg\|^cpu'
echo "bench/density: results in $out" >&2
