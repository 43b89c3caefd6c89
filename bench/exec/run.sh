#!/usr/bin/env bash
# bench/exec/run.sh — a command's round trip into a real guest (QEMU TCG,
# kestrel as PID 1, Debian's dropbear as the workload) over Volant's agent
# channel against SSH over the bridge of a private network namespace, N
# times each, alternating: `volant-launch exec -- true` (a process per
# round trip), the same through lib/agentchan in-process, `ssh root@GUEST
# true` (a new connection each time) and ssh through a ControlMaster.
# Prints medians and the ratio exec/ssh (target <= 0.5) and writes
# bench/results/exec.json.
#
#   N=20 bash bench/exec/run.sh      (needs root, qemu, the guest kernel,
#                                     dropbear-bin and openssh-client)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-20}
out=bench/results/exec.json
mkdir -p bench/results
VOLANT_BENCH_N=$N VOLANT_BENCH_OUT=$PWD/$out \
  go test -tags "containers_image_openpgp libsqlite3" -run '^$' -bench '^BenchmarkExecVsSSH$' -benchtime 1x -timeout 30m ./cmd/volant-launch/ | grep -v '^goos\|^goarch\|^pkg\|^cpu'
echo "bench/exec: results in $out" >&2
