#!/usr/bin/env bash
# install-deps.sh [demo] — the Debian 12 packages Volant's builds, tests,
# benchmarks and demo use; with "demo", only what `make demo` needs.
# Idempotent; needs root. Go itself is expected at /usr/local/go or on PATH
# (https://go.dev/dl; the module proxy must be reachable).
set -euo pipefail
demo=(
  build-essential libsqlite3-dev pkg-config libgpgme-dev
  qemu-system-x86 qemu-utils busybox-static cpio e2fsprogs xz-utils kmod
  iproute2 nftables curl jq
)
pkgs=(
  build-essential libsqlite3-dev pkg-config   # cgo for go-sqlite3
  libgpgme-dev                                # lets plain `go build/test ./...` (no tags) compile containers/image
  qemu-system-x86                             # the VMM that boots guests here
  qemu-utils xfsprogs                         # qemu-img: overlays on snapshots' disks; xfs: the reflink test's filesystem
  busybox-static cpio e2fsprogs xz-utils kmod # initramfs/rootfs building, kernel extraction, depmod
  iproute2 iptables nftables                  # bridge, taps, NAT
  systemd                                     # systemd-socket-activate, systemd-analyze
  dbus                                        # a private bus for the systemd runner test
  skopeo umoci docker-registry                # fledge tests and benchmark baselines
  etcd-server openssl                         # the Kubernetes control plane of tests/e2e/kubernetes.sh
  containernetworking-plugins                 # CNI host-local, the IPAM benchmark baseline
  curl jq tmux hyperfine wrk procps psmisc    # e2e scripts, console test, benchmarks
  dropbear-bin openssh-client                 # bench/exec: ssh into a guest as the baseline
  zsh                                         # volar's zsh completion test
  nodejs npm                                  # the MCP client test (official TypeScript SDK)
  prometheus                                  # scrapes volantd in the metrics test (cmd/volantd)
  minisign                                    # checks what fledge build --sign writes (cmd/fledge)
  strace                                      # sees volant-ipam fsync a lease before printing it (cmd/volant-ipam)
)
[[ ${1:-} == demo ]] && pkgs=("${demo[@]}")
missing=()
for p in "${pkgs[@]}"; do
  # A Node.js installed another way (NodeSource's nodejs bundles npm and
  # conflicts with Debian's npm) serves as well.
  case $p in nodejs | npm) command -v node >/dev/null && command -v npm >/dev/null && continue ;; esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
