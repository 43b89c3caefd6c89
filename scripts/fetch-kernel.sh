#!/usr/bin/env bash
# fetch-kernel.sh [DIR] — put Debian's guest kernel and its modules in DIR
# (default $VOLANT_KERNEL_DIR or /var/lib/volant/kernel) without installing
# it as the host's kernel: `apt-get download` + `dpkg-deb -x` + `depmod -b`.
# The uncompressed vmlinux is extracted by Volant on first use
# (lib/kernel). Idempotent: a complete DIR is left alone.
set -euo pipefail

dir=${1:-${VOLANT_KERNEL_DIR:-/var/lib/volant/kernel}}
if [[ -s $dir/release && -s $dir/vmlinuz && -s $dir/modules/$(cat "$dir/release")/modules.dep ]]; then
  echo "fetch-kernel: $dir already holds $(cat "$dir/release")" >&2
  exit 0
fi
for tool in apt-get apt-cache dpkg-deb depmod; do
  command -v "$tool" >/dev/null || { echo "fetch-kernel: $tool is missing (apt-get install apt dpkg kmod)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# linux-image-amd64 is a metapackage; its dependency names the real image.
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n $pkg ]] || { echo "fetch-kernel: cannot resolve linux-image-amd64 (run apt-get update)" >&2; exit 1; }
echo "fetch-kernel: downloading $pkg" >&2
chmod 777 "$work"   # apt's _apt user downloads into the current directory
apt-get download -q "$pkg" >&2
dpkg-deb -x ./"$pkg"_*.deb root
release=$(ls root/lib/modules | head -n1)
depmod -b root "$release"

mkdir -p "$dir.tmp/modules"
cp root/boot/vmlinuz-"$release" "$dir.tmp/vmlinuz"
cp root/boot/config-"$release" "$dir.tmp/config"
cp -a root/lib/modules/"$release" "$dir.tmp/modules/"
echo "$release" > "$dir.tmp/release"
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
mv "$dir.tmp" "$dir"
echo "fetch-kernel: $release ready in $dir" >&2
