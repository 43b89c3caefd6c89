#!/usr/bin/env bash
# k8s-tools.sh [DIR] — build kube-apiserver, kube-controller-manager,
# kube-scheduler and kubectl from the upstream Go module (tools/k8s: module
# k8s.io/kubernetes v1.34.4, every staging module replaced by v0.34.4) into
# DIR (default $VOLANT_K8S_BIN, else /var/cache/volant-k8s/bin), for
# tests/e2e/kubernetes.sh. No cluster can be downloaded here; these build.
#
# Only when missing or stale: DIR/.stamp records the sha256 of
# tools/k8s/go.mod and go.sum, the Go version and this recipe; when it
# matches and the four binaries are there, nothing is done. A build goes to
# a temporary directory beside DIR and its binaries are renamed into place
# only when all four built, so an interrupted build leaves the old ones.
#
# Cost (2 cores, Go 1.26): about 10-15 minutes from a cold build cache on an
# idle machine (kube-apiserver alone ~8.5 min; the others share most
# packages), ~1.1 GB of module cache, ~500 MB of binaries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-${VOLANT_K8S_BIN:-/var/cache/volant-k8s/bin}}
mod=$root/tools/k8s
tools=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
recipe="go build -o DIR/ k8s.io/kubernetes/cmd/{${tools[*]}}"
GO=${GO:-go}

stamp=$(
  cd "$mod"
  sha256sum go.mod go.sum
  "$GO" version
  echo "$recipe"
)
fresh=1
for t in "${tools[@]}"; do [[ -x $dir/$t ]] || fresh=; done
if [[ -n $fresh && -f $dir/.stamp && $(cat "$dir/.stamp") == "$stamp" ]]; then
  echo "k8s-tools: up to date in $dir" >&2
  exit 0
fi

mkdir -p "$(dirname "$dir")"
tmp=$(mktemp -d "$(dirname "$dir")/.k8s-tools-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
echo "k8s-tools: building ${tools[*]} into $dir (10-15 min on 2 idle cores)" >&2
pkgs=()
for t in "${tools[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$t"); done
(cd "$mod" && "$GO" build -o "$tmp/" "${pkgs[@]}")
mkdir -p "$dir"
for t in "${tools[@]}"; do mv -f "$tmp/$t" "$dir/$t"; done
printf '%s\n' "$stamp" >"$dir/.stamp.tmp" && mv -f "$dir/.stamp.tmp" "$dir/.stamp"
echo "k8s-tools: built in $((SECONDS - start)) s" >&2
