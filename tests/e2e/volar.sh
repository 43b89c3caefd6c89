#!/usr/bin/env bash
# volar.sh — volar end to end, the way a person's shell uses it, with the
# real binaries inside a network namespace this script creates and always
# deletes: `volar setup` prepares the namespace's host network and the
# directories, volantd starts there (QEMU, our kestrel), a plugin made with
# cpio from busybox's httpd is installed, a VM is created and waited for,
# answers HTTP at the address volar printed, shows in list/show/logs/events,
# is stopped, started and deleted, and a deployment scales 1 → 2 → 0.
# Needs root, qemu-system-x86, busybox-static, cpio, jq, curl and the guest
# kernel (make kernel); bin/ on PATH (make build).
set -euo pipefail
for c in volar volantd volant-launch volant-net kestrel jq curl cpio busybox; do
  command -v "$c" >/dev/null || { echo "$c not on PATH (make build; scripts/install-deps.sh)" >&2; exit 1; }
done
kernel=${VOLANT_KERNEL_DIR:-/var/lib/volant/kernel}
kestrel=${VOLANT_KESTREL:-$(command -v kestrel)}
ns=vt-e2e-volar-$$
tmp=$(mktemp -d /tmp/vv-XXXXXX) # short: unix socket paths have 107 bytes
sock=$tmp/volantd.sock
export VOLANT_HOST=$sock
daemon=
cleanup() {
  if [[ -n $daemon ]]; then
    volar -q vms list 2>/dev/null | xargs -r -n1 volar -q vms delete >/dev/null 2>&1 || true
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
  fi
  for p in $(ip netns pids "$ns" 2>/dev/null); do
    echo "volar.sh: killing leftover $(tr "\0" " " </proc/$p/cmdline 2>/dev/null | cut -c1-120)" >&2
    kill -9 "$p" 2>/dev/null || true
  done
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  [[ -f $tmp/volantd.log ]] && tail -40 "$tmp/volantd.log" >&2
  exit 1
}
x() { ip netns exec "$ns" "$@"; }
ip netns add "$ns"
ip -n "$ns" link set lo up

# setup: dry run changes nothing, setup makes everything, a rerun nothing.
dirs=(--data-dir "$tmp/data" --run-root "$tmp/run/vms" --kernel "$kernel")
x volar -o json setup --nat --dry-run "${dirs[@]}" | jq -e '.dry_run and .changed' >/dev/null || fail "setup --dry-run"
[[ ! -d $tmp/data ]] || fail "setup --dry-run made the data directory"
x volar setup --nat "${dirs[@]}" | tail -1 | grep -q "The host is ready for volantd" || fail "setup"
x volar -o json setup --nat "${dirs[@]}" | jq -e '.changed == false and .ready' >/dev/null || fail "second setup changed something"

# volantd in the namespace, unreachable before it starts.
rc=0
out=$(volar vms list 2>&1) || rc=$?
[[ $rc == 3 && $out == *"cannot reach volantd at $sock"* ]] || fail "unreachable daemon: exit $rc: $out"
# Not through x(): $! must be volantd itself (ip netns exec execs it).
ip netns exec "$ns" volantd --socket "$sock" --data-dir "$tmp/data" --run-root "$tmp/run/vms" --kernel "$kernel" --kestrel "$kestrel" \
  --artifact-dir "$tmp" --vmm qemu --nat --health-interval 1s --stop-timeout 5s >"$tmp/volantd.log" 2>&1 &
daemon=$!
for _ in $(seq 1 100); do
  volar -o json version 2>/dev/null | jq -e '.server != null' >/dev/null 2>&1 && break
  sleep 0.2
done
volar -o json version | jq -e '.server' >/dev/null || fail "volantd did not come up"

# A plugin: busybox's httpd serving one page, packed with cpio.
mkdir -p "$tmp/root/bin" "$tmp/root/www"
cp "$(command -v busybox)" "$tmp/root/bin/busybox"
echo "hello from volar's e2e guest" >"$tmp/root/www/index.html"
(cd "$tmp/root" && find . | cpio -o -H newc --quiet | gzip -n) >"$tmp/httpd.cpio.gz"
cat >"$tmp/httpd.json" <<EOF
{"name":"httpd","version":"1.0","initramfs":{"url":"$tmp/httpd.cpio.gz","checksum":"sha256:$(sha256sum "$tmp/httpd.cpio.gz" | cut -d' ' -f1)"},
 "resources":{"cpu_cores":1,"memory_mb":128},
 "workload":{"entrypoint":["/bin/busybox","httpd","-f","-p","80","-h","/www"],"base_url":"http://127.0.0.1:80"},
 "health_check":{"endpoint":"/","interval_ms":500}}
EOF
[[ $(volar plugins install --manifest "$tmp/httpd.json") == "Plugin httpd 1.0 installed" ]] || fail "plugins install"
volar -q plugins list | grep -cx httpd >/dev/null || fail "plugins list"

# A VM: the spec's sentence, progress on stderr, running, reachable.
out=$(volar vms create web1 --plugin httpd --wait --timeout 90s 2>"$tmp/progress") || fail "vms create --wait: $out $(cat "$tmp/progress")"
[[ $out == $'VM web1 created with IP 192.168.127.100\nVM web1 is running' ]] || fail "vms create said: $out"
grep -q "health check passed" "$tmp/progress" || fail "no progress on stderr: $(cat "$tmp/progress")"
[[ $(volar -o json vms show web1 | jq -r .state) == running ]] || fail "web1 is not running"
x curl -fsS --max-time 10 http://192.168.127.100/ | grep -c "hello from volar" >/dev/null || fail "the guest does not answer HTTP"
volar vms list | grep -E '^web1 +httpd +running +192\.168\.127\.100' >/dev/null || fail "vms list: $(volar vms list)"
volar vms logs --console web1 | grep -c "kestrel" >/dev/null || fail "vms logs has no kestrel lines"
volar -o json events --since 0 --type vm.healthy >"$tmp/events" &
ev=$!
# Ctrl-C once the event is printed (not after a fixed time, which a slow
# host could use up before volar even connected).
healthy() { jq -e -s 'any(.[]; .type == "vm.healthy" and .resource_id == "web1")' "$tmp/events" >/dev/null 2>&1; }
for _ in $(seq 1 300); do
  healthy && break
  kill -0 "$ev" 2>/dev/null || break
  sleep 0.1
done
kill -INT "$ev" 2>/dev/null || true
wait "$ev" || fail "events did not end with 0 on SIGINT"
healthy || fail "no vm.healthy event for web1"

# Stop, start, delete.
[[ $(volar vms stop web1) == "VM web1 stopped" ]] || fail "vms stop"
volar vms start web1 --wait --timeout 90s 2>/dev/null | grep -qx "VM web1 is running" || fail "vms start --wait"
x curl -fsS --max-time 10 http://192.168.127.100/ >/dev/null || fail "no HTTP after the restart"

# A deployment scales 1 → 2 → 0.
volar deployments create web --plugin httpd --replicas 1 >/dev/null || fail "deployments create"
for want in 1 2 0; do
  [[ $want == 1 ]] || volar deployments scale web --replicas "$want" >/dev/null || fail "scale to $want"
  for _ in $(seq 1 180); do
    [[ $(volar -o json deployments show web | jq "select(.current == $want and (.vms | length) == $want) | 1") == 1 ]] && break
    sleep 0.5
  done
  [[ $(volar -o json deployments show web | jq .current) == "$want" ]] || fail "deployment web never had $want running: $(volar deployments show web)"
done
volar deployments delete web >/dev/null || fail "deployments delete"

[[ $(volar vms delete web1) == "VM web1 deleted" ]] || fail "vms delete"
rc=0
volar vms show web1 >/dev/null 2>&1 || rc=$?
[[ $rc == 1 ]] || fail "vms show of a deleted VM: exit $rc, want 1"
[[ -z $(volar -q vms list) ]] || fail "VMs left: $(volar -q vms list)"
volar plugins remove httpd >/dev/null || fail "plugins remove"
echo "volar e2e: ok"
