#!/usr/bin/env bash
# fledge.sh — fledge end to end, the way a user's shell or CI uses it: real
# binaries from PATH (make build), results piped through jq and
# volant-manifest. Builds the busybox-httpd example twice (same bytes), a
# rootfs plugin from an OCI layout made with umoci, and the boot initramfs;
# the same image copied by skopeo into a dir: with zstd layers (a relative
# path with capitals); checks artifacts with cpio, e2fsck and debugfs; a bad fledge.toml must
# fail with exit 3 and leave nothing behind. No network is used.
set -euo pipefail
for t in fledge volant-manifest jq cpio e2fsck debugfs umoci skopeo sha256sum; do
	command -v "$t" >/dev/null || { echo "$t not on PATH (make build / make deps)" >&2; exit 1; }
done
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
kestrel=()
[[ -n ${VOLANT_KESTREL:-} ]] && kestrel=(--kestrel "$VOLANT_KESTREL")
kdir=${VOLANT_KERNEL_DIR:-/var/lib/volant/kernel}
release=$(cat "$kdir/release") || fail "no guest kernel in $kdir (make kernel)"
mods=$kdir/modules/$release

# An initramfs plugin, twice: identical bytes, a valid manifest that names them.
ex=$root/examples/fledge/busybox-httpd/fledge.toml
a=$(fledge build -q -c "$ex" -o "$tmp/a" --kernel-modules "$mods" "${kestrel[@]}")
b=$(fledge build -q -c "$ex" -o "$tmp/b" --kernel-modules "$mods" "${kestrel[@]}")
jq -e '.kind == "fledge.build" and .strategy == "initramfs" and .name == "busybox-httpd"' <<<"$a" >/dev/null || fail "result $a"
[[ $(jq -r .sha256 <<<"$a") == $(jq -r .sha256 <<<"$b") ]] || fail "two builds differ"
art=$(jq -r .artifact <<<"$a")
[[ $(sha256sum "$art" | cut -d' ' -f1) == $(jq -r .sha256 <<<"$a") ]] || fail "reported sha256 is not the file's"
volant-manifest validate "$(jq -r .manifest <<<"$a")" |
	jq -e --arg url "file://$art" --arg sum "sha256:$(jq -r .sha256 <<<"$a")" \
		'.valid and .manifest.initramfs.url == $url and .manifest.initramfs.checksum == $sum' >/dev/null || fail "manifest"
zcat "$art" | cpio -t --quiet >"$tmp/list"
for p in init bin/kestrel bin/busybox bin/sh srv/www/index.html "lib/modules/$release/modules.dep"; do
	grep -qx "$p" "$tmp/list" || fail "$p missing from the initramfs"
done

# A bad fledge.toml: exit 3, one JSON error, nothing written.
printf 'version = "1"\nstrategy = "initramfs"\n[mappings]\n"x" = "relative/path"\n' >"$tmp/bad.toml"
set +e
fledge build -q -c "$tmp/bad.toml" -o "$tmp/bad-out" 2>"$tmp/err" >"$tmp/out"
rc=$?
set -e
[[ $rc == 3 ]] || fail "bad toml exited $rc"
[[ ! -s $tmp/out ]] || fail "stdout on failure"
tail -n1 "$tmp/err" | jq -e '.code == "INVALID_INPUT" and (.details.errors | length) == 1' >/dev/null || fail "error $(cat "$tmp/err")"
[[ -z $(ls -A "$tmp/bad-out" 2>/dev/null) ]] || fail "a failed build left files"

# The boot initramfs of rootfs plugins.
boot=$(fledge boot-initramfs -o "$tmp/boot.cpio.gz" --kernel-modules "$mods" "${kestrel[@]}")
zcat "$tmp/boot.cpio.gz" | cpio -t --quiet | grep -cx "lib/modules/$release/modules.dep" >/dev/null || fail "boot initramfs has no module index"
jq -e '.kind == "fledge.boot-initramfs" and (.modules | length) > 5' <<<"$boot" >/dev/null || fail "boot result $boot"

# A rootfs plugin from an OCI layout (needs root: owners are kept).
if [[ $(id -u) == 0 ]]; then
	mkdir -p "$tmp/img/bin" "$tmp/img/srv"
	cp /bin/busybox "$tmp/img/bin/"
	echo "hello" >"$tmp/img/srv/index.html"
	umoci init --layout "$tmp/layout"
	umoci new --image "$tmp/layout:1.0"
	umoci insert --image "$tmp/layout:1.0" "$tmp/img" /
	umoci config --image "$tmp/layout:1.0" --config.entrypoint /bin/busybox \
		--config.cmd=httpd --config.cmd=-f --config.cmd=-p --config.cmd=8000 --config.cmd=-h --config.cmd=/srv \
		--config.exposedports 8000/tcp
	mkdir -p "$tmp/proj"
	cat >"$tmp/proj/fledge.toml" <<-EOF
		version = "1"
		strategy = "oci_rootfs"
		[source]
		image = "oci:../layout:1.0"
	EOF
	r=$(fledge build -q -c "$tmp/proj/fledge.toml" -o "$tmp/rootfs" "${kestrel[@]}")
	img=$(jq -r .artifact <<<"$r")
	e2fsck -fn "$img" >/dev/null 2>&1 || fail "e2fsck -fn $img"
	debugfs -R 'ls /bin' "$img" 2>/dev/null | grep -cw kestrel >/dev/null || fail "no /bin/kestrel in the image"
	debugfs -R 'cat /srv/index.html' "$img" 2>/dev/null | grep -cx hello >/dev/null || fail "image content"
	volant-manifest validate "$(jq -r .manifest <<<"$r")" |
		jq -e '.manifest.workload.base_url == "http://127.0.0.1:8000" and .manifest.rootfs.fstype == "ext4" and (.manifest.workload.entrypoint | join(" ")) == "/bin/busybox httpd -f -p 8000 -h /srv"' >/dev/null ||
		fail "rootfs manifest"

	# The same image as `skopeo copy … dir:PATH` writes it, zstd layers,
	# named by a relative path with capitals.
	skopeo --insecure-policy copy -q --dest-compress --dest-compress-format zstd "oci:$tmp/layout:1.0" "dir:$tmp/Skopeo-Dir"
	grep -q zstd "$tmp/Skopeo-Dir/manifest.json" || fail "skopeo wrote no zstd layer"
	sed -i 's|^image = .*|image = "dir:../Skopeo-Dir"|' "$tmp/proj/fledge.toml"
	r=$(fledge build -q -c "$tmp/proj/fledge.toml" -o "$tmp/rootfs-dir" "${kestrel[@]}") || fail "build from dir:"
	jq -e --arg ref "dir:$tmp/Skopeo-Dir" '.image == $ref' <<<"$r" >/dev/null || fail "dir: result $r"
	img=$(jq -r .artifact <<<"$r")
	debugfs -R 'cat /srv/index.html' "$img" 2>/dev/null | grep -cx hello >/dev/null || fail "dir: image content"
else
	echo "fledge.sh: not root, skipping the rootfs build" >&2
fi
echo "fledge.sh: OK"
