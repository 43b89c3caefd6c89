// Command volantd is Volant's control plane: a REST API with a resumable
// event stream (SSE) and a Model Context Protocol server over the state
// database, the host network and one `volant-launch run` process per VM.
//
// Synopsis:
//
//	volantd [serve] [FLAGS]                   run the daemon (the default)
//	volantd mcp [--host ADDR] [--token-file F] MCP on stdio, talking to the running daemon
//	volantd openapi                           print the OpenAPI document
//	volantd check [--db F] [--full]           check the state database offline (quick_check;
//	                                          --full: integrity_check and foreign keys)
//	volantd version
//
// Serve flags (each also an environment variable):
//
//	--socket PATH        VOLANT_SOCKET        unix socket of the API, mode 0660 (default /run/volant/volantd.sock; "" for none)
//	--listen ADDR        VOLANT_LISTEN        also serve the API on TCP; requires --token and TLS (or --insecure-tcp)
//	--token-file F       VOLANT_TOKEN_FILE    volantd's own bearer token, an admin's (compared in constant time;
//	                                          named tokens with roles come from `volar tokens create`),
//	                                          read from a file (mode 0600); at least 128 random bits, e.g.
//	                                          head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >F
//	--token T            VOLANT_TOKEN         the token itself; on the command line every user sees it in ps
//	                                          (volantd warns): prefer --token-file or the variable
//	--metrics-listen ADDR VOLANT_METRICS_LISTEN  also serve GET /metrics (Prometheus text format) alone on
//	                                          this TCP address; it needs the token unless --metrics-no-auth,
//	                                          and is served over the API's TLS (--tls-cert, --tls-key,
//	                                          --tls-client-ca), in plain HTTP only with --insecure-tcp.
//	                                          The API's listeners serve /metrics too (root on the socket without a token)
//	--metrics-no-auth    VOLANT_METRICS_NO_AUTH  serve --metrics-listen to anyone who reaches it, without a token
//	--tls-cert F         VOLANT_TLS_CERT      serve TCP over TLS (1.2 or later) with this PEM certificate;
//	--tls-key F          VOLANT_TLS_KEY       and its key (volar setup --tls makes a self-signed pair)
//	--tls-client-ca F    VOLANT_TLS_CLIENT_CA also require a client certificate this CA signed
//	--insecure-tcp       VOLANT_INSECURE_TCP  serve TCP without TLS; without TLS or this, --listen and
//	                                          --metrics-listen are USAGE
//	--db PATH            VOLANT_DB            state database (default <data-dir>/volant.db)
//	--data-dir DIR       VOLANT_DATA_DIR      plugins/, vms/<name>/ (spec, serial log) (default /var/lib/volant)
//	--run-root DIR       VOLANT_RUN_ROOT      per-VM run directories (default /run/volant/vms)
//	--cache-dir DIR      VOLANT_CACHE_DIR     built boot images (default <data-dir>/cache)
//	--artifact-dir DIR   VOLANT_ARTIFACT_DIRS also take local plugin artifacts from DIR (repeatable; ':'-separated
//	                                          in the variable); by default only <data-dir>/plugins. Any other
//	                                          local path in a manifest is refused (PERMISSION_DENIED)
//	--max-artifact-gib N VOLANT_MAX_ARTIFACT_GIB  largest plugin artifact, local or downloaded (default 64)
//	--trusted-keys DIR   VOLANT_TRUSTED_KEYS  minisign public keys (*.pub, from fledge keygen or minisign -G):
//	                                          a plugin's signature must verify with one of them, at install
//	                                          (SIGNATURE_INVALID) and again before each boot
//	--require-signed     VOLANT_REQUIRE_SIGNED  refuse plugins without a signature (SIGNATURE_REQUIRED), at
//	                                          install and before each boot; needs --trusted-keys
//	--kernel DIR|FILE    VOLANT_KERNEL_DIR    guest kernel directory or vmlinux (default /var/lib/volant/kernel)
//	--kestrel FILE       VOLANT_KESTREL       kestrel binary for boot images (default: next to volantd)
//	--boot-initramfs F   VOLANT_BOOT_INITRAMFS  prebuilt boot initramfs for rootfs plugins
//	--vmm NAME           VOLANT_VMM           auto, cloud-hypervisor or qemu (default auto)
//	--accel A            VOLANT_ACCEL         auto, kvm or tcg (default auto)
//	--bridge NAME        VOLANT_BRIDGE        guest bridge (default vbr0)
//	--subnet CIDR        VOLANT_SUBNET        guest subnet; the gateway is its first address (default 192.168.127.0/24);
//	                                          a subnet set through PUT /api/v1/network (volant-kubelet's podCIDR)
//	                                          is kept in the database and wins over it
//	--no-network-setup   VOLANT_NO_NETWORK_SETUP  do not create the bridge (volant-net setup made it)
//	--nat                VOLANT_NAT           masquerade the guest subnet when setting the bridge up
//	--no-nat             VOLANT_NO_NAT        remove Volant's masquerading (neither flag: leave NAT as it is)
//	--dns IP             VOLANT_DNS           resolver for guests (repeatable; comma-separated in the variable)
//	--agent-listen ADDR  VOLANT_AGENT_LISTEN  where kestrel reports (default <gateway>:7070; "off")
//	--launcher FILE      VOLANT_LAUNCHER      volant-launch binary (default: next to volantd, then PATH)
//	--fledge FILE        VOLANT_FLEDGE        fledge binary, which builds plugins from images (POST
//	                                          /api/v1/plugins {"image"}) in a process of its own (default:
//	                                          next to volantd, then PATH, looked up at each build; without
//	                                          one, volantd runs and image builds are UNAVAILABLE)
//	--vm-runner MODE     VOLANT_VM_RUNNER     auto, systemd (volant-vm@NAME units) or detached (default auto)
//	--vmm-uids RANGE     VOLANT_VMM_UIDS      uids for the jailed hypervisors, one per running VM: FIRST-LAST
//	                                          or FIRST+COUNT, owned by no user (default 1073741824+65536);
//	                                          under systemd it reaches each volant-vm@ unit through /run/volant/vm.env
//	--vmm-overhead-mb N  VOLANT_VMM_OVERHEAD_MB  memory a hypervisor may use beyond its guest's; its cgroup's
//	                                          limit is the sum (default 160 under TCG, 96 otherwise)
//	--insecure-vmm       VOLANT_INSECURE_VMM  run hypervisors as root without their jail; logged, and each
//	                                          VM shows "jail":{"insecure":true}. Without it, a host where
//	                                          the jail cannot be made fails VM starts with ISOLATION_UNAVAILABLE
//	--health-interval D  VOLANT_HEALTH_INTERVAL  kestrel poll interval of running VMs (default 5s)
//	--liveness-grace D   VOLANT_LIVENESS_GRACE  a deployment's replica that stays unhealthy (failing its
//	                                          check, or kestrel not answering) longer is replaced, within
//	                                          the replica backoff (default 2m; 0 never)
//	--stop-timeout D     VOLANT_STOP_TIMEOUT  time a guest gets to power off (default 10s)
//	--start-timeout D    VOLANT_START_TIMEOUT time a hypervisor gets to answer (default 60s)
//	--max-booting N      VOLANT_MAX_BOOTING   VMs booting at once; more starts queue until one is healthy
//	                                          (default CPUs+1; -1 unlimited)
//	--integrity-check    VOLANT_INTEGRITY_CHECK  check the database with SQLite's integrity_check at start
//	                                          (default: the quicker quick_check); a damaged database
//	                                          is not served (DATA_CORRUPT, exit 13, with the recovery steps)
//	--guest-debug        VOLANT_GUEST_DEBUG   verbose guest boot and kestrel
//	--verbose            VOLANT_VERBOSE       debug logs
//
// systemd: with sockets passed (socket activation, contrib/systemd/
// volantd.socket) volantd serves them instead of --socket/--listen; it
// sends READY=1 once it has reconciled its state with the host (adopted
// live VMs, resumed interrupted operations, marked dead VMs crashed, freed
// leaked leases and taps). Where systemd is PID 1 each VM runs as the
// volant-vm@NAME unit, elsewhere as a detached `volant-launch run` child in
// its own session; either way VMs outlive volantd. The API is documented
// in docs/api.md and by GET /openapi.json.
//
// Logs go to stderr. On SIGTERM or SIGINT volantd stops serving and exits
// 0; VMs keep running.
//
// Errors (stderr, one JSON object {"code","message","details"}; exit status):
//
//	USAGE          2  bad flags, an argument, a flag given twice; TCP without a token, a token weaker
//	                  than 128 bits; nothing to listen on
//	INVALID_INPUT  3  bad subnet or address
//	CONFLICT       5  another volantd serves the socket
//	UNAVAILABLE    9  cannot listen, no volant-launch, a --fledge that is not there, database locked; `mcp`: no daemon
//	PERMISSION_DENIED 10  not allowed to make the bridge or open the database
//	DATA_CORRUPT   13  the database is damaged, empty or not a database (details.recovery says what to do)
package main

import (
	"context"

	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/volantd"
)

func main() { cli.Main(run) }

// run is volantd's whole run: lib/volantd holds its verbs (cli.go).
func run(ctx context.Context, env *cli.Env) error { return volantd.Command(ctx, env) }
