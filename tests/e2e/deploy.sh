#!/usr/bin/env bash
# deploy.sh — a deployment under volantd with real guests (QEMU, Debian's
# kernel, our kestrel) in a network namespace this script makes and
# deletes: 3 replicas run and answer HTTP; one replica's hypervisor is
# killed with SIGKILL and the reconciler recreates it; scaling to 1 stops
# the others from the highest index and frees their addresses and taps.
set -euo pipefail
cd "$(dirname "$0")/../.."
VL_NAME=deploy
source scripts/lib.sh
vl_need volantd volar volant-launch volant-ipam volant-net kestrel jq curl cpio busybox
vl_netns "vt-e2e-deploy-$$"
vl_volantd --health-interval 2s --stop-timeout 5s
vl_busybox_plugin "$VL_TMP" web
volar plugins install --manifest "$VL_TMP/web.json" >/dev/null || vl_fail "plugins install"

volar deployments create svc --plugin web --replicas 3 >/dev/null || vl_fail "deployments create"
vl_wait 180 vl_running 3 svc || vl_fail "3 replicas never ran: $(volar vms list 2>&1)"
for ip in $(volar -o json vms list | jq -r '.[].ip'); do
  [[ $(vl_get "http://$ip/") == "hello from web" ]] || vl_fail "replica at $ip does not answer"
done

# Kill svc-2's hypervisor; the reconciler notices and recreates it.
old=$(volar -o json vms show svc-2 | jq -r .pid)
kill -9 "$old"
vl_wait 60 bash -c "[[ \$(volar -o json vms show svc-2 | jq -r .pid) != $old ]]" || vl_fail "svc-2 was not recreated"
vl_wait 120 vl_running 3 svc || vl_fail "svc-2 did not come back: $(volar vms list 2>&1)"
ip2=$(volar -o json vms show svc-2 | jq -r .ip)
[[ $(vl_get "http://$ip2/") == "hello from web" ]] || vl_fail "recreated svc-2 does not answer"
vl_events_match 'map(.resource_id) | index("svc-2") != null' --since 0 --type vm.crashed ||
  vl_fail "no vm.crashed event for svc-2"

# Scale to 1: svc-3 and svc-2 go, with their leases and taps.
volar deployments scale svc --replicas 1 >/dev/null || vl_fail "scale"
vl_wait 90 bash -c '[[ $(volar -q vms list) == svc-1 ]]' || vl_fail "scale to 1 left: $(volar -q vms list)"
[[ $(volant-ipam list --db "$VL_TMP/data/volant.db" | jq -c '[.leases[].vm]') == '["svc-1"]' ]] || vl_fail "leases after scale-down"
[[ $(vl_in volant-net tap list | jq -c '[.taps[].vm]') == '["svc-1"]' ]] || vl_fail "taps after scale-down"
[[ $(vl_count qemu-system-x86) == 1 ]] || vl_fail "$(vl_count qemu-system-x86) hypervisors after scale-down, want 1"
vl_log "ok"
