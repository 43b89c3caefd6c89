#!/usr/bin/env bash
# crash.sh — volantd killed with SIGKILL in the middle of work, restarted:
# nothing leaks and nothing is lost. In a network namespace this script
# makes and deletes, with real guests (QEMU, Debian's kernel, our kestrel):
# a deployment of 4 replicas and 2 lone VMs are being created when volantd
# dies. After a restart every VM runs (the survivors adopted, interrupted
# creates finished), addresses are unique, and leases, taps and
# hypervisors match the VMs one for one.
set -euo pipefail
cd "$(dirname "$0")/../.."
VL_NAME=crash
source scripts/lib.sh
vl_need volantd volar volant-launch volant-ipam volant-net kestrel jq curl cpio busybox
vl_netns "vt-e2e-crash-$$"
vl_volantd --health-interval 2s --stop-timeout 5s
vl_busybox_plugin "$VL_TMP" web
volar plugins install --manifest "$VL_TMP/web.json" >/dev/null || vl_fail "plugins install"

volar deployments create svc --plugin web --replicas 4 >/dev/null || vl_fail "deployments create"
volar vms create solo1 --plugin web >/dev/null 2>&1 &
volar vms create solo2 --plugin web >/dev/null 2>&1 &
# Kill once at least one VM has a hypervisor and the rest are in flight.
vl_wait 60 bash -c '[[ $(volar -o json vms list | jq "[.[] | select(.pid > 0)] | length") -ge 1 ]]' ||
  vl_fail "no VM got a hypervisor"
before=$(volar -o json vms list | jq -c '[.[] | {name, state, step}]')
kill -9 "$VL_DAEMON"
wait "$VL_DAEMON" 2>/dev/null || true
wait || true # the volar clients see the daemon go away
vl_log "killed volantd with $before"
[[ $(vl_count qemu-system-x86) -ge 1 ]] || vl_fail "the VMs died with volantd"

vl_volantd --health-interval 2s --stop-timeout 5s
vl_events_match 'length >= 1' --since 0 --type vm.adopted || vl_fail "no VM adopted after the restart"
want=6
# grep -c reads all of volar's output; grep -q would exit at the first
# match, and volar's write into the closed pipe would fail the pipeline.
if ! volar -q vms list | grep -cx solo1 >/dev/null; then want=$((want - 1)); fi # a create cut off before its row was written
if ! volar -q vms list | grep -cx solo2 >/dev/null; then want=$((want - 1)); fi
vl_wait 240 vl_running "$want" || vl_fail "after the restart: $(volar vms list 2>&1)"

vms=$(volar -o json vms list)
[[ $(jq -r '.[].ip' <<<"$vms" | sort -u | wc -l) == "$want" ]] || vl_fail "duplicate addresses: $vms"
leases=$(volant-ipam list --db "$VL_TMP/data/volant.db" | jq -c '[.leases[] | {vm, ip}] | sort_by(.vm)')
owners=$(jq -c '[.[] | {vm: .name, ip}] | sort_by(.vm)' <<<"$vms")
[[ $leases == "$owners" ]] || vl_fail "leases $leases do not match the VMs' addresses $owners"
[[ $(vl_in volant-net tap list | jq -c '[.taps[].vm] | sort') == "$(jq -c '[.[].name] | sort' <<<"$vms")" ]] ||
  vl_fail "taps do not match the VMs: $(vl_in volant-net tap list)"
[[ $(vl_count qemu-system-x86) == "$want" ]] || vl_fail "$(vl_count qemu-system-x86) hypervisors for $want VMs"
for ip in $(jq -r '.[].ip' <<<"$vms"); do
  [[ $(vl_get "http://$ip/") == "hello from web" ]] || vl_fail "$ip does not answer"
done
vl_log "ok ($want VMs; $(vl_events --since 0 --type vm.adopted | wc -l) adopted)"
