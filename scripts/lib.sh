# shellcheck shell=bash
# lib.sh — helpers shared by scripts/demo.sh and tests/e2e/*.sh: a private
# network namespace that is always deleted, volantd inside it, waiting.
# Source it; set VL_NAME (a short word naming the caller) first.
#
# Everything that touches bridges, taps, VMs or private addresses happens
# inside the namespace the caller makes with vl_netns; cleanup (on EXIT)
# deletes the VMs, stops volantd, kills what is left inside, deletes the
# namespace and the scratch directory. KEEP=1 skips the cleanup.

: "${VL_NAME:=volant}"
VL_NS=
VL_TMP=
VL_DAEMON=
VL_KEEP=${KEEP:-}

vl_log() { printf '%s: %s\n' "$VL_NAME" "$*" >&2; }

# vl_need CMD...: fail early, saying how to get what is missing.
vl_need() {
  local c
  for c; do
    command -v "$c" >/dev/null || { vl_log "$c is not on PATH (make build; make deps)"; exit 1; }
  done
  [[ $(id -u) == 0 ]] || { vl_log "needs root (network namespaces, taps, /dev/kvm)"; exit 1; }
}

# vl_fail MSG: print MSG and the end of volantd's log, exit 1.
vl_fail() {
  vl_log "FAIL: $*"
  [[ -n $VL_TMP && -f $VL_TMP/volantd.log ]] && tail -40 "$VL_TMP/volantd.log" >&2
  exit 1
}

# vl_netns NAME: make the namespace (loopback up) and the scratch
# directory (short: unix socket paths have 107 bytes), and arm cleanup.
vl_netns() {
  VL_NS=$1
  VL_TMP=$(mktemp -d "/tmp/vl-$VL_NAME-XXXXXX")
  trap vl_cleanup EXIT
  ip netns add "$VL_NS"
  ip -n "$VL_NS" link set lo up
  export VOLANT_HOST=$VL_TMP/volantd.sock
}

# vl_in CMD...: run a command inside the namespace.
vl_in() { ip netns exec "$VL_NS" "$@"; }

vl_cleanup() {
  local rc=$? p
  if [[ -n $VL_KEEP ]]; then
    return $rc
  fi
  if [[ -n $VL_DAEMON ]]; then
    volar -q deployments list 2>/dev/null | xargs -r -n1 volar -q deployments delete >/dev/null 2>&1 || true
    volar -q vms list 2>/dev/null | xargs -r -n1 volar -q vms delete >/dev/null 2>&1 || true
    kill "$VL_DAEMON" 2>/dev/null || true
    wait "$VL_DAEMON" 2>/dev/null || true
  fi
  if [[ -n $VL_NS ]]; then
    for p in $(ip netns pids "$VL_NS" 2>/dev/null); do
      vl_log "killing leftover $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-100)"
      kill -9 "$p" 2>/dev/null || true
    done
    ip netns del "$VL_NS" 2>/dev/null || true
  fi
  [[ -n $VL_TMP ]] && rm -rf "$VL_TMP"
  return $rc
}

# vl_volantd ARGS...: start volantd inside the namespace (its database, data
# and run directories in the scratch directory, QEMU, our kestrel and the
# guest kernel; local plugin artifacts allowed from the scratch directory,
# where the scripts build them), wait until it answers.
vl_volantd() {
  local kernel=${VOLANT_KERNEL_DIR:-/var/lib/volant/kernel}
  local kestrel=${VOLANT_KESTREL:-$(command -v kestrel)}
  # Not through a function or subshell: $! must be volantd (ip netns exec execs it).
  ip netns exec "$VL_NS" volantd --socket "$VOLANT_HOST" --data-dir "$VL_TMP/data" --run-root "$VL_TMP/run" \
    --kernel "$kernel" --kestrel "$kestrel" --vmm "${VOLANT_VMM:-auto}" --artifact-dir "$VL_TMP" "$@" >>"$VL_TMP/volantd.log" 2>&1 &
  VL_DAEMON=$!
  vl_wait 30 vl_up || vl_fail "volantd did not come up"
}

# vl_up: volantd answers.
vl_up() { volar -o json version | jq -e '.server != null' >/dev/null; }

# vl_wait SECONDS CMD...: run CMD until it succeeds, at most SECONDS.
vl_wait() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# vl_get URL: GET from inside the namespace; prints the body of a 2xx.
vl_get() { vl_in curl -fsS --max-time 5 "$1"; }

# vl_busybox_plugin DIR NAME: a small initramfs plugin (busybox httpd
# serving "hello from NAME") and its manifest DIR/NAME.json, packed with
# cpio; volant-launch layers kestrel and the kernel's modules underneath.
vl_busybox_plugin() {
  local dir=$1 name=$2
  mkdir -p "$dir/$name/bin" "$dir/$name/www"
  cp "$(command -v busybox)" "$dir/$name/bin/busybox"
  echo "hello from $name" >"$dir/$name/www/index.html"
  (cd "$dir/$name" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -n) >"$dir/$name.cpio.gz"
  cat >"$dir/$name.json" <<EOF
{"schema_version":"1.0","name":"$name","version":"1.0.0",
 "initramfs":{"url":"$dir/$name.cpio.gz","checksum":"sha256:$(sha256sum "$dir/$name.cpio.gz" | cut -d' ' -f1)"},
 "resources":{"cpu_cores":1,"memory_mb":128},
 "workload":{"entrypoint":["/bin/busybox","httpd","-f","-p","80","-h","/www"],"base_url":"http://127.0.0.1:80","restart":"always"},
 "health_check":{"endpoint":"/","interval_ms":1000}}
EOF
}

# vl_running N [DEPLOYMENT]: true when exactly N VMs (of DEPLOYMENT) are running.
vl_running() {
  local sel='.'
  [[ -n ${2:-} ]] && sel="map(select(.deployment == \"$2\"))"
  volar -o json vms list | jq -e "$sel | (length == $1) and all(.state == \"running\")" >/dev/null
}

# vl_count COMM: how many processes named COMM run inside the namespace.
vl_count() {
  local p n=0
  for p in $(ip netns pids "$VL_NS" 2>/dev/null); do
    [[ $(cat "/proc/$p/comm" 2>/dev/null) == "$1" ]] && n=$((n + 1))
  done
  echo "$n"
}

# vl_events ARGS...: the event log so far (volar events follows forever;
# this stops it after a moment), one JSON object per line.
vl_events() { timeout -s INT 3 volar -o json events "$@" || true; }

# vl_events_match JQ ARGS...: whether the event log (vl_events ARGS...)
# satisfies the jq filter JQ (read with -s), asked up to ten times: on a
# host busy booting guests one 3 s look may end before volar has printed.
vl_events_match() {
  local filter=$1 i
  shift
  for i in 1 2 3 4 5 6 7 8 9 10; do
    vl_events "$@" | jq -se "$filter" >/dev/null && return 0
  done
  return 1
}
