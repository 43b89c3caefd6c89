#!/usr/bin/env bash
# net.sh — volant-net end to end, the way an operator's shell uses it:
# real binaries, JSON piped between them, inside a network namespace this
# script creates and always deletes. Two guest namespaces joined to the
# bridge by veth pairs ping each other; a tap made from a lease is checked
# with ip(8) and nft(8); teardown must leave the namespace as it found it.
set -euo pipefail
command -v volant-net >/dev/null || { echo "volant-net not on PATH (make build)" >&2; exit 1; }
id=$$
ns=vt-e2e-net-$id g1=vt-e2e-g1-$id g2=vt-e2e-g2-$id
tmp=$(mktemp -d)
cleanup() {
  for n in "$ns" "$g1" "$g2"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
for n in "$ns" "$g1" "$g2"; do ip netns add "$n"; ip -n "$n" link set lo up; done
x() { ip netns exec "$ns" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
snap() { x sh -c 'ip -d link; ip addr; ip route show table all; ip neigh show nud permanent; nft list ruleset; cat /proc/sys/net/ipv4/ip_forward' |
  sed -E 's/(_timer) +[0-9.]+/\1 X/g; s/tso_max_(size|segs) [0-9]+/tso_max_\1 X/g'; }

snap >"$tmp/before"
x volant-net setup --nat | jq -e '.changed == true and .bridge == "vbr0"' >/dev/null || fail "first setup"
x volant-net setup --nat | jq -e '.changed == false' >/dev/null || fail "second setup changed something"
x volant-net check --nat | jq -e '.ok' >/dev/null || fail "check after setup"
x nft list table ip volant-vbr0 | grep 'masquerade comment "volant-net masquerade 192.168.127.0/24"' >/dev/null || fail "NAT rule"

# Guests on the bridge reach each other and the gateway.
for i in 1 2; do
  g=$([[ $i == 1 ]] && echo "$g1" || echo "$g2")
  x ip link add "vg$i" type veth peer name eth0 netns "$g"
  x ip link set "vg$i" master vbr0 up
  ip -n "$g" addr add "192.168.127.$((99 + i))/24" dev eth0
  ip -n "$g" link set eth0 up
done
ip netns exec "$g1" busybox ping -c 2 -W 2 192.168.127.101 >/dev/null || fail "guest 1 cannot reach guest 2"
ip netns exec "$g2" busybox ping -c 2 -W 2 192.168.127.1 >/dev/null || fail "guest 2 cannot reach the gateway"

# A lease (as volant-ipam prints it) becomes a tap; the result carries it on.
lease='{"version":"1","kind":"ipam.lease","vm":"web1","ip":"192.168.127.110","prefix":24,"gateway":"192.168.127.1","mac":"52:54:00:6a:10:01","leased_at":"2026-11-28T10:00:00Z"}'
echo "$lease" | x volant-net tap add >"$tmp/tap.json"
jq -e '.kind == "net.tap" and .tap == "vt-web1" and .mac == "52:54:00:6a:10:01" and .tap_mac == "fe:54:00:6a:10:01" and .lease.leased_at != null' "$tmp/tap.json" >/dev/null ||
  fail "tap add result: $(cat "$tmp/tap.json")"
x ip -d link show vt-web1 | grep 'master vbr0' >/dev/null || fail "tap not attached"
x ip -d link show vt-web1 | grep 'persist on' >/dev/null || fail "tap not persistent"
x ip neigh show 192.168.127.110 | grep 'lladdr 52:54:00:6a:10:01 PERMANENT' >/dev/null || fail "no neighbour entry"
echo "$lease" | x volant-net tap add | jq -e '.changed == false' >/dev/null || fail "second tap add changed something"
x volant-net tap list | jq -e '[.taps[].vm] == ["web1"]' >/dev/null || fail "tap list"

# Refusals change nothing and say why.
x volant-net teardown 2>"$tmp/err" && fail "teardown with a tap attached succeeded"
jq -e '.code == "CONFLICT"' <(tail -1 "$tmp/err") >/dev/null || fail "teardown refusal: $(cat "$tmp/err")"
if x setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all volant-net setup 2>"$tmp/err"; then
  fail "setup as nobody succeeded"
else
  [[ $? == 10 && $(tail -1 "$tmp/err" | jq -r .code) == PERMISSION_DENIED ]] || fail "setup as nobody: $(cat "$tmp/err")"
fi
x volant-net tap add --vm web2 --bridge nosuch0 2>"$tmp/err" && fail "tap add on a missing bridge succeeded"
[[ $(tail -1 "$tmp/err" | jq -r .code) == NOT_FOUND ]] || fail "missing bridge: $(cat "$tmp/err")"

# The tap result deletes its tap; again is a no-op.
x volant-net tap del <"$tmp/tap.json" | jq -e '.changed == true' >/dev/null || fail "tap del"
x volant-net tap del --vm web1 | jq -e '.changed == false' >/dev/null || fail "second tap del"

x ip link del vg1
x ip link del vg2
x volant-net teardown | jq -e '.changed == true' >/dev/null || fail "teardown"
x volant-net teardown | jq -e '.changed == false' >/dev/null || fail "second teardown"
snap >"$tmp/after"
diff -u "$tmp/before" "$tmp/after" || fail "teardown did not restore the namespace"
echo "net.sh: ok"
