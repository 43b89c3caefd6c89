#!/usr/bin/env bash
# bench/volar/run.sh — what volar costs per command over talking to the API
# by hand, and how long shell completion keeps a user waiting.
#
# Side by side against one volantd (unix socket; run in a private network
# namespace, since its startup reconciliation looks for orphan taps; 3
# plugins, no VMs), with hyperfine, N runs each:
#
#   volar -o json plugins list       vs  curl --unix-socket ... /api/v1/plugins | jq .plugins
#   volar plugins list (table)       vs  the same curl | jq -r (a hand-made table)
#   GO_FLAGS_COMPLETION=1 volar plugins show ''   (names asked from volantd)
#   GO_FLAGS_COMPLETION=1 volar vms st            (no daemon involved)
#
# Prints medians and the ratio volar/curl; writes bench/results/volar.json.
#
#   N=30 bash bench/volar/run.sh      (root; make build; hyperfine, curl, jq)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-30}
BIN=${VOLANT_BIN:-$PWD/bin}
RESULT=bench/results/volar.json
for b in volantd volar; do
  [[ -x $BIN/$b ]] || { echo "bench/volar: $BIN/$b missing (make build)" >&2; exit 1; }
done
for c in hyperfine curl jq; do
  command -v "$c" >/dev/null || { echo "bench/volar: $c is needed" >&2; exit 1; }
done

((EUID == 0)) || { echo "bench/volar: needs root (network namespace)" >&2; exit 1; }
ns=vbv-$$
work=$(mktemp -d /tmp/vbv-XXXXXX)
vpid=
cleanup() {
  [[ -n $vpid ]] && kill "$vpid" 2>/dev/null && wait "$vpid" 2>/dev/null || true
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
sock=$work/volantd.sock
ip netns exec "$ns" "$BIN/volantd" --socket "$sock" --data-dir "$work/data" --run-root "$work/run" --no-network-setup \
  --agent-listen off --artifact-dir "$work" >"$work/volantd.log" 2>&1 &
vpid=$!
export VOLANT_HOST=$sock
for _ in $(seq 1 100); do "$BIN/volar" -q version >/dev/null 2>&1 && curl -sf --unix-socket "$sock" http://volantd/healthz >/dev/null && break; sleep 0.1; done
for p in caddy nginx redis; do
  echo "initramfs of $p" >"$work/$p.cpio"
  cat >"$work/$p.json" <<EOF
{"name":"$p","version":"1.0","initramfs":{"url":"$work/$p.cpio","checksum":"sha256:$(sha256sum "$work/$p.cpio" | cut -d' ' -f1)"},
 "workload":{"entrypoint":["/bin/app"],"base_url":"http://127.0.0.1:80"}}
EOF
  "$BIN/volar" -q plugins install --manifest "$work/$p.json" >/dev/null
done

V=$BIN/volar
C="curl -sf --unix-socket $sock http://volantd/api/v1/plugins"
hyperfine -N --warmup 3 --runs "$N" --export-json "$work/h.json" \
  -n volar-json "$V -o json plugins list" \
  -n curl-jq "bash -c '$C | jq .plugins'" \
  -n volar-table "$V plugins list" \
  -n curl-jq-table "bash -c '$C | jq -r \".plugins[] | [.name, .version, .runtime] | @tsv\"'" \
  -n complete-names "env GO_FLAGS_COMPLETION=1 $V plugins show ''" \
  -n complete-commands "env GO_FLAGS_COMPLETION=1 $V vms st" >"$work/hyperfine.out" 2>&1 ||
  { cat "$work/hyperfine.out" >&2; exit 1; }

ms() { jq -r --arg n "$1" '.results[] | select(.command == $n) | .median * 1000 | . * 10 | round / 10' "$work/h.json"; }
load=$(cut -d' ' -f1 /proc/loadavg)
jq -n --argjson n "$N" --arg load "$load" \
  --argjson vj "$(ms volar-json)" --argjson cj "$(ms curl-jq)" \
  --argjson vt "$(ms volar-table)" --argjson ct "$(ms curl-jq-table)" \
  --argjson cn "$(ms complete-names)" --argjson cc "$(ms complete-commands)" \
  '{bench: "volar", runs: $n, host_load_1m: ($load | tonumber),
    median_ms: {volar_json: $vj, curl_jq: $cj, volar_table: $vt, curl_jq_table: $ct,
                complete_names: $cn, complete_commands: $cc},
    ratio_volar_over_curl: {json: (($vj / $cj) * 100 | round / 100), table: (($vt / $ct) * 100 | round / 100)}}' >"$RESULT"
cat "$RESULT"
