#!/usr/bin/env bash
# bench/volantd/run.sh — what the control plane costs on top of the toolkit.
#
# Side by side in one private network namespace, N rounds, alternating which
# goes first, the same plugin (busybox httpd; kestrel and the kernel's
# modules layered underneath by volant-launch) on real guests (QEMU TCG,
# Debian's kernel):
#
#   direct   volant-ipam lease | volant-net tap add | volant-launch run,
#            then poll kestrel's /healthz on the guest until healthy
#   volantd  POST /api/v1/vms, then GET .../wait?state=running
#
# Each is timed from the first command to "healthy" (direct) or the wait's
# answer (volantd, which learns health from kestrel's report or its own
# poll); also the time to the create's answer. Prints medians and the ratio
# volantd/direct; writes bench/results/volantd.json. The direct side polls
# every ~0.2-0.5 s; volantd hears kestrel's report the moment the health
# check passes, which is why it can come out ahead. Round 1 of each builds
# its boot-image cache (separate caches, both cold).
#
#   N=5 bash bench/volantd/run.sh     (root, qemu, make build, make kernel)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-5}
BIN=${VOLANT_BIN:-$PWD/bin}
K=${VOLANT_KERNEL_DIR:-/var/lib/volant/kernel}
RESULT=bench/results/volantd.json
for b in volantd volant-launch volant-ipam volant-net kestrel; do
  [[ -x $BIN/$b ]] || { echo "bench/volantd: $BIN/$b missing (make build)" >&2; exit 1; }
done
for c in qemu-system-x86_64 busybox cpio curl jq ip; do
  command -v "$c" >/dev/null || { echo "bench/volantd: $c is needed" >&2; exit 1; }
done
[[ -d $K ]] || { echo "bench/volantd: no guest kernel in $K (make kernel)" >&2; exit 1; }
((EUID == 0)) || { echo "bench/volantd: needs root (network namespace)" >&2; exit 1; }

ns=vb-$$
work=$(mktemp -d)
vpid=
cleanup() {
  [[ -n $vpid ]] && kill "$vpid" 2>/dev/null && wait "$vpid" 2>/dev/null || true
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  sleep 0.5
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
in_ns() { ip netns exec "$ns" "$@"; }
in_ns ip link set lo up
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }

# The plugin: busybox httpd serving one page.
mkdir -p "$work/root/bin" "$work/root/www"
cp "$(command -v busybox)" "$work/root/bin/busybox"
echo "hello from volant" >"$work/root/www/index.html"
(cd "$work/root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -n) >"$work/web.cpio.gz"
sum=$(sha256sum "$work/web.cpio.gz" | cut -d' ' -f1)
cat >"$work/web.json" <<EOF
{"name":"web","version":"1.0.0","initramfs":{"url":"$work/web.cpio.gz","checksum":"sha256:$sum"},
 "workload":{"type":"http","entrypoint":["/bin/busybox","httpd","-f","-p","80","-h","/www"],"base_url":"http://127.0.0.1:80"},
 "health_check":{"endpoint":"/index.html","interval_ms":500},"resources":{"cpu_cores":1,"memory_mb":128}}
EOF

# volantd in the namespace; it makes the bridge.
sock=$work/volantd.sock
in_ns "$BIN/volantd" --socket "$sock" --data-dir "$work/data" --run-root "$work/run" --vmm qemu --accel tcg \
  --kernel "$K" --kestrel "$BIN/kestrel" --launcher "$BIN/volant-launch" --health-interval 1s --artifact-dir "$work" 2>"$work/volantd.log" &
vpid=$!
api() { curl -sS --unix-socket "$sock" "$@"; }
for _ in $(seq 100); do api http://volantd/healthz 2>/dev/null | jq -e .ready >/dev/null 2>&1 && break; sleep 0.1; done
api -X POST -H 'Content-Type: application/json' --data @"$work/web.json" http://volantd/api/v1/plugins | jq -e .name >/dev/null

# The direct path leases from its own database and range, on the same bridge.
export VOLANT_DB=$work/direct.db VOLANT_RANGE_START=192.168.127.200 VOLANT_KERNEL_DIR=$K VOLANT_KESTREL=$BIN/kestrel \
  VOLANT_CACHE_DIR=$work/dcache VOLANT_STATE_DIR=$work/dstate VOLANT_RUN_ROOT=$work/drun
direct() { # $1: name; prints "healthy_ms"
  local name=$1 t0 ip
  t0=$(now_ms)
  ip=$("$BIN/volant-ipam" lease --vm "$name" </dev/null | tee "$work/$name.lease" | jq -r .ip)
  in_ns "$BIN/volant-net" tap add <"$work/$name.lease" >"$work/$name.tap"
  in_ns "$BIN/volant-launch" run --name "$name" --manifest "$work/web.json" --kernel "$K" --vmm qemu --accel tcg \
    --run-dir "$work/drun/$name" --serial-log "$work/$name.serial" <"$work/$name.tap" >/dev/null 2>"$work/$name.launch.log" &
  local lp=$!
  until [[ $(in_ns curl -s --connect-timeout 0.2 -m 0.5 "http://$ip:8080/healthz" | jq -r .health.state 2>/dev/null) == healthy ]]; do
    (( $(now_ms) - t0 < 120000 )) || { echo "bench/volantd: $name never healthy" >&2; exit 1; }
    sleep 0.05
  done
  echo $(( $(now_ms) - t0 ))
  in_ns "$BIN/volant-launch" stop --dir "$work/drun/$name" >/dev/null
  wait "$lp" 2>/dev/null || true
  in_ns "$BIN/volant-net" tap del --vm "$name" >/dev/null
  "$BIN/volant-ipam" release --vm "$name" </dev/null >/dev/null
}
viad() { # $1: name; prints "answer_ms running_ms"
  local name=$1 t0 t1 t2
  t0=$(now_ms)
  api -X POST -H 'Content-Type: application/json' -d "{\"name\":\"$name\",\"plugin\":\"web\"}" http://volantd/api/v1/vms | jq -e .ip >/dev/null
  t1=$(now_ms)
  api "http://volantd/api/v1/vms/$name/wait?state=running&timeout=120s" | jq -e '.state == "running"' >/dev/null
  t2=$(now_ms)
  echo "$((t1 - t0)) $((t2 - t0))"
  api -X DELETE "http://volantd/api/v1/vms/$name" | jq -e '.state == "deleted"' >/dev/null
}

: >"$work/direct.ms"; : >"$work/answer.ms"; : >"$work/volantd.ms"
load_before=$(cat /proc/loadavg)
for i in $(seq "$N"); do
  if ((i % 2)); then order="direct volantd"; else order="volantd direct"; fi
  for how in $order; do
    if [[ $how == direct ]]; then
      direct "d$i" >"$work/d.out"; d=$(cat "$work/d.out"); echo "$d" >>"$work/direct.ms"
      echo "round $i: direct $d ms" >&2
    else
      viad "v$i" >"$work/v.out"; read -r a r <"$work/v.out"; echo "$a" >>"$work/answer.ms"; echo "$r" >>"$work/volantd.ms"
      echo "round $i: volantd create answered $a ms, running $r ms" >&2
    fi
  done
done
load_after=$(cat /proc/loadavg)

dm=$(median <"$work/direct.ms"); vm=$(median <"$work/volantd.ms"); am=$(median <"$work/answer.ms")
ratio=$(awk -v a="$vm" -v b="$dm" 'BEGIN {printf "%.3f", a/b}')
mkdir -p bench/results
jq -n --argjson n "$N" --argjson d "$dm" --argjson v "$vm" --argjson a "$am" --argjson r "$ratio" \
  --arg lb "$load_before" --arg la "$load_after" \
  --argjson dall "$(jq -s . <"$work/direct.ms")" --argjson vall "$(jq -s . <"$work/volantd.ms")" \
  '{runs: $n, direct_launch_to_healthy_ms_median: $d, volantd_create_to_running_ms_median: $v,
    volantd_create_answer_ms_median: $a, ratio_volantd_to_direct: $r,
    direct_ms: $dall, volantd_ms: $vall, host_loadavg_before: $lb, host_loadavg_after: $la}' >"$RESULT"
printf 'direct (ipam | net | launch, poll kestrel)  median %6d ms\n' "$dm"
printf 'volantd create -> running (wait)           median %6d ms   (create answered in %d ms)\n' "$vm" "$am"
printf 'ratio volantd/direct                        %s\n' "$ratio"
echo "bench/volantd: results in $RESULT" >&2
