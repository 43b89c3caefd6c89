#!/usr/bin/env bash
# bench/exec/run.sh — a command's round trip into a real guest (QEMU TCG,
# kestrel as PID 1, Debian's dropbear as the workload) over Volant's agent
# channel against SSH into the same guest over the bridge of a private
# network namespace, N times each, alternating in one run:
#   volant_launch: `volant-launch exec -- true` (a process per round trip),
#                  the same through lib/agentchan in-process, for a VM run
#                  by `volant-launch run`;
#   volar:         `volar vms exec web -- true` through volantd, for a VM
#                  volantd runs;
# each against `ssh root@GUEST true` (a new connection each time) and ssh
# through a ControlMaster. Prints medians and the ratios to ssh (target
# <= 0.5) and writes bench/results/exec.json.
#
#   N=20 bash bench/exec/run.sh      (needs root, qemu, the guest kernel,
#                                     dropbear-bin, openssh-client, jq)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-20}
out=bench/results/exec.json
mkdir -p bench/results
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tags="containers_image_openpgp libsqlite3"
VOLANT_BENCH_N=$N VOLANT_BENCH_OUT=$tmp/launch.json \
  go test -tags "$tags" -run '^$' -bench '^BenchmarkExecVsSSH$' -benchtime 1x -timeout 30m ./cmd/volant-launch/ | grep -v '^goos\|^goarch\|^pkg\|^cpu'
VOLANT_BENCH_N=$N VOLANT_BENCH_OUT=$tmp/volar.json \
  go test -tags "$tags" -run '^$' -bench '^BenchmarkVolarExecVsSSH$' -benchtime 1x -timeout 30m ./cmd/volar/ | grep -v '^goos\|^goarch\|^pkg\|^cpu'
jq -n --slurpfile l "$tmp/launch.json" --slurpfile v "$tmp/volar.json" '{volant_launch: $l[0], volar: $v[0]}' >"$out"
echo "bench/exec: results in $out" >&2
