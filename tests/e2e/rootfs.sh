#!/usr/bin/env bash
# rootfs.sh — an OCI image to a running VM, the way an operator does it, in
# a network namespace this script makes and deletes: an image (busybox and
# a start script that counts boots on its root disk) is built with umoci,
# pushed with skopeo to Debian's docker-registry on the namespace's
# loopback, turned into an ext4 rootfs plugin by `fledge build`
# (oci_rootfs, docker://), installed with volar and booted with
# `volar vms create --wait`; HTTP 200 through the VM's address. After
# `volar vms restart` the page shows a second boot: the disk's writes
# persist (each VM boots its own copy of the plugin's image). A snapshot
# of the VM (`volar vms snapshot`) starts a second VM (`--from-snapshot`)
# that serves the page its disk held then, each VM's disk stays its own
# across their reboots, and `volar vms restore` rolls the first back. Then the
# same image through volantd: `volar plugins install --image` (built once,
# cached by digest) and `volar run`.
set -euo pipefail
cd "$(dirname "$0")/../.."
VL_NAME=rootfs
source scripts/lib.sh
vl_need volantd volar volant-launch fledge kestrel jq curl busybox umoci skopeo docker-registry
vl_netns "vt-e2e-rootfs-$$"
t=$VL_TMP

# The image: busybox, a start script, a page directory.
umoci init --layout "$t/oci" >/dev/null
umoci new --image "$t/oci:web" >/dev/null
umoci unpack --image "$t/oci:web" "$t/bundle" >/dev/null
r=$t/bundle/rootfs
mkdir -p "$r/bin" "$r/var/www" "$r/var/lib/web"
cp "$(command -v busybox)" "$r/bin/busybox"
ln -s busybox "$r/bin/sh"
cat >"$r/bin/start" <<'SH'
#!/bin/sh
n=$(cat /var/lib/web/boots 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" >/var/lib/web/boots
sync
echo "boots=$n" >/var/www/index.html
exec /bin/busybox httpd -f -p 8080 -h /var/www
SH
chmod 755 "$r/bin/start"
umoci repack --image "$t/oci:web" "$t/bundle" >/dev/null
umoci config --image "$t/oci:web" --config.entrypoint /bin/start --config.exposedports 8080/tcp >/dev/null

# A registry on the namespace's loopback, the image pushed to it.
cat >"$t/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $t/registry}}
http: {addr: 127.0.0.1:5000}
YML
vl_in docker-registry serve "$t/registry.yml" >"$t/registry.log" 2>&1 &
registry=$!
vl_wait 20 vl_in curl -fsS http://127.0.0.1:5000/v2/ >/dev/null || vl_fail "the registry did not come up"
vl_in skopeo copy -q --dest-tls-verify=false "oci:$t/oci:web" docker://127.0.0.1:5000/web:1 || vl_fail "skopeo push"

# fledge: docker:// image → ext4 rootfs plugin + manifest.
mkdir -p "$t/build"
cat >"$t/build/fledge.toml" <<TOML
version = "1"
strategy = "oci_rootfs"
[plugin]
name = "web"
version = "1.0.0"
[source]
image = "docker://127.0.0.1:5000/web:1"
insecure = true
[health_check]
endpoint = "/"
interval_ms = 1000
TOML
vl_in fledge build -q -c "$t/build/fledge.toml" -o "$t/out" >"$t/fledge.json" || vl_fail "fledge build"
manifest=$(jq -r .manifest "$t/fledge.json")
jq -e '.rootfs.url and .workload.base_url == "http://127.0.0.1:8080" and .network.agent_port == 8081' "$manifest" >/dev/null ||
  vl_fail "fledge's manifest: $(cat "$manifest")"

vl_volantd --health-interval 2s --stop-timeout 10s
volar plugins install --manifest "$manifest" >/dev/null || vl_fail "plugins install"
line=$(volar vms create web1 --plugin web --wait 2>/dev/null) || vl_fail "vms create --wait"
[[ $(head -1 <<<"$line") =~ ^VM\ web1\ created\ with\ IP\ ([0-9.]+)$ ]] || vl_fail "create printed: $line"
ip=${BASH_REMATCH[1]}
[[ $(vl_get "http://$ip:8080/") == "boots=1" ]] || vl_fail "first boot: $(vl_get "http://$ip:8080/" 2>&1)"

volar vms restart web1 >/dev/null || vl_fail "restart"
volar vms wait web1 --state running >/dev/null || vl_fail "web1 did not run again"
[[ $(vl_get "http://$ip:8080/") == "boots=2" ]] || vl_fail "after the restart the page says $(vl_get "http://$ip:8080/" 2>&1): the disk's writes were lost"
# The plugin's own image still matches its checksum: the VM wrote to its copy.
[[ "sha256:$(sha256sum "$(jq -r .rootfs.url "$manifest" | sed 's|^file://||')" | cut -d' ' -f1)" == "$(jq -r .rootfs.checksum "$manifest")" ]] ||
  vl_fail "the plugin's rootfs image changed"
page_is() { [[ $(vl_get "$1") == "$2" ]]; }
# A snapshot of the VM with its root disk: its disk copied point-in-time,
# a new VM started from it (its own image of the copy: a reflink, else a
# qcow2 overlay its jailed hypervisor reads through) serves what the disk
# held then, and each VM's disk stays its own; then web1 rolls back.
snap=$(volar -o json vms snapshot web1 --name web1-warm) || vl_fail "vms snapshot: $snap"
jq -e '.disks | any(.role == "rootfs" and (.method == "reflink" or .method == "data-copy"))' <<<"$snap" >/dev/null ||
  vl_fail "the snapshot's disks: $(jq -c .disks <<<"$snap")"
line=$(volar vms create web2 --from-snapshot web1-warm --wait 2>&1) || vl_fail "vms create --from-snapshot: $line"
[[ $(head -1 <<<"$line") =~ ^VM\ web2\ created\ with\ IP\ ([0-9.]+)$ ]] || vl_fail "create printed: $line"
ip2=${BASH_REMATCH[1]}
[[ $ip2 != "$ip" && $(vl_get "http://$ip2:8080/") == "boots=2" ]] || vl_fail "web2 ($ip2) from the snapshot: $(vl_get "http://$ip2:8080/" 2>&1)"
ls "$t/data/vms/web2/disks/" | grep -q '^rootfs.from-snapshot.\(raw\|qcow2\)$' || vl_fail "web2's disks: $(ls "$t/data/vms/web2/disks/" 2>&1)"
volar vms restart web2 >/dev/null && volar vms wait web2 --state running >/dev/null || vl_fail "web2 did not run again"
vl_wait 30 page_is "http://$ip2:8080/" boots=3 || vl_fail "web2 after its restart: $(vl_get "http://$ip2:8080/" 2>&1)"
volar vms restart web1 >/dev/null && volar vms wait web1 --state running >/dev/null || vl_fail "web1 did not run a third time"
vl_wait 30 page_is "http://$ip:8080/" boots=3 || vl_fail "web1 after web2 booted on its copy: $(vl_get "http://$ip:8080/" 2>&1) (not its own disk?)"
volar vms restore web1 web1-warm >/dev/null || vl_fail "vms restore"
volar vms wait web1 --state running >/dev/null || vl_fail "web1 did not run from its snapshot"
vl_wait 30 page_is "http://$ip:8080/" boots=2 || vl_fail "web1 rolled back: $(vl_get "http://$ip:8080/" 2>&1)"
volar vms delete web2 >/dev/null || vl_fail "delete web2"
volar snapshots delete web1-warm >/dev/null 2>&1 && vl_fail "the snapshot web1 runs from was deleted"
vl_log "snapshot of a VM with a root disk: a VM from it and a roll-back both serve boots=2"
# The same image in one step: volantd builds the plugin (cached by digest:
# a second install builds nothing) and volar run boots a VM from it.
volar plugins install --image docker://127.0.0.1:5000/web:1 --insecure >"$t/install.txt" 2>&1 || vl_fail "plugins install --image: $(cat "$t/install.txt")"
grep -q "installed (built from docker://127.0.0.1:5000/web:1)" "$t/install.txt" || vl_fail "install --image said: $(cat "$t/install.txt")"
volar plugins install --image docker://127.0.0.1:5000/web:1 --insecure 2>&1 | grep -q "already built" || vl_fail "the second install built again"
vm=$(volar -o json run --insecure --name run1 docker://127.0.0.1:5000/web:1 2>"$t/run.txt") || vl_fail "volar run: $(cat "$t/run.txt")"
ip=$(jq -r 'select(.state == "running") | .ip' <<<"$vm")
# A plugin built by volantd has no health check: running means the
# workload started, and its httpd listens a moment later.
[[ -n $ip ]] && vl_wait 60 page_is "http://$ip:8080/" boots=1 || vl_fail "volar run: $vm $(vl_get "http://$ip:8080/" 2>&1)"
kill "$registry"
vl_log "ok"
