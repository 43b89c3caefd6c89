#!/usr/bin/env bash
# bench/fledge/run.sh — fledge's oci_rootfs build against the pipeline users
# would script instead (skopeo copy + umoci unpack + mkfs.ext4 -d), side by
# side in one run, on the same image, from a registry on loopback and from
# a local OCI layout. Prints medians and ratios; writes
# bench/results/fledge.json.
#
# Targets: time ratio (fledge / pipeline) <= 0.8, image-size ratio <= 1.0.
#
# The pipeline runs in a mktemp directory (under $TMPDIR, /tmp by default,
# as a user's script would); it is also timed in /dev/shm ("pipeline on
# tmpfs") for comparison, since fledge unpacks there when the image fits.
# Its ext4 image is sized like a careful script would: du + 10% + 16 MiB
# for the journal and metadata.
#
# Needs root (umoci unpack and fledge keep the image's owners), skopeo,
# umoci, docker-registry, e2fsprogs, jq. Env: REPS (default 5), FLEDGE
# (default: fledge on PATH, else built from this checkout), VOLANT_KESTREL.
set -euo pipefail

REPS=${REPS:-5}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
results=$root/bench/results
mkdir -p "$results"

die() { echo "bench/fledge: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (fledge and umoci keep the image's file owners)"
for t in skopeo umoci mkfs.ext4 dumpe2fs jq; do
	command -v "$t" >/dev/null || die "$t not found (make deps)"
done
registry_bin=$(command -v docker-registry || echo /usr/bin/docker-registry)
[[ -x $registry_bin ]] || die "docker-registry not found (apt-get install docker-registry)"

work=$(mktemp -d /tmp/fledge-bench.XXXXXX)
registry_pid=
cleanup() {
	[[ -n $registry_pid ]] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null || true
	rm -rf "$work" /dev/shm/fledge-bench-base.* 2>/dev/null || true
}
trap cleanup EXIT

FLEDGE=${FLEDGE:-$(command -v fledge || true)}
if [[ -z $FLEDGE ]]; then
	echo "building fledge from $root" >&2
	tags=$(sed -n 's/^TAGS *?= *//p' "$root/Makefile")
	(cd "$root" && go build -tags "$tags" -o "$work/fledge" ./cmd/fledge)
	FLEDGE=$work/fledge
fi
KESTREL=${VOLANT_KESTREL:-}
if [[ -z $KESTREL ]]; then
	if [[ -x $(dirname "$FLEDGE")/kestrel ]]; then
		KESTREL=$(dirname "$FLEDGE")/kestrel
	else
		KESTREL=/bin/busybox # a static stand-in: only its presence matters here
	fi
fi

# --- the image: a Debian-ish tree from this machine's files, four layers ---
echo "making the benchmark image" >&2
layout=$work/layout
umoci init --layout "$layout"
umoci new --image "$layout:bench"
mkdir -p "$work/bins"
for b in perl python3.11 python3 git gdb qemu-img xz ssh tar gzip; do
	p=$(command -v "$b" || true)
	[[ -n $p ]] && cp -L "$p" "$work/bins/" || true
done
for d in /usr/share/perl /usr/share/zoneinfo /usr/lib/python3.11 /usr/lib/python3; do
	[[ -d $d ]] && umoci insert --image "$layout:bench" "$d" "$d"
done
umoci insert --image "$layout:bench" "$work/bins" /usr/local/bin
umoci insert --image "$layout:bench" /etc/ssl /etc/ssl
umoci config --image "$layout:bench" --config.entrypoint /usr/local/bin/python3 \
	--config.cmd=-m --config.cmd=http.server --config.exposedports 8000/tcp
umoci gc --layout "$layout"
image_bytes=$(du -sb "$layout" | cut -f1)

# --- a registry on loopback ---
port=
for _ in $(seq 20); do
	p=$(shuf -i 20000-60000 -n 1)
	if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[[ -n $port ]] || die "no free loopback port"
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
EOF
"$registry_bin" serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
	curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
	sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null || die "registry did not start: $(cat "$work/registry.log")"
skopeo copy -q --dest-tls-verify=false "oci:$layout:bench" "docker://127.0.0.1:$port/bench/app:1"

now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }

# fledge SOURCE -> "ms bytes free"
run_fledge() {
	local src=$1 dir=$work/fledge-$RANDOM
	mkdir -p "$dir"
	cat >"$dir/fledge.toml" <<EOF
version = "1"
strategy = "oci_rootfs"
[plugin]
name = "bench"
[agent]
local = "$KESTREL"
[source]
image = "$src"
insecure = true
EOF
	local t0 t1
	t0=$(now)
	"$FLEDGE" build -q -c "$dir/fledge.toml" -o "$dir/out" >"$dir/result.json"
	t1=$(now)
	echo "$(ms "$t0" "$t1") $(jq -r '.bytes' "$dir/result.json") $(jq -r '.filesystem.free_bytes' "$dir/result.json")"
	rm -rf "$dir"
}

# pipeline SOURCE TMPDIR -> "ms bytes free"
run_pipeline() {
	local src=$1 base=$2 dir t0 t1 mb
	dir=$(mktemp -d "$base/fledge-bench-base.XXXXXX")
	t0=$(now)
	skopeo copy -q --src-tls-verify=false "$src" "oci:$dir/image:bench"
	umoci unpack --image "$dir/image:bench" "$dir/bundle" >/dev/null
	mb=$(du -s -B1M "$dir/bundle/rootfs" | cut -f1)
	mkfs.ext4 -q -F -d "$dir/bundle/rootfs" "$dir/rootfs.img" "$((mb + mb / 10 + 16))M" >/dev/null 2>&1
	t1=$(now)
	local bytes free bs
	bytes=$(stat -c %s "$dir/rootfs.img")
	bs=$(dumpe2fs -h "$dir/rootfs.img" 2>/dev/null | awk -F: '/^Block size/ {print $2+0}')
	free=$(( $(dumpe2fs -h "$dir/rootfs.img" 2>/dev/null | awk -F: '/^Free blocks/ {print $2+0}') * bs ))
	echo "$(ms "$t0" "$t1") $bytes $free"
	rm -rf "$dir"
}

div() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.4f", a / b}'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }

declare -A T B F
sources=(registry layout)
declare -A SRC_FLEDGE=([registry]="127.0.0.1:$port/bench/app:1" [layout]="oci:$layout:bench")
declare -A SRC_PIPE=([registry]="docker://127.0.0.1:$port/bench/app:1" [layout]="oci:$layout:bench")
for s in "${sources[@]}"; do
	for i in $(seq "$REPS"); do
		# Alternate the order so neither side always runs on a warmer cache.
		order=(fledge pipeline pipeline_tmpfs)
		(( i % 2 == 0 )) && order=(pipeline_tmpfs pipeline fledge)
		for who in "${order[@]}"; do
			sync
			case $who in
			fledge) r=$(run_fledge "${SRC_FLEDGE[$s]}") ;;
			pipeline) r=$(run_pipeline "${SRC_PIPE[$s]}" "${TMPDIR:-/tmp}") ;;
			pipeline_tmpfs) r=$(run_pipeline "${SRC_PIPE[$s]}" /dev/shm) ;;
			esac
			read -r t b f <<<"$r"
			T[$s,$who]+="$t "
			B[$s,$who]=$b
			F[$s,$who]=$f
			echo "  $s $who rep $i: ${t} ms, image $b bytes, free $f" >&2
		done
	done
done

json_sources=()
printf '\n%-9s %-16s %10s %12s %12s\n' source tool median_ms image_MiB free_MiB
for s in "${sources[@]}"; do
	for who in fledge pipeline pipeline_tmpfs; do
		m=$(tr ' ' '\n' <<<"${T[$s,$who]}" | grep . | median)
		T[$s,$who,med]=$m
		printf '%-9s %-16s %10d %12.1f %12.1f\n' "$s" "$who" "$m" "$(div "${B[$s,$who]}" 1048576)" "$(div "${F[$s,$who]}" 1048576)"
	done
	tr_=$(div "${T[$s,fledge,med]}" "${T[$s,pipeline,med]}")
	trt=$(div "${T[$s,fledge,med]}" "${T[$s,pipeline_tmpfs,med]}")
	sr=$(div "${B[$s,fledge]}" "${B[$s,pipeline]}")
	printf '%-9s time ratio %.2f (target <= 0.80), vs pipeline on tmpfs %.2f; size ratio %.3f (target <= 1.00)\n' "$s" "$tr_" "$trt" "$sr"
	json_sources+=("$(jq -n --arg s "$s" \
		--argjson f "${T[$s,fledge,med]}" --argjson p "${T[$s,pipeline,med]}" --argjson pt "${T[$s,pipeline_tmpfs,med]}" \
		--argjson fb "${B[$s,fledge]}" --argjson pb "${B[$s,pipeline]}" \
		--argjson ff "${F[$s,fledge]}" --argjson pf "${F[$s,pipeline]}" \
		--arg ft "${T[$s,fledge]}" --arg pt_ "${T[$s,pipeline]}" --arg ptt "${T[$s,pipeline_tmpfs]}" \
		'{source:$s,
		  median_ms:{fledge:$f, pipeline:$p, pipeline_tmpfs:$pt},
		  runs_ms:{fledge:($ft|split(" ")|map(select(.!=""))|map(tonumber)), pipeline:($pt_|split(" ")|map(select(.!=""))|map(tonumber)), pipeline_tmpfs:($ptt|split(" ")|map(select(.!=""))|map(tonumber))},
		  image_bytes:{fledge:$fb, pipeline:$pb}, free_bytes:{fledge:$ff, pipeline:$pf},
		  time_ratio:($f/$p), time_ratio_vs_tmpfs_pipeline:($f/$pt), size_ratio:($fb/$pb),
		  time_target:0.8, size_target:1.0, time_ok:(($f/$p) <= 0.8), size_ok:(($fb/$pb) <= 1.0)}')")
done

printf '%s\n' "${json_sources[@]}" | jq -s \
	--argjson reps "$REPS" --argjson image_bytes "$image_bytes" --arg kestrel "$KESTREL" \
	--arg when "$(date -u +%FT%TZ)" --arg host "$(uname -r), $(nproc) cores" \
	'{benchmark:"fledge", when:$when, host:$host, reps:$reps,
	  image:{description:"perl, zoneinfo, python3 stdlib, a few binaries, /etc/ssl; several layers (umoci insert)", compressed_layout_bytes:$image_bytes},
	  kestrel:$kestrel, pipeline:"skopeo copy + umoci unpack + mkfs.ext4 -d (du + 10% + 16 MiB)",
	  results:.}' >"$results/fledge.json"
echo "wrote $results/fledge.json" >&2
