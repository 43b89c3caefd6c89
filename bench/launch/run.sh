#!/usr/bin/env bash
# bench/launch: what volant-launch costs on top of QEMU.
#
# Boots the same VM BENCH_N times (default 10) each way, interleaved, inside
# a private network namespace (bridge br0 192.168.127.1/24 + a tap):
#   launch    volant-launch run, the VM spec on stdin (the VMM in its jail,
#             the guest's CPU vulnerability mitigations on: the defaults)
#   direct    the QEMU command line `volant-launch argv` printed, run directly
#   insecure  volant-launch run --insecure-vmm (no jail): what the jail costs
#   nomitig   volant-launch run --kernel-arg mitigations=off: what the
#             guest's mitigations cost
#   before    (with BEFORE=PATH) volant-launch run of another build, e.g. the
#             one before a change: the before/after pair, interleaved
# and reports medians of the time from process start to QEMU's exec (a shim
# first on PATH says when on its stderr) and to the workload answering HTTP.
# Targets: overhead <= 10 ms to exec, <= 5 % to healthy (launch vs direct).
# Results: bench/results/launch.json (OUT=FILE elsewhere). Needs root, QEMU,
# the guest kernel (make kernel) and bin/volant-launch (make build;
# LAUNCH=PATH for another binary).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${VOLANT_BIN:-$ROOT/bin}
LAUNCH=${LAUNCH:-$BIN/volant-launch}
BEFORE=${BEFORE:-}
export VOLANT_KERNEL_DIR=${VOLANT_KERNEL_DIR:-/var/lib/volant/kernel}
[[ -x $LAUNCH ]] || { echo "bench/launch: $LAUNCH missing (make build)" >&2; exit 1; }
[[ -z $BEFORE || -x $BEFORE ]] || { echo "bench/launch: $BEFORE (BEFORE) is not executable" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "bench/launch: needs root (network namespace, tap)" >&2; exit 1; }

W=$(mktemp -d /tmp/volant-bench-launch.XXXXXX)
NS=vb-launch-$$
cleanup() {
	if ip netns list | grep -qw "$NS"; then
		for p in $(ip netns pids "$NS"); do kill -9 "$p" 2>/dev/null || true; done
		ip netns del "$NS"
	fi
	rm -rf "$W"
}
trap cleanup EXIT

go build -o "$W/driver" ./bench/launch/driver
# The guest's PID 1: kestrel when it is built, else the test init (which
# answers HTTP itself and honours the power button).
KIND=testinit
PID1=${VOLANT_KESTREL:-$BIN/kestrel}
if [[ -x $PID1 ]]; then
	KIND=kestrel
else
	PID1=$W/testinit
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$PID1" ./lib/vmm/vmmtest/testdata/testinit
fi

ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add br0 type bridge
ip -n "$NS" addr add 192.168.127.1/24 dev br0
ip -n "$NS" link set br0 up
ip -n "$NS" tuntap add vt-bench mode tap
ip -n "$NS" link set vt-bench master br0
ip -n "$NS" link set vt-bench up

ip netns exec "$NS" "$W/driver" -bin "$LAUNCH" -bin-before "$BEFORE" -work "$W" -tap vt-bench \
	-pid1 "$PID1" -pid1-kind "$KIND" -n "${BENCH_N:-10}" -out "${OUT:-$ROOT/bench/results/launch.json}"
