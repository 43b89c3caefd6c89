#!/usr/bin/env bash
# demo.sh — Volant's main job, end to end, on this host (make demo):
# a private network namespace, volantd inside it, a plugin built by fledge
# (busybox httpd in an initramfs, kestrel as PID 1), one VM created and
# reached over HTTP, a deployment scaled to 3, the event stream — then
# everything removed. Nothing touches the host's own network.
#
#   make demo            run it and clean up
#   make demo KEEP=1     leave it running; prints how to reach and stop it
#   bash scripts/demo.sh stop   stop a KEEP=1 demo
#
# Needs root, the built binaries on PATH and the guest kernel (make demo
# does both: make build, make kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
VL_NAME=demo
source scripts/lib.sh
state=/run/volant-demo.env

if [[ ${1:-} == stop ]]; then
  [[ -f $state ]] || { vl_log "no demo is running (no $state)"; exit 0; }
  source "$state"
  export VOLANT_HOST
  rm -f "$state"
  VL_KEEP=
  vl_cleanup
  vl_log "stopped: namespace $VL_NS, its VMs and volantd are gone"
  exit 0
fi
if [[ -f $state ]]; then
  vl_log "a demo started with KEEP=1 is still running; stop it first: bash scripts/demo.sh stop"
  exit 1
fi

t0=$SECONDS
step=0
say() {
  step=$((step + 1))
  printf '\n\033[1m[%d] %s\033[0m  (+%ds)\n' "$step" "$*" "$((SECONDS - t0))"
}
show() { printf '    $ %s\n' "$*"; }

vl_need volantd volar volant-launch fledge kestrel jq curl busybox
kernel=${VOLANT_KERNEL_DIR:-/var/lib/volant/kernel}
[[ -s $kernel/release ]] || { vl_log "no guest kernel in $kernel: run make kernel"; exit 1; }

say "A private network namespace for the demo (the host's network stays untouched)"
vl_netns "volant-demo"
show "ip netns add volant-demo"

say "volantd inside it: bridge vbr0 192.168.127.1/24, hypervisor ${VOLANT_VMM:-auto}, kernel $(cat "$kernel/release")"
vl_volantd --health-interval 2s
if [[ -n $VL_KEEP ]]; then # so `demo.sh stop` can clean up, even after a failure
  printf 'VL_NS=%q\nVL_TMP=%q\nVL_DAEMON=%q\nVOLANT_HOST=%q\n' "$VL_NS" "$VL_TMP" "$VL_DAEMON" "$VOLANT_HOST" >"$state"
fi
show "volantd --socket $VOLANT_HOST --data-dir $VL_TMP/data --vmm ${VOLANT_VMM:-auto}  (log: $VL_TMP/volantd.log)"
grep -o 'falling back to TCG[^"]*' "$VL_TMP/volantd.log" | head -1 | sed 's/^/    note: /' || true

say "Build a plugin with fledge: busybox httpd in an initramfs, kestrel as PID 1, into volantd's plugins directory"
show "fledge build -c examples/fledge/busybox-httpd/fledge.toml -o $VL_TMP/data/plugins"
fledge build -q -c examples/fledge/busybox-httpd/fledge.toml -o "$VL_TMP/data/plugins" >"$VL_TMP/build.json" || vl_fail "fledge build"
jq -r '"    \(.artifact) (\(.bytes) bytes, sha256 \(.sha256[0:16])…) in \(.duration_ms) ms"' "$VL_TMP/build.json"
manifest=$(jq -r .manifest "$VL_TMP/build.json")

say "Install it"
show "volar plugins install --manifest $(basename "$manifest")"
volar plugins install --manifest "$manifest" | sed 's/^/    /'
volar plugins list | sed 's/^/    /'

say "Create a VM and wait until its health check passes"
show "volar vms create web --plugin busybox-httpd --wait"
volar vms create web --plugin busybox-httpd --wait 2>/dev/null | sed 's/^/    /' || vl_fail "vms create"
ip=$(volar -o json vms show web | jq -r .ip)

say "Fetch a page from it"
show "curl http://$ip/"
vl_get "http://$ip/" | sed 's/^/    /' || vl_fail "the VM does not answer"
show "curl http://$ip:8080/healthz   (kestrel, the guest's PID 1)"
vl_get "http://$ip:8080/healthz" | jq -c '{agent, boot, uptime_ms, workload: .workload.state, health: .health.state, kestrel_rss_kib: .memory.agent_rss_kib}' | sed 's/^/    /'

say "A deployment, scaled to 3"
show "volar deployments create site --plugin busybox-httpd --replicas 1"
volar deployments create site --plugin busybox-httpd --replicas 1 >/dev/null
vl_wait 120 vl_running 1 site || vl_fail "site-1 did not run"
show "volar deployments scale site --replicas 3"
volar deployments scale site --replicas 3 >/dev/null
vl_wait 240 vl_running 3 site || vl_fail "the deployment did not reach 3: $(volar vms list 2>&1)"
volar vms list | sed 's/^/    /'
for a in $(volar -o json vms list | jq -r '.[] | select(.deployment == "site") | .ip'); do
  printf '    %-16s %s\n' "$a" "$(vl_get "http://$a/" | grep -o '<h1>.*</h1>')"
done

say "The event stream (what happened, as volantd recorded it)"
show "volar events --since 0"
timeout -s INT 3 volar events --since 0 2>/dev/null | sed 's/^/    /' || true

if [[ -n $VL_KEEP ]]; then
  cat <<EOF

Done in $((SECONDS - t0)) s. Volant keeps running (KEEP=1):
    export VOLANT_HOST=$VOLANT_HOST
    volar vms list
    ip netns exec volant-demo curl http://$ip/
    volar vms console web         (Ctrl-] detaches)
Stop it and remove everything:
    make demo-stop        (or: bash scripts/demo.sh stop)
EOF
  exit 0
fi

say "Clean up: VMs, volantd, the namespace, the scratch directory"
tmp=$VL_TMP
vl_cleanup
trap - EXIT
left=$(ip netns list | grep -w volant-demo || true)
[[ -z $left && ! -e $tmp ]] || vl_fail "left behind: ${left:-$tmp}"
printf '\nDone in %d s; nothing left behind.\n' "$((SECONDS - t0))"
