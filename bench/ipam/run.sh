#!/usr/bin/env bash
# bench/ipam/run.sh — volant-ipam against CNI host-local, side by side, and
# leases taken in process the way volantd takes them.
#
# What a shell script does: one process per operation. Each round leases N
# VM names one after another (a pool of .100-.254 is 155 addresses, so
# N=150 nearly fills it, as on a busy host), then releases them. Every tool
# gets the same pool and its own state under one temporary directory:
#
#   volant-ipam       SQLite, WAL, synchronous=FULL: a lease is on disk
#                     (fsync) before the command prints it. Each process is
#                     the database's only connection: it checkpoints at exit.
#   volant-ipam+held  the same, while another process keeps the database
#                     open (holddb, standing in for a running volantd), the
#                     way it runs on a host with the daemon up.
#   host-local        CNI's plugin: one file per address, flock, no fsync.
#
# Rounds rotate which tool goes first. Also measured, as a floor: the same
# number of processes that only start and print their version, so the report
# shows how much of an operation is process start-up.
#
# In process (bench/ipam/inproc): lib/ipam on lib/store in one process, as
# volantd leases while it creates VMs: N leases, then N releases, from 1,
# 8 and 64 goroutines at once (concurrent leases share commits: group
# commit), every lease durable (synchronous=FULL) and checked committed
# from a second connection before the releases.
#
# Targets: a volant-ipam operation (lease or release, one process) <= 15 ms;
# in-process leases >= 2,000/s. Host-local's ratio is printed for
# comparison; a process per operation cannot be 3x host-local here (that
# would be less than a Go program's start-up, see bench/README.md).
# Prints medians over ROUNDS; writes bench/results/ipam.json with every
# sample.
#
# Env: N (150), ROUNDS (5), VOLANT_IPAM (volant-ipam on PATH, else bin/),
# HOST_LOCAL (/usr/lib/cni/host-local), TAGS (go build tags for holddb and
# inproc), CONCURRENCY ("1 8 64").
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-150}
ROUNDS=${ROUNDS:-5}
HOST_LOCAL=${HOST_LOCAL:-/usr/lib/cni/host-local}
VOLANT_IPAM=${VOLANT_IPAM:-$(command -v volant-ipam || echo "$PWD/bin/volant-ipam")}
RESULT=bench/results/ipam.json
TARGET_MS=15
TARGET_INPROC=2000
CONCURRENCY=${CONCURRENCY:-1 8 64}

for tool in "$VOLANT_IPAM" "$HOST_LOCAL"; do
  [[ -x $tool ]] || { echo "bench/ipam: $tool not found (make build; apt-get install containernetworking-plugins)" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "bench/ipam: jq is needed" >&2; exit 1; }
((N >= 1 && N <= 155)) || { echo "bench/ipam: N must be 1-155 (the pool's size)" >&2; exit 1; }
mkdir -p bench/results

tmp=$(mktemp -d)
holder=
cleanup() {
  [[ -n $holder ]] && { exec 3>&-; wait "$holder" 2>/dev/null || true; }
  rm -rf "$tmp"
}
trap cleanup EXIT

export VOLANT_SUBNET=192.168.127.0/24 VOLANT_GATEWAY=192.168.127.1
export VOLANT_RANGE_START=192.168.127.100 VOLANT_RANGE_END=192.168.127.254
db_alone=$tmp/alone/volant.db
db_held=$tmp/held/volant.db
cat >"$tmp/cni.json" <<EOF
{"cniVersion":"1.0.0","name":"bench","type":"host-local",
 "ipam":{"type":"host-local","dataDir":"$tmp/host-local",
  "ranges":[[{"subnet":"192.168.127.0/24","rangeStart":"192.168.127.100","rangeEnd":"192.168.127.254","gateway":"192.168.127.1"}]]}}
EOF
# host-local only stores files; it never enters the namespace it is given.
export CNI_NETNS=/proc/self/ns/net CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni

# Create and migrate both databases once, as on a host; then hold one open.
"$VOLANT_IPAM" --db "$db_alone" list </dev/null >/dev/null
"$VOLANT_IPAM" --db "$db_held" list </dev/null >/dev/null
go build -tags "${TAGS:-libsqlite3}" -o "$tmp/holddb" ./bench/ipam/holddb
go build -tags "${TAGS:-libsqlite3}" -o "$tmp/inproc" ./bench/ipam/inproc
mkfifo "$tmp/hold.fifo"
"$tmp/holddb" "$db_held" <"$tmp/hold.fifo" >"$tmp/hold.out" &
holder=$!
exec 3>"$tmp/hold.fifo"
for _ in {1..100}; do [[ -s $tmp/hold.out ]] && break; sleep 0.05; done
[[ -s $tmp/hold.out ]] || { echo "bench/ipam: holddb did not start" >&2; exit 1; }

now() { echo "${EPOCHREALTIME/./}"; } # microseconds

# phase TOOL VERB: runs N operations, prints the elapsed microseconds.
phase() {
  local s e i
  s=$(now)
  case $1/$2 in
    alone/lease) for ((i = 0; i < N; i++)); do "$VOLANT_IPAM" --db "$db_alone" lease --vm "vm-$i" </dev/null >/dev/null; done ;;
    alone/release) for ((i = 0; i < N; i++)); do "$VOLANT_IPAM" --db "$db_alone" release --vm "vm-$i" </dev/null >/dev/null; done ;;
    held/lease) for ((i = 0; i < N; i++)); do "$VOLANT_IPAM" --db "$db_held" lease --vm "vm-$i" </dev/null >/dev/null; done ;;
    held/release) for ((i = 0; i < N; i++)); do "$VOLANT_IPAM" --db "$db_held" release --vm "vm-$i" </dev/null >/dev/null; done ;;
    alone/floor | held/floor) for ((i = 0; i < N; i++)); do "$VOLANT_IPAM" version </dev/null >/dev/null; done ;;
    cni/lease) for ((i = 0; i < N; i++)); do CNI_COMMAND=ADD CNI_CONTAINERID="vm-$i" "$HOST_LOCAL" <"$tmp/cni.json" >/dev/null; done ;;
    cni/release) for ((i = 0; i < N; i++)); do CNI_COMMAND=DEL CNI_CONTAINERID="vm-$i" "$HOST_LOCAL" <"$tmp/cni.json" >/dev/null; done ;;
    cni/floor) for ((i = 0; i < N; i++)); do CNI_COMMAND=VERSION "$HOST_LOCAL" <"$tmp/cni.json" >/dev/null; done ;;
  esac
  e=$(now)
  echo $((e - s))
}

# Correctness inside the benchmark: after a lease phase each tool holds N
# leases, after a release phase none.
check() { # tool expected
  local got
  case $1 in
    alone) got=$("$VOLANT_IPAM" --db "$db_alone" list </dev/null | jq '.leases | length') ;;
    held) got=$("$VOLANT_IPAM" --db "$db_held" list </dev/null | jq '.leases | length') ;;
    cni) got=$(find "$tmp/host-local/bench" -name '192.168.127.*' 2>/dev/null | wc -l) ;;
  esac
  [[ $got == "$2" ]] || { echo "bench/ipam: $1 holds $got leases, expected $2" >&2; exit 1; }
}

declare -A times # "tool/verb" -> space-separated microseconds per round
round() { # tool
  local l r f
  l=$(phase "$1" lease); check "$1" "$N"
  r=$(phase "$1" release); check "$1" 0
  f=$(phase "$1" floor)
  times[$1/lease]+="$l " times[$1/release]+="$r " times[$1/floor]+="$f " times[$1/total]+="$((l + r)) "
}

tools=(alone held cni)
echo "bench/ipam: $ROUNDS rounds of $N leases + $N releases, one process each; $(nproc) CPUs" >&2
for t in "${tools[@]}"; do round "$t"; done # warm-up (page cache, database pages): not counted
times=()
for ((r = 0; r < ROUNDS; r++)); do
  order=("${tools[@]:r%3}" "${tools[@]:0:r%3}")
  for t in "${order[@]}"; do round "$t"; done
  printf '  round %d:' $((r + 1)) >&2
  for t in "${tools[@]}"; do
    read -ra l <<<"${times[$t/lease]}"; read -ra x <<<"${times[$t/release]}"
    printf ' %s %d+%d ms' "$t" $((l[-1] / 1000)) $((x[-1] / 1000)) >&2
  done
  echo >&2
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
args=()
for t in "${tools[@]}"; do
  for v in lease release floor total; do
    args+=(--argjson "${t}_$v" "$(median <<<"${times[$t/$v]}")")
    args+=(--argjson "${t}_${v}_samples" "[$(tr -s ' ' '\n' <<<"${times[$t/$v]}" | grep . | paste -sd,)]")
  done
done

# In process: a fresh database, each concurrency level ROUNDS times.
echo "bench/ipam: in process, $ROUNDS rounds of $N leases + $N releases at concurrency $CONCURRENCY" >&2
# shellcheck disable=SC2086 # CONCURRENCY is a list
inproc=$("$tmp/inproc" "$tmp/inproc.db" "$N" "$ROUNDS" $CONCURRENCY)

jq -n --argjson n "$N" --argjson rounds "$ROUNDS" --argjson target_ms "$TARGET_MS" --argjson target_inproc "$TARGET_INPROC" "${args[@]}" \
  --argjson inproc "$inproc" \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg host "$(uname -srm)" --argjson cpus "$(nproc)" \
  --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
  --arg volant "$("$VOLANT_IPAM" version </dev/null | jq -r .build)" \
  --arg hostlocal "$(dpkg-query -W -f '${Version}' containernetworking-plugins 2>/dev/null || echo unknown)" '
  def ops(us): ((($n * 1000000 / us) * 10 | round) / 10);
  def ms(us): (((us / $n) / 10 | round) / 100);
  def med: sort | if length % 2 == 1 then .[(length - 1) / 2] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def tool(l; r; f; t; ls; rs; fs): {lease_ops_per_s: ops(l), release_ops_per_s: ops(r),
    ops_per_s: ops(t / 2), ms_per_op: ms(t / 2), startup_floor_ms: ms(f),
    samples_us: {lease: ls, release: rs, floor: fs}};
  {
    benchmark: "ipam", date: $date, host: $host, cpus: $cpus, loadavg: $load, n: $n, rounds: $rounds,
    method: "one process per operation, sequential from bash; per round N leases then N releases; medians over rounds (samples: microseconds per phase of N operations)",
    volant_ipam: ({build: $volant} + tool($alone_lease; $alone_release; $alone_floor; $alone_total; $alone_lease_samples; $alone_release_samples; $alone_floor_samples)),
    volant_ipam_db_held_open: tool($held_lease; $held_release; $held_floor; $held_total; $held_lease_samples; $held_release_samples; $held_floor_samples),
    host_local: ({version: $hostlocal} + tool($cni_lease; $cni_release; $cni_floor; $cni_total; $cni_lease_samples; $cni_release_samples; $cni_floor_samples)),
    ratio_ops_to_host_local: ((($cni_total / $alone_total) * 100 | round) / 100),
    ratio_ops_to_host_local_db_held_open: ((($cni_total / $held_total) * 100 | round) / 100),
    target_ms_per_op: $target_ms,
    in_process: {
      method: "lib/ipam on lib/store in one process (as volantd): N leases from C goroutines, checked committed from a second connection, then N releases; synchronous=FULL",
      levels: ($inproc | map({concurrency, leases_per_s: (.leases_per_s | med | round), releases_per_s: (.releases_per_s | med | round),
        commits_per_lease_phase: (.commits_per_lease_phase | med), samples: {leases_per_s: (.leases_per_s | map(round)), releases_per_s: (.releases_per_s | map(round))}})),
      target_leases_per_s: $target_inproc
    }
  } | .met_ms_per_op = (.volant_ipam.ms_per_op <= .target_ms_per_op)
    | .in_process |= (.met = ((.levels | map(.leases_per_s) | max) >= .target_leases_per_s))' >"$RESULT.tmp"
mv "$RESULT.tmp" "$RESULT"

jq -r '
  def row(name; t): "\(name)\(t | [.lease_ops_per_s, .release_ops_per_s, .ops_per_s, .ms_per_op, .startup_floor_ms] | map(tostring | .[0:8] | (" " * (10 - length)) + .) | join(""))";
  "                        lease/s release/s     ops/s     ms/op  start-up ms",
  row("volant-ipam          "; .volant_ipam),
  row("volant-ipam+held     "; .volant_ipam_db_held_open),
  row("host-local           "; .host_local),
  "volant-ipam: \(.volant_ipam.ms_per_op) ms per operation, target <= \(.target_ms_per_op): \(if .met_ms_per_op then "met" else "NOT met" end) (host-local: \(.ratio_ops_to_host_local)x its ops/s)",
  (.in_process.levels[] | "in process, \(.concurrency) at once: \(.leases_per_s) leases/s, \(.releases_per_s) releases/s (\(.commits_per_lease_phase) commits for \($n) leases)"),
  "in process: target >= \(.in_process.target_leases_per_s) leases/s: \(if .in_process.met then "met" else "NOT met" end)"' --argjson n "$N" "$RESULT"
echo "bench/ipam: wrote $RESULT" >&2
