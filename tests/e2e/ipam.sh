#!/usr/bin/env bash
# ipam.sh — volant-ipam end to end, the way an operator's shell uses it:
# leases from background jobs at once, a lease piped into volant-net tap add
# (inside a network namespace this script creates and always deletes), gc
# with the live names, release from a loop, errors as JSON with their exit
# statuses.
set -euo pipefail
for c in volant-ipam volant-net jq; do
  command -v "$c" >/dev/null || { echo "$c not on PATH (make build)" >&2; exit 1; }
done
ns=vt-e2e-ipam-$$
tmp=$(mktemp -d)
cleanup() {
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
export VOLANT_DB=$tmp/state/volant.db # the directory does not exist yet

# 30 leases at once from background jobs, on a database none of them finds.
for i in $(seq 1 30); do volant-ipam lease --vm "job-$i" </dev/null >"$tmp/job-$i.json" & done
wait
jq -s -e 'length == 30 and ([.[].ip] | unique | length) == 30 and ([.[].mac] | unique | length) == 30' "$tmp"/job-*.json >/dev/null ||
  fail "30 concurrent leases are not 30 distinct addresses and MACs"
jq -s -r '[.[].ip | split(".")[3] | tonumber] | sort | . == [range(100; 130)]' "$tmp"/job-*.json | grep -qx true ||
  fail "concurrent leases are not the lowest 30 addresses"
[[ $(volant-ipam lease --vm job-7 </dev/null) == "$(cat "$tmp/job-7.json")" ]] || fail "a repeated lease differs"

# The lease becomes a tap with the lease's MAC and a permanent neighbour.
ip netns add "$ns"
x() { ip netns exec "$ns" "$@"; }
x volant-net setup >/dev/null
volant-ipam lease --vm web1 </dev/null >"$tmp/web1.json"
x volant-net tap add <"$tmp/web1.json" >"$tmp/tap.json"
ip=$(jq -r .ip "$tmp/web1.json") mac=$(jq -r .mac "$tmp/web1.json")
[[ $mac == 02:$(printf %s web1 | sha256sum | sed -E 's/^(..)(..)(..)(..)(..).*/\1:\2:\3:\4:\5/') ]] || fail "MAC $mac is not 02 + sha256(web1)"
jq -e --arg mac "$mac" '.kind == "net.tap" and .mac == $mac and .lease.vm == "web1"' "$tmp/tap.json" >/dev/null ||
  fail "tap add result: $(cat "$tmp/tap.json")"
x ip neigh show "$ip" | grep "lladdr $mac PERMANENT" >/dev/null || fail "no neighbour entry for $ip"
x volant-net tap del <"$tmp/tap.json" >/dev/null
x volant-net teardown >/dev/null

# gc keeps the live VMs (a JSON array on stdin) and frees the rest.
jq -n '[range(1; 11) | "job-\(.)"]' | volant-ipam gc >"$tmp/gc.json"
jq -e '(.freed | length) == 21 and .kept == 10 and ([.freed[].vm] | index("web1") != null)' "$tmp/gc.json" >/dev/null ||
  fail "gc: $(cat "$tmp/gc.json")"
# The freed addresses are handed out again, lowest first.
lowest=$(jq -r '[.freed[].ip | split(".")[3] | tonumber] | min | "192.168.127.\(.)"' "$tmp/gc.json")
[[ $(volant-ipam lease --vm after-gc </dev/null | jq -r .ip) == "$lowest" ]] || fail "lease after gc is not the lowest freed address $lowest"

# Errors: one JSON object on stderr, the documented exit status, no stdout.
set +e
out=$(volant-ipam show --vm nobody </dev/null 2>"$tmp/err"); st=$?
set -e
[[ $st == 4 && -z $out && $(jq -r .code "$tmp/err") == NOT_FOUND ]] || fail "show of a missing lease: exit $st, $(cat "$tmp/err")"
set +e
# .100 is surely taken (kept, or the lowest freed address after-gc got);
# .101 may have been freed by gc and not leased again.
volant-ipam lease --vm full --range-start 192.168.127.100 --range-end 192.168.127.100 </dev/null >/dev/null 2>"$tmp/err"; st=$?
set -e
[[ $st == 6 && $(jq -r .code "$tmp/err") == IP_EXHAUSTED ]] || fail "exhausted pool: exit $st, $(cat "$tmp/err")"

# Release from a loop over list (each command gets </dev/null), twice.
for _ in 1 2; do
  volant-ipam list </dev/null | jq -r '.leases[].vm' | while read -r vm; do
    volant-ipam release --vm "$vm" </dev/null | jq -e '.released' >/dev/null || fail "release $vm"
  done
done
volant-ipam list </dev/null | jq -e '.leases == []' >/dev/null || fail "leases left after releasing all"
volant-ipam release --vm job-1 </dev/null | jq -e '.released == false' >/dev/null || fail "repeated release"
echo "ipam.sh: ok"
