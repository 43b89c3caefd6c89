#!/usr/bin/env bash
# launch.sh — one VM the way an operator's shell runs it, inside a network
# namespace this script creates and always deletes:
#   volant-manifest validate, then
#   volant-ipam lease | volant-net tap add | volant-launch run
# then the workload answers over the bridge, status/pause/resume/stop act on
# it from other shells, and nothing is left: no run dir, no QEMU, no tap,
# no lease once released.
# The plugin is a bare archive (busybox httpd); volant-launch layers the boot
# image (kestrel + the kernel's modules) under it.
set -euo pipefail
for c in volant-manifest volant-ipam volant-net volant-launch jq busybox cpio gzip timeout; do
  command -v "$c" >/dev/null || { echo "$c not on PATH (make build, make deps)" >&2; exit 1; }
done
ns=vt-e2e-launch-$$
tmp=$(mktemp -d)
cleanup() {
  if ip netns list | grep -qw "$ns"; then
    for p in $(ip netns pids "$ns"); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns"
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  [[ -f $tmp/run.err ]] && tail -20 "$tmp/run.err" >&2
  [[ -f $VOLANT_STATE_DIR/vms/web1/serial.log ]] && tail -30 "$VOLANT_STATE_DIR/vms/web1/serial.log" >&2
  exit 1
}
export VOLANT_DB=$tmp/volant.db VOLANT_RUN_ROOT=$tmp/run VOLANT_STATE_DIR=$tmp/state VOLANT_CACHE_DIR=$tmp/cache
x() { ip netns exec "$ns" "$@"; }
# get HOST:PORT/PATH [SECONDS]: GET from inside the namespace with bash's
# /dev/tcp (no HTTP client needed); prints the body of a 200, else fails.
get() {
  local hp=${1%%/*} path=/${1#*/}
  x timeout "${2:-2}" bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$3" "$1" >&3 && cat <&3' \
    get "${hp%:*}" "${hp#*:}" "$path" >"$tmp/resp" 2>/dev/null || return 1
  head -1 "$tmp/resp" | grep -q ' 200 ' || return 1
  sed '1,/^\r$/d' "$tmp/resp"
}

# The guest's PID 1: kestrel (its workload is busybox httpd on :80), or,
# while the tree has no kestrel, the test init (it answers :8080/healthz).
kestrel=${VOLANT_KESTREL:-$(dirname "$(command -v volant-launch)")/kestrel}
probe=:80/index.html
if [[ ! -x $kestrel ]]; then
  kestrel=$tmp/testinit probe=:8080/healthz
  (cd "$(dirname "$0")/../.." && CGO_ENABLED=0 go build -o "$kestrel" ./lib/vmm/vmmtest/testdata/testinit)
  echo "launch.sh: no kestrel built; the guest runs the test init" >&2
fi

# A bare plugin: busybox and a page, nothing else.
mkdir -p "$tmp/plugin/bin" "$tmp/plugin/www"
cp "$(command -v busybox)" "$tmp/plugin/bin/busybox"
echo "hello from volant-launch" >"$tmp/plugin/www/index.html"
(cd "$tmp/plugin" && find . | cpio -o -H newc --quiet | gzip -9) >"$tmp/web.cpio.gz"
sum=$(sha256sum "$tmp/web.cpio.gz" | cut -d' ' -f1)
cat >"$tmp/web.json" <<EOF
{"name":"web","version":"1.0.0","initramfs":{"url":"$tmp/web.cpio.gz","checksum":"sha256:$sum"},
 "workload":{"type":"http","entrypoint":["/bin/busybox","httpd","-f","-p","80","-h","/www"],"base_url":"http://127.0.0.1:80"}}
EOF

volant-manifest validate "$tmp/web.json" | jq -e '.valid' >/dev/null || fail "the manifest does not validate"

ip netns add "$ns"
x ip link set lo up
x volant-net setup >/dev/null
volant-ipam lease --vm web1 </dev/null | x volant-net tap add >"$tmp/tap.json"
ip=$(jq -r .ip "$tmp/tap.json")

# argv starts nothing and shows the layers.
x volant-launch argv --manifest "$tmp/web.json" --kestrel "$kestrel" <"$tmp/tap.json" >"$tmp/argv.json"
jq -e '[.initrd.layers[].what] == ["boot-image","plugin"] and (.cmdline | contains("volant.ip='"$ip"'/24"))' "$tmp/argv.json" >/dev/null ||
  fail "argv: $(cat "$tmp/argv.json")"
[[ ! -e $VOLANT_RUN_ROOT/web1 ]] || fail "argv made a run dir"

x volant-launch run --manifest "$tmp/web.json" --kestrel "$kestrel" <"$tmp/tap.json" >"$tmp/run.json" 2>"$tmp/run.err" &
run=$!
for _ in $(seq 1 900); do
  get "$ip$probe" 1 >"$tmp/page" && break
  kill -0 $run 2>/dev/null || fail "volant-launch run exited early"
  sleep 0.1
done
[[ -s $tmp/page ]] || fail "the workload never answered http://$ip$probe"

volant-launch status --name web1 | jq -e '.running and .state == "running" and .vmm_process.alive' >/dev/null || fail "status"
volant-launch pause --name web1 | jq -e '.state == "paused"' >/dev/null || fail "pause"
if get "$ip$probe" 2 >/dev/null; then fail "answered while paused"; fi
volant-launch resume --name web1 | jq -e '.state == "running"' >/dev/null || fail "resume"
get "$ip$probe" 10 >/dev/null || fail "no answer after resume"

# A second run of the same VM is refused.
set +e
x volant-launch run --manifest "$tmp/web.json" --kestrel "$kestrel" <"$tmp/tap.json" >/dev/null 2>"$tmp/err"; st=$?
set -e
[[ $st == 5 && $(tail -1 "$tmp/err" | jq -r .code) == CONFLICT ]] || fail "second run: exit $st $(cat "$tmp/err")"

volant-launch stop --name web1 --timeout 20s | jq -e '.method == "power_button"' >/dev/null || fail "stop"
wait $run || fail "run exited with $?"
jq -e '.ended == "poweroff"' "$tmp/run.json" >/dev/null || fail "run result: $(cat "$tmp/run.json")"
grep -q "reboot: Power down" "$VOLANT_STATE_DIR/vms/web1/serial.log" || fail "no clean power-off on the console"
[[ ! -e $VOLANT_RUN_ROOT/web1 ]] || fail "run dir left behind"
[[ -z $(ip netns pids "$ns") ]] || fail "processes left in the namespace: $(ip netns pids "$ns")"
volant-launch stop --name web1 | jq -e '.method == "not_running"' >/dev/null || fail "stop is not idempotent"

x volant-net tap del <"$tmp/tap.json" >/dev/null
volant-ipam release --vm web1 </dev/null >/dev/null
set +e
volant-ipam show --vm web1 </dev/null >/dev/null 2>"$tmp/err"; st=$?
set -e
[[ $st == 4 && $(tail -1 "$tmp/err" | jq -r .code) == NOT_FOUND ]] || fail "the lease is still there after release: exit $st"
[[ $(x volant-net tap list | jq '.taps | length') == 0 ]] || fail "taps left: $(x volant-net tap list)"
x volant-net teardown >/dev/null
echo "launch.sh: ok"
