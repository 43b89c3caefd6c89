#!/usr/bin/env bash
# kubernetes.sh — two Volant hosts join a real Kubernetes control plane as
# nodes (volant-kubelet), and pods run as microVMs on both.
#
# Two network namespaces made here, linked by a veth pair (172.30.0.1 and
# .2, the nodes' InternalIPs): host A holds etcd (Debian's etcd-server),
# kube-apiserver, kube-controller-manager (--allocate-node-cidrs
# --cluster-cidr 10.244.0.0/16) and kube-scheduler built by `make
# k8s-tools` ($VOLANT_K8S_BIN) on its loopback (the apiserver also on
# 172.30.0.1, for host B), and each host its own volantd and
# volant-kubelet, authorized only by contrib/kubernetes/rbac.yaml, with its
# own kubelet serving certificate and port: node A with a token of a user
# in the group volant:nodes, node B with only a bootstrap token (TLS
# bootstrap: its CSR approved by the controller-manager's csrapproving
# controller, its identity system:node:vol-b bound to the ClusterRole). The image is an OCI layout written here
# (no registry): busybox httpd serving a page, and a start script that logs.
#
# Checked, with kubectl: node B's one CSR approved and its certificate
# and kubeconfig written (reused when it restarts: still one CSR); both
# nodes register Ready with Volant's labels,
# the volant.dev/microvm taint, a lease and a podCIDR the controller-manager
# gave them, which each volantd then takes as its guest subnet; each
# volant-kubelet routes the other node's podCIDR via its InternalIP
# (host-gw); a Deployment of 4 replicas that tolerates the taint becomes
# available over both nodes (httpGet readiness probe, env from a
# ConfigMap, a Secret volume), each pod a VM whose IP, from its node's
# podCIDR, is its pod IP and serves the page; volant-kubelet's Built,
# Created and Started events are on the pods; /stats/summary (through the
# API server's node proxy) gives each pod its VM's CPU time, memory
# (hypervisor and guest) and network, the node their sums, and
# /metrics/resource the same as series; a pod on host A fetches the
# page of a pod on host B; the Service's EndpointSlice lists the 4 pod IPs;
# `kubectl logs` shows the workload's output; `kubectl exec` runs in the
# guest (with -it in a terminal; /etc/hostname, the Secret's file, the ConfigMap's env, the exit
# status, the service account volume: namespace, CA, and a token bound to
# the pod that a TokenReview accepts); the kubelet API refuses a client
# without a certificate and one RBAC grants nothing (403); a pod the provider cannot run (two
# containers) fails with VolantUnsupported; kill -9 of volant-kubelet A
# and a restart adopts the VMs (same pod IPs, no second VM); scale to 1
# and back to 4; host B
# stopped (every process in its namespace killed: volantd, volant-kubelet,
# the hypervisors): node B NotReady, its pods evicted within the
# tolerationSeconds (5) and replaced on node A (the seconds are printed),
# and once B's volantd and volant-kubelet are back, the VMs of the evicted
# pods are gone there; deleting the Deployment leaves no VM, no lease and
# no tap on either host. Timings are printed.
set -euo pipefail
cd "$(dirname "$0")/../.."
VL_NAME=k8s
source scripts/lib.sh
K8S=${VOLANT_K8S_BIN:-/var/cache/volant-k8s/bin}
export PATH=$K8S:$PATH
vl_need volantd volar volant-kubelet volant-launch volant-ipam kestrel etcd kube-apiserver kube-controller-manager kube-scheduler kubectl \
  openssl jq curl busybox umoci
vl_netns "vt-e2e-k8s-$$" # host A, and the control plane
t=$VL_TMP
NSB="vt-e2e-k8sb-$$"    # host B
b_daemon=
cleanup_b() {
  if [[ -n $b_daemon ]]; then
    VOLANT_HOST=$t/b/volantd.sock volar -q vms list 2>/dev/null | VOLANT_HOST=$t/b/volantd.sock xargs -r -n1 volar -q vms delete >/dev/null 2>&1 || true
  fi
  local p
  for p in $(ip netns pids "$NSB" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$NSB" 2>/dev/null || true
}
k8s_cleanup() {
  local rc=$?
  set +e # (exit) below must not end the handler
  [[ -n $VL_KEEP ]] || cleanup_b
  (exit $rc)
  vl_cleanup
}
trap k8s_cleanup EXIT
ip netns add "$NSB"
ip -n "$NSB" link set lo up
ip -n "$VL_NS" link add veth0 type veth peer name veth0 netns "$NSB"
ip_a=172.30.0.1 ip_b=172.30.0.2
ip -n "$VL_NS" addr add $ip_a/24 dev veth0
ip -n "$NSB" addr add $ip_b/24 dev veth0
ip -n "$VL_NS" link set veth0 up
ip -n "$NSB" link set veth0 up
# dump: what the hosts say, for a failure.
dump() {
  local h
  for h in a b; do
    echo "--- host $h: VMs" >&2
    VOLANT_HOST=$([[ $h == a ]] && echo "$VOLANT_HOST" || echo "$t/b/volantd.sock") volar -o json vms list 2>&1 |
      jq -c '.[] | {name, state, ip, health, error}' >&2 || true
    local sock vm
    sock=$([[ $h == a ]] && echo "$VOLANT_HOST" || echo "$t/b/volantd.sock")
    for vm in $(VOLANT_HOST=$sock volar -o json vms list 2>/dev/null | jq -r '.[] | select(.state != "running") | .name'); do
      local d=$t/data/vms/$vm
      [[ $h == b ]] && d=$t/b/data/vms/$vm
      echo "--- $vm (host $h): $(ls "$d" 2>&1 | tr '\n' ' ')" >&2
      tail -n 15 "$d"/*.log >&2 || true
      pgrep -af "$vm" | cut -c1-200 >&2 || true
    done
    echo "--- volant-kubelet $h" >&2
    tail -n 25 "$t/kubelet-$h.log" >&2 || true
  done
  echo "--- volantd b" >&2
  tail -n 25 "$t/b/volantd.log" >&2 || true
}
volar_b() { VOLANT_HOST=$t/b/volantd.sock volar "$@"; }
t0=$SECONDS
since() { echo "$((SECONDS - $1))s"; }

# --- certificates and credentials -------------------------------------
pki=$t/pki
mkdir -p "$pki"
cert() { # cert NAME SUBJ [SANS]
  local name=$1 subj=$2 sans=${3:-}
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  local ext=$pki/$name.ext
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' >"$ext"
  [[ -n $sans ]] && echo "subjectAltName=$sans" >>"$ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 -extfile "$ext" \
    -out "$pki/$name.crt" 2>/dev/null
}
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -subj "/CN=volant-e2e-ca" -days 2 -out "$pki/ca.crt" 2>/dev/null
cert apiserver "/CN=kube-apiserver" "IP:127.0.0.1,IP:$ip_a,DNS:localhost,IP:10.96.0.1,DNS:kubernetes.default.svc"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
# Each node its own serving certificate, with its InternalIP, and its own
# kubelet port (the trap of nodes sharing an address does not bite here,
# but the port the node announces is what the apiserver must use).
cert kubelet-a "/CN=system:node:vol-a" "IP:$ip_a,DNS:vol-a"
cert kubelet-b "/CN=system:node:vol-b" "IP:$ip_b,DNS:vol-b"
cert nobody "/CN=nobody" # a user RBAC grants nothing
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
admin_token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
node_token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
# Node B has only a bootstrap token (TLS bootstrap): ID 6 and secret 16
# characters of [a-z0-9].
boot_id=$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')
boot_secret=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$pki/tokens.csv" <<CSV
$admin_token,admin,admin,system:masters
$node_token,volant-node-a,volant-node-a,volant:nodes
CSV
kubeconfig() { # kubeconfig FILE TOKEN [SERVER]
  cat >"$1" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://${3:-127.0.0.1}:6443", certificate-authority: "$pki/ca.crt"}}]
users: [{name: u, user: {token: "$2"}}]
contexts: [{name: e2e, context: {cluster: e2e, user: u}}]
current-context: e2e
YAML
}
kubeconfig "$t/admin.kubeconfig" "$admin_token"
kubeconfig "$t/node-a.kubeconfig" "$node_token"
kubeconfig "$t/node-b-bootstrap.kubeconfig" "$boot_id.$boot_secret" $ip_a
export KUBECONFIG=$t/admin.kubeconfig
k() { vl_in kubectl "$@"; }

# --- the control plane --------------------------------------------------
vl_in etcd --data-dir "$t/etcd" --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 >"$t/etcd.log" 2>&1 &
vl_in kube-apiserver --etcd-servers http://127.0.0.1:2379 --bind-address 0.0.0.0 --advertise-address $ip_a --secure-port 6443 \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" --client-ca-file "$pki/ca.crt" \
  --token-auth-file "$pki/tokens.csv" --enable-bootstrap-token-auth --authorization-mode Node,RBAC --service-cluster-ip-range 10.96.0.0/16 \
  --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP >"$t/apiserver.log" 2>&1 &
ready() { k get --raw /readyz >/dev/null 2>&1; }
vl_wait 120 ready || { tail -20 "$t/apiserver.log" >&2; vl_fail "kube-apiserver did not become ready"; }
vl_in kube-controller-manager --kubeconfig "$KUBECONFIG" --bind-address 127.0.0.1 --leader-elect=false \
  --allocate-node-cidrs --cluster-cidr 10.244.0.0/16 --node-cidr-mask-size 24 \
  --node-monitor-period 2s --node-monitor-grace-period 20s \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" --use-service-account-credentials=false \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  >"$t/controller-manager.log" 2>&1 &
vl_in kube-scheduler --kubeconfig "$KUBECONFIG" --bind-address 127.0.0.1 --leader-elect=false >"$t/scheduler.log" 2>&1 &
k apply -f contrib/kubernetes/rbac.yaml >/dev/null || vl_fail "applying the RBAC"
# TLS bootstrap, as kubeadm sets it up: the bootstrap token's secret, its
# group may send node CSRs that the csrapproving controller approves, and
# nodes may renew their own certificates (selfnodeclient), and the
# identity node B gets (system:node:vol-b) is given volant-kubelet's
# ClusterRole.
k -n kube-system create secret generic "bootstrap-token-$boot_id" --type bootstrap.kubernetes.io/token \
  --from-literal token-id="$boot_id" --from-literal token-secret="$boot_secret" --from-literal usage-bootstrap-authentication=true \
  --from-literal expiration="$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)" >/dev/null
k create clusterrolebinding volant-e2e-bootstrap --clusterrole system:node-bootstrapper --group system:bootstrappers >/dev/null
k create clusterrolebinding volant-e2e-autoapprove --clusterrole system:certificates.k8s.io:certificatesigningrequests:nodeclient \
  --group system:bootstrappers >/dev/null
k create clusterrolebinding volant-e2e-autoapprove-renewal --clusterrole system:certificates.k8s.io:certificatesigningrequests:selfnodeclient \
  --group system:nodes >/dev/null
k create clusterrolebinding volant-kubelet-vol-b --clusterrole volant-kubelet --user system:node:vol-b >/dev/null
vl_log "control plane up in $(since $t0)"

# --- the image: an OCI layout, no registry ------------------------------
umoci init --layout "$t/oci" >/dev/null
umoci new --image "$t/oci:web" >/dev/null
umoci unpack --image "$t/oci:web" "$t/bundle" >/dev/null
r=$t/bundle/rootfs
mkdir -p "$r/bin" "$r/var/www" "$r/etc"
cp "$(command -v busybox)" "$r/bin/busybox"
for c in sh cat echo hostname nc printf; do ln -s busybox "$r/bin/$c"; done
echo "built for volant-e2e" >"$r/etc/motd"
cat >"$r/bin/start" <<'SH'
#!/bin/sh
echo "page of $(cat /etc/hostname) greeting=$GREETING" >/var/www/index.html
echo "web started greeting=$GREETING"
exec /bin/busybox httpd -f -p 8080 -h /var/www
SH
chmod 755 "$r/bin/start"
umoci repack --image "$t/oci:web" "$t/bundle" >/dev/null
umoci config --image "$t/oci:web" --config.entrypoint /bin/start --config.exposedports 8080/tcp >/dev/null
image="oci:$t/oci:web"

# --- the Volant nodes ----------------------------------------------------
# volantd starts on its default subnet; volant-kubelet makes the node's
# podCIDR its guest subnet.
# One boot at a time per host: under TCG on a loaded 2-core machine, 4 boots
# at once left guests stalled in stage 1.
vl_volantd --health-interval 2s --stop-timeout 5s --max-booting 1
mkdir -p "$t/b"
b_up() { volar_b -o json version | jq -e '.server != null' >/dev/null; }
start_volantd_b() {
  # Not through a subshell: $! must be volantd (ip netns exec execs it).
  ip netns exec "$NSB" volantd --socket "$t/b/volantd.sock" --data-dir "$t/b/data" --run-root "$t/b/run" \
    --kernel "${VOLANT_KERNEL_DIR:-/var/lib/volant/kernel}" --kestrel "${VOLANT_KESTREL:-$(command -v kestrel)}" \
    --vmm "${VOLANT_VMM:-auto}" --artifact-dir "$t" --health-interval 2s --stop-timeout 5s --max-booting 1 >>"$t/b/volantd.log" 2>&1 &
  b_daemon=$!
  vl_wait 30 b_up || { tail -20 "$t/b/volantd.log" >&2; vl_fail "volantd B did not come up"; }
}
start_volantd_b
kubelet_pid=
start_kubelet() {
  ip netns exec "$VL_NS" volant-kubelet --kubeconfig "$t/node-a.kubeconfig" --nodename vol-a --node-ip $ip_a --port 10250 \
    --tls-cert-file "$pki/kubelet-a.crt" --tls-private-key-file "$pki/kubelet-a.key" --client-ca-file "$pki/ca.crt" \
    --cpu 4 -l volant.dev/zone=a >>"$t/kubelet-a.log" 2>&1 &
  kubelet_pid=$!
}
kubelet_b_pid=
start_kubelet_b() {
  # Not through a function: $! must be volant-kubelet (ip netns exec and env exec it).
  ip netns exec "$NSB" env VOLANT_HOST="$t/b/volantd.sock" volant-kubelet --kubeconfig "$t/b/node.kubeconfig" \
    --bootstrap-kubeconfig "$t/node-b-bootstrap.kubeconfig" --cert-dir "$t/b/pki" --nodename vol-b --node-ip $ip_b \
    --port 10251 --tls-cert-file "$pki/kubelet-b.crt" --tls-private-key-file "$pki/kubelet-b.key" --client-ca-file "$pki/ca.crt" \
    --cpu 4 -l volant.dev/zone=b >>"$t/kubelet-b.log" 2>&1 &
  kubelet_b_pid=$!
}
t1=$SECONDS
start_kubelet
start_kubelet_b
is_ready() { k get node "$1" -o json | jq -e 'any(.status.conditions[]; .type == "Ready" and .status == "True")' >/dev/null; }
node_ready() { is_ready vol-a; }
vl_wait 60 is_ready vol-a || { tail -20 "$t/kubelet-a.log" >&2; vl_fail "node vol-a did not become Ready"; }
vl_wait 60 is_ready vol-b || { tail -20 "$t/kubelet-b.log" >&2; vl_fail "node vol-b did not become Ready"; }
vl_log "nodes Ready $(since $t1) after volant-kubelet started"
# Node B bootstrapped: one CSR, sent with the bootstrap token, approved by
# the controller-manager, and a certificate for system:node:vol-b.
csrs=$(k get csr -o json | jq -c --arg u "system:bootstrap:$boot_id" '[.items[] | select(.spec.username == $u)]')
jq -e 'length == 1 and (.[0].spec.signerName == "kubernetes.io/kube-apiserver-client-kubelet") and
  any(.[0].status.conditions[]; .type == "Approved" and .reason == "AutoApproved")' <<<"$csrs" >/dev/null ||
  vl_fail "node B's CSRs: $csrs"
openssl x509 -in "$t/b/pki/volant-kubelet-client-current.pem" -noout -subject | grep -q 'O *= *system:nodes, CN *= *system:node:vol-b' ||
  vl_fail "node B's certificate: $(openssl x509 -in "$t/b/pki/volant-kubelet-client-current.pem" -noout -subject 2>&1)"
grep -q "client-certificate: $t/b/pki/volant-kubelet-client-current.pem" "$t/b/node.kubeconfig" || vl_fail "node B's kubeconfig: $(cat "$t/b/node.kubeconfig")"
declare -A cidr
for n in vol-a vol-b; do
  node=$(k get node $n -o json)
  ip=$ip_a
  [[ $n == vol-b ]] && ip=$ip_b
  jq -e '(.spec.podCIDR | startswith("10.244.")) and .metadata.labels.type == "volant-microvm" and .metadata.labels["volant.dev/zone"] == "'${n#vol-}'"
    and .metadata.labels["kubernetes.io/os"] == "linux" and any(.spec.taints[]; .key == "volant.dev/microvm" and .effect == "NoSchedule")
    and (.status.capacity.pods | tonumber) > 100 and any(.status.addresses[]; .type == "InternalIP" and .address == "'$ip'")
    and any(.status.conditions[]; .type == "NetworkUnavailable" and .status == "False")' \
    <<<"$node" >/dev/null || vl_fail "node object: $node"
  cidr[$n]=$(jq -r .spec.podCIDR <<<"$node")
  # A lease heartbeat.
  k -n kube-node-lease get lease $n >/dev/null || vl_fail "no node lease for $n"
done
[[ ${cidr[vol-a]} != "${cidr[vol-b]}" ]] || vl_fail "both nodes have podCIDR ${cidr[vol-a]}"
[[ $(curl -s --unix-socket "$VOLANT_HOST" http://v/api/v1/network | jq -r .subnet) == "${cidr[vol-a]}" ]] ||
  vl_fail "volantd A's subnet is not vol-a's podCIDR ${cidr[vol-a]}"
[[ $(curl -s --unix-socket "$t/b/volantd.sock" http://v/api/v1/network | jq -r .subnet) == "${cidr[vol-b]}" ]] ||
  vl_fail "volantd B's subnet is not vol-b's podCIDR ${cidr[vol-b]}"
vl_log "podCIDRs: vol-a ${cidr[vol-a]}, vol-b ${cidr[vol-b]}"
# host-gw: each host routes the other's podCIDR via its InternalIP.
route_to() { ip -n "$1" -4 route show "$2" proto 86 | grep -q "via $3"; }
vl_wait 20 route_to "$VL_NS" "${cidr[vol-b]}" $ip_b || vl_fail "host A has no route to ${cidr[vol-b]}: $(ip -n "$VL_NS" route)"
vl_wait 20 route_to "$NSB" "${cidr[vol-a]}" $ip_a || vl_fail "host B has no route to ${cidr[vol-a]}: $(ip -n "$NSB" route)"

# --- a Deployment over both nodes ---------------------------------------
k create configmap web-config --from-literal greeting=hello-from-configmap >/dev/null
k create secret generic web-secret --from-literal password=hunter2 >/dev/null
cat >"$t/web.yaml" <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      tolerations:
        - {key: volant.dev/microvm, operator: Exists, effect: NoSchedule}
        - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 5}
        - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 5}
      nodeSelector: {type: volant-microvm}
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app: web}}}
      containers:
        - name: web
          image: "$image"
          ports: [{name: http, containerPort: 8080}]
          env: [{name: GREETING, valueFrom: {configMapKeyRef: {name: web-config, key: greeting}}}]
          resources: {limits: {cpu: "1", memory: 128Mi}}
          readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
          volumeMounts: [{name: secret, mountPath: /etc/web-secret}]
      volumes: [{name: secret, secret: {secretName: web-secret}}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
YAML
t2=$SECONDS
k apply -f "$t/web.yaml" >/dev/null
available() { k get deploy web -o json | jq -e ".status.availableReplicas == $1 and .status.replicas == $1" >/dev/null; }
vl_wait 300 available 4 || {
  k get pods -o wide >&2; dump
  vl_fail "the Deployment did not become available"
}
vl_log "4 replicas Ready $(since $t2) after kubectl apply (image builds and 4 VM boots on 2 hosts under $(grep -q kvm /proc/cpuinfo && echo KVM || echo TCG))"
pods=$(k get pods -l app=web -o json)
mapfile -t ips < <(jq -r '.items[].status.podIP' <<<"$pods" | sort)
[[ ${#ips[@]} == 4 ]] || vl_fail "pod IPs: ${ips[*]}"
vms_a=$(volar -o json vms list)
vms_b=$(volar_b -o json vms list)
in_cidr() { # in_cidr IP CIDR (a /24)
  [[ ${1%.*} == "${2%.*}" ]]
}
for n in vol-a vol-b; do
  mapfile -t nips < <(jq -r --arg n $n '.items[] | select(.spec.nodeName == $n) | .status.podIP' <<<"$pods")
  ((${#nips[@]} >= 1)) || vl_fail "no pod on $n: $(k get pods -o wide)"
  vms=$vms_a
  [[ $n == vol-b ]] && vms=$vms_b
  [[ $(jq length <<<"$vms") == "${#nips[@]}" ]] || vl_fail "$n: $(jq length <<<"$vms") VMs for ${#nips[@]} pods"
  for ip in "${nips[@]}"; do
    in_cidr "$ip" "${cidr[$n]}" || vl_fail "pod IP $ip is not in $n's podCIDR ${cidr[$n]}"
    jq -e --arg ip "$ip" --arg n $n 'any(.[]; .ip == $ip and .state == "running" and .labels["volant.dev/node"] == $n)' <<<"$vms" >/dev/null ||
      vl_fail "no running VM on $n has pod IP $ip: $vms"
  done
done
# Events on a pod: the image build, the VM's create and the workload's
# start, from volant-kubelet.
p1=$(jq -r '.items[0].metadata.name' <<<"$pods")
ev() { k get events --field-selector involvedObject.name="$p1" -o json | jq -e '[.items[] | select(.source.component == "volant-kubelet") | .reason] as $r |
  ($r | index("Built")) != null and ($r | index("Created")) != null and ($r | index("Started")) != null' >/dev/null; }
vl_wait 20 ev || vl_fail "events of $p1: $(k get events --field-selector involvedObject.name="$p1" -o json | jq -c '[.items[] | {reason, source}]')"
vl_log "spread: vol-a $(jq length <<<"$vms_a"), vol-b $(jq length <<<"$vms_b")"
for ip in "${ips[@]}"; do
  page=$(vl_get "http://$ip:8080/") || vl_fail "GET $ip from host A"
  [[ $page == *"greeting=hello-from-configmap"* ]] || vl_fail "the page of $ip: $page"
done
# /stats/summary and /metrics/resource through the API server's node
# proxy: each pod of the node with its VM's CPU time, the hypervisor's
# memory, the guest's memory and its tap's counters; the node the sums.
stats_ok() { # stats_ok NODE
  local s want
  s=$(k get --raw "/api/v1/nodes/$1/proxy/stats/summary") || return 1
  want=$(k get pods -l app=web -o json | jq -c --arg n "$1" '[.items[] | select(.spec.nodeName == $n) | .metadata.name] | sort')
  jq -e --argjson want "$want" --arg n "$1" '.node.nodeName == $n and ([.pods[].podRef.name] | sort) == $want and
    all(.pods[]; .cpu.usageCoreNanoSeconds > 1e8 and .memory.workingSetBytes > 32*1048576 and .memory.workingSetBytes < 2048*1048576
      and .containers[0].name == "web" and .containers[0].memory.workingSetBytes > 1048576
      and .containers[0].memory.workingSetBytes < 128*1048576 and .containers[0].memory.availableBytes > 0 and .network.rxBytes > 0) and
    .node.memory.workingSetBytes == ([.pods[].memory.workingSetBytes] | add) and
    .node.cpu.usageCoreNanoSeconds >= ([.pods[].cpu.usageCoreNanoSeconds] | add)' <<<"$s" >/dev/null
}
for n in vol-a vol-b; do
  vl_wait 30 stats_ok $n || vl_fail "/stats/summary of $n: $(k get --raw "/api/v1/nodes/$n/proxy/stats/summary" 2>&1 | head -c 3000)"
done
k get --raw /api/v1/nodes/vol-b/proxy/metrics/resource | grep -q '^container_cpu_usage_seconds_total{container="web",namespace="default",pod="web-' ||
  vl_fail "/metrics/resource of vol-b: $(k get --raw /api/v1/nodes/vol-b/proxy/metrics/resource 2>&1 | head -20)"
vl_log "stats of a pod on vol-a: $(k get --raw /api/v1/nodes/vol-a/proxy/stats/summary | jq -r '.pods[0] |
  "CPU \(.cpu.usageCoreNanoSeconds / 1e9 | . * 100 | round / 100) s, hypervisor RSS \(.memory.workingSetBytes / 1048576 | round) MiB, guest used \(.containers[0].memory.workingSetBytes / 1048576 | round) MiB, rx \(.network.rxBytes) B"')"
eps() { k get endpointslices -l kubernetes.io/service-name=web -o json | jq -r '[.items[].endpoints[]? | select(.conditions.ready) | .addresses[]] | sort | join(" ")'; }
eps_match() { [[ $(eps) == "${ips[*]}" ]]; }
vl_wait 30 eps_match || vl_fail "EndpointSlice: $(eps), want ${ips[*]}"

# --- pod to pod across the hosts ------------------------------------------
pod=$(jq -r '[.items[] | select(.spec.nodeName == "vol-a")][0].metadata.name' <<<"$pods")
pod_b=$(jq -r '[.items[] | select(.spec.nodeName == "vol-b")][0]' <<<"$pods")
ip_pod_b=$(jq -r .status.podIP <<<"$pod_b")
# (busybox nc: Debian's static busybox wget segfaults)
page=$(k exec "$pod" -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 $ip_pod_b 8080") ||
  vl_fail "pod $pod on vol-a could not fetch from $ip_pod_b on vol-b: $page"
[[ $page == *"200 OK"*"page of $(jq -r .metadata.name <<<"$pod_b") greeting=hello-from-configmap"* ]] || vl_fail "the page across hosts: $page"
vl_log "pod $pod (vol-a) fetched the page of $(jq -r .metadata.name <<<"$pod_b") ($ip_pod_b, vol-b)"

# --- logs and exec through the kubelet API ------------------------------
logs_say() { k logs "$1" | grep -q "web started greeting=hello-from-configmap"; }
vl_wait 20 logs_say "$pod" || vl_fail "kubectl logs: $(k logs "$pod" 2>&1)"
vl_wait 20 logs_say "$(jq -r .metadata.name <<<"$pod_b")" || vl_fail "kubectl logs through vol-b's kubelet API"
[[ $(k exec "$pod" -- cat /etc/hostname) == "$pod" ]] || vl_fail "kubectl exec cat /etc/hostname: $(k exec "$pod" -- cat /etc/hostname 2>&1)"
[[ $(k exec "$(jq -r .metadata.name <<<"$pod_b")" -- cat /etc/hostname) == "$(jq -r .metadata.name <<<"$pod_b")" ]] ||
  vl_fail "kubectl exec through vol-b's kubelet API"
[[ $(k exec "$pod" -- cat /etc/motd) == "built for volant-e2e" ]] || vl_fail "kubectl exec cat: $(k exec "$pod" -- cat /etc/motd 2>&1)"
[[ $(k exec "$pod" -- cat /etc/web-secret/password) == "hunter2" ]] || vl_fail "the Secret's file: $(k exec "$pod" -- cat /etc/web-secret/password 2>&1)"
[[ $(k exec "$pod" -- sh -c 'echo $GREETING') == "hello-from-configmap" ]] || vl_fail "exec's env"
# The kubelet API asks the API server (SubjectAccessReview) whether the
# client, known by a certificate of the cluster's CA, may use it, as the
# kubelet's webhook mode does: without a certificate the handshake fails,
# a user RBAC grants nothing gets 403, the API server's client 200.
kapi() { vl_in curl -sk --cacert "$pki/ca.crt" -o /dev/null -w '%{http_code}' "$@" "https://$ip_a:10250/containerLogs/default/$pod/web" || true; }
[[ $(kapi) == 000 ]] || vl_fail "the kubelet API without a client certificate: HTTP $(kapi)"
[[ $(kapi --cert "$pki/nobody.crt" --key "$pki/nobody.key") == 403 ]] ||
  vl_fail "the kubelet API for a user RBAC grants nothing: HTTP $(kapi --cert "$pki/nobody.crt" --key "$pki/nobody.key")"
[[ $(kapi --cert "$pki/apiserver-kubelet-client.crt" --key "$pki/apiserver-kubelet-client.key") == 200 ]] ||
  vl_fail "the kubelet API for the API server's client: HTTP $(kapi --cert "$pki/apiserver-kubelet-client.crt" --key "$pki/apiserver-kubelet-client.key")"
# With -it: a terminal in the guest (script(1) gives kubectl one here).
tty_out=$(script -qec "ip netns exec $VL_NS kubectl exec -it $pod -- sh -c 'tty; exit 3'" /dev/null </dev/null | tr -d '\r') && tty_rc=0 || tty_rc=$?
[[ $tty_out == *"/dev/pts/"* && $tty_rc == 3 ]] || vl_fail "kubectl exec -it: status $tty_rc, said: $tty_out"
set +e
k exec "$pod" -- sh -c 'exit 7' 2>/dev/null
rc=$?
set -e
[[ $rc == 7 ]] || vl_fail "kubectl exec exit status $rc, want 7"
# The service account volume (kube-api-access-*, added by the API
# server's ServiceAccount admission): the namespace, the cluster's CA and
# a token the API server accepts, bound to the pod.
sa=/var/run/secrets/kubernetes.io/serviceaccount
[[ $(k exec "$pod" -- cat $sa/namespace) == default ]] || vl_fail "the service account volume's namespace: $(k exec "$pod" -- cat $sa/namespace 2>&1)"
[[ $(k exec "$pod" -- cat $sa/ca.crt) == "$(cat "$pki/ca.crt")" ]] || vl_fail "the service account volume's ca.crt"
tok=$(k exec "$pod" -- cat $sa/token)
review=$(k create -o json -f - <<JSON
{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "$tok"}}
JSON
)
jq -e --arg p "$pod" '.status.authenticated and .status.user.username == "system:serviceaccount:default:default" and
  .status.user.extra["authentication.kubernetes.io/pod-name"] == [$p]' <<<"$review" >/dev/null ||
  vl_fail "the pod's service account token: $(jq -c .status <<<"$review")"
vl_log "the pod's service account token authenticates as $(jq -r .status.user.username <<<"$review"), bound to pod $pod"
# The Secret and the token are nowhere on a command line.
for p in $(ip netns pids "$VL_NS") $(ip netns pids "$NSB"); do
  if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qe hunter2 -e "${tok:0:40}"; then vl_fail "the Secret or the token is on a command line: pid $p"; fi
done

# --- a pod the provider cannot run ----------------------------------------
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: two}
spec:
  tolerations: [{key: volant.dev/microvm, operator: Exists}]
  nodeSelector: {type: volant-microvm}
  containers: [{name: a, image: "$image"}, {name: b, image: "$image"}]
YAML
refused() { k get pod two -o json | jq -e '.status.phase == "Failed" and .status.reason == "VolantUnsupported"' >/dev/null; }
vl_wait 30 refused || vl_fail "pod two: $(k get pod two -o json | jq -c .status)"
k delete pod two --wait=false >/dev/null

# --- volant-kubelet A killed and restarted: the VMs are adopted -----------
podips() { k get pods -l app=web -o json | jq -r '.items[] | select(.metadata.deletionTimestamp == null) | .status.podIP' | sort; }
n_a=$(jq length <<<"$vms_a")
kill -9 "$kubelet_pid"
wait "$kubelet_pid" 2>/dev/null || true
t3=$SECONDS
start_kubelet
vl_wait 60 node_ready || vl_fail "node vol-a not Ready after the restart"
sleep 5 # a few status rounds of the new provider
vl_wait 60 available 4 || vl_fail "the Deployment is not available after the restart"
mapfile -t ips2 < <(podips)
[[ "${ips2[*]}" == "${ips[*]}" ]] || vl_fail "pod IPs after the restart: ${ips2[*]}, before: ${ips[*]}"
n=$(volar -o json vms list | jq length)
[[ $n == "$n_a" ]] || vl_fail "$n VMs on vol-a after the restart, $n_a before (a pod ran twice?)"
grep -q "adopted the VM of a pod" "$t/kubelet-a.log" || vl_fail "the restarted provider did not adopt"
vl_log "restarted volant-kubelet A adopted its VMs; Deployment available $(since $t3) after the restart"

# --- scale to 1 and back ----------------------------------------------------
nvms() { echo $(($(volar -o json vms list | jq length) + $(volar_b -o json vms list | jq length))); }
k scale deploy web --replicas 1 >/dev/null
one_vm() { [[ $(nvms) == 1 ]]; }
vl_wait 90 one_vm || vl_fail "scale to 1: $(nvms) VMs"
t4=$SECONDS
k scale deploy web --replicas 4 >/dev/null
vl_wait 300 available 4 || { k get pods -o wide >&2; dump; vl_fail "scale back to 4"; }
vl_log "scaled to 1 and back to 4 available in $(since $t4)"

# --- host B goes down: its pods move to node A ---------------------------
# Everything in its namespace stops at once: volant-kubelet, volantd and
# the VMs' hypervisors, as when the machine fails.
mapfile -t b_pods < <(k get pods -l app=web -o json | jq -r '.items[] | select(.spec.nodeName == "vol-b") | .metadata.name')
((${#b_pods[@]} >= 1)) || vl_fail "no pod on vol-b after scaling back: $(k get pods -o wide)"
for p in $(ip netns pids "$NSB"); do kill -9 "$p" 2>/dev/null || true; done
wait "$kubelet_b_pid" "$b_daemon" 2>/dev/null || true
t5=$SECONDS
not_ready() { k get node vol-b -o json | jq -e 'any(.status.conditions[]; .type == "Ready" and .status != "True")' >/dev/null; }
vl_wait 90 not_ready || vl_fail "node vol-b still Ready $(since $t5) after host B stopped"
notready_s=$((SECONDS - t5))
t_nr=$SECONDS
# Evicted once the tolerationSeconds (5) the pods set for not-ready and
# unreachable nodes have passed: marked for deletion.
evicted() {
  k get pods -l app=web -o json | jq -e --args '[.items[] | select(.metadata.deletionTimestamp == null) | .metadata.name] as $live |
    all($ARGS.positional[]; . as $p | $live | index($p) == null)' "${b_pods[@]}" >/dev/null
}
vl_wait 60 evicted || vl_fail "the pods of vol-b ${b_pods[*]} not evicted $(since $t_nr) after node vol-b became NotReady"
evict_s=$((SECONDS - t_nr))
# The taint manager acts on a node-monitor-period (2 s) after the taint:
# a bound well under the default 300 s, with room for a loaded machine.
((evict_s <= 5 + 15)) || vl_fail "the pods of vol-b evicted ${evict_s}s after NotReady, tolerationSeconds 5"
all_on_a() {
  k get pods -l app=web -o json | jq -e '[.items[] | select(.metadata.deletionTimestamp == null)] |
    length == 4 and all(.[]; .spec.nodeName == "vol-a" and any(.status.conditions[]?; .type == "Ready" and .status == "True"))' >/dev/null
}
vl_wait 240 all_on_a || { k get pods -o wide >&2; tail -20 "$t/controller-manager.log" >&2; vl_fail "the pods of vol-b were not replaced on vol-a"; }
vl_log "host B stopped: node NotReady after ${notready_s}s (grace 20s), its ${#b_pods[@]} pods evicted ${evict_s}s later (tolerationSeconds 5), replacements Ready on vol-a $(since $t5) after the stop"
# Host B comes back: the VMs of the evicted pods (their hypervisors died
# with the host) are deleted, none runs twice.
t6=$SECONDS
start_volantd_b
start_kubelet_b
vl_wait 60 is_ready vol-b || vl_fail "node vol-b not Ready after host B came back"
b_empty() { [[ $(volar_b -o json vms list | jq length) == 0 ]]; }
vl_wait 90 b_empty || vl_fail "vol-b still has $(volar_b -o json vms list | jq -c 'map({name, state})') for evicted pods"
[[ $(curl -s --unix-socket "$t/b/volantd.sock" http://v/api/v1/network | jq -r .subnet) == "${cidr[vol-b]}" ]] || vl_fail "volantd B's subnet changed"
n_csr=$(k get csr -o json | jq '.items | length')
[[ $n_csr == 1 ]] || vl_fail "$n_csr CSRs after node B's restart: its kubeconfig should have been reused"
vl_log "host B back: the VMs of its evicted pods deleted $(since $t6) after its volantd and volant-kubelet restarted"

# --- delete: nothing left on either host --------------------------------
k delete -f "$t/web.yaml" >/dev/null
no_vm() { [[ $(nvms) == 0 ]]; }
vl_wait 90 no_vm || vl_fail "after the Deployment's delete: $(volar -o json vms list | jq -c 'map(.name)') $(volar_b -o json vms list | jq -c 'map(.name)')"
for ns in "$VL_NS" "$NSB"; do
  taps=$(ip -n "$ns" -o link show | grep -c ': vt-' || true)
  [[ $taps == 0 ]] || vl_fail "$taps taps left in $ns: $(ip -n "$ns" -o link show)"
done
for db in "$t/data/volant.db" "$t/b/data/volant.db"; do
  leases=$(volant-ipam list --db "$db" | jq -c '[.leases[]? | {vm, ip}]')
  [[ $leases == "[]" ]] || vl_fail "leases left in $db: $leases"
done
vl_log "ok in $(since $t0)"
