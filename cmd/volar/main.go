// Command volar is the command line of Volant: it drives volantd's REST API
// (plugins, VMs, deployments, volumes, snapshots, events, logs, exec and copy into a
// VM, the serial console) and
// prepares the host for it (setup).
//
// Synopsis:
//
//	volar [GLOBAL FLAGS] COMMAND ...
//
//	volar setup [--dry-run] [--bridge vbr0] [--cidr 192.168.127.1/24] [--nat] [--uplink IFACE] [--adopt] [--tls [--tls-host NAME]...]
//	            [--data-dir DIR] [--run-root DIR] [--kernel DIR] [--systemd [--systemd-dir DIR]]
//	volar plugins list
//	volar plugins install --manifest FILE [--signature SIG] [--replace]
//	volar plugins install --image REF [--name NAME] [--pull always|if-not-present|never] [--insecure] [--replace]
//	volar plugins show|enable|disable|remove NAME[@VERSION]
//	volar run IMAGE [--name N] [-p SPEC]... [-e K=V]... [--cpu N] [--memory MB] [--pull P] [--insecure] [-- ARGS...]
//	volar vms create NAME --plugin P [-p [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]]... [--cpu N] [--memory MB]
//	                 [--kernel-arg ARG]... [-v VOLUME:/PATH[:ro]]... [--secret-env NAME=@FILE|NAME=-]...
//	                 [--secret-file /GUEST/PATH=LOCALFILE]... [--wait [--timeout D]]
//	volar vms list [--plugin P] [--deployment D] [--state S]
//	volar vms show|stop|pause|resume|delete NAME
//	volar vms start|restart NAME [--wait [--timeout D]]
//	volar vms logs NAME [-f|--follow] [--tail N] [--since T] [-t|--timestamps] [--stream stdout|stderr] [--console]
//	volar vms exec NAME [-i] [-t] [-e K=V]... [-w DIR] [-u UID[:GID]] [--timeout D] -- CMD [ARGS...]
//	volar vms cp NAME:PATH LOCAL | LOCAL NAME:PATH
//	volar vms console NAME [--escape ^]] [--linger 1s]
//	volar vms wait NAME [--state running] [--timeout D]
//	volar vms create NAME --from-snapshot SNAPSHOT [--wait [--timeout D]]
//	volar vms snapshot NAME [--name SNAPSHOT]
//	volar vms restore NAME SNAPSHOT
//	volar snapshots list
//	volar snapshots show|delete NAME
//	volar deployments create NAME --plugin P --replicas N [-p SPEC]... [--cpu N] [--memory MB] [--config FILE]
//	                        [--volume-template NAME:SIZE:/PATH]... [--from-snapshot SNAPSHOT]
//	volar deployments scale NAME --replicas M
//	volar deployments update NAME --plugin P[@VERSION] [--max-surge N] [--max-unavailable N] [--deadline D]
//	volar deployments rollout status|undo|history NAME
//	volar deployments list
//	volar deployments show|delete NAME
//	volar volumes create NAME --size SIZE [--fs ext4]
//	volar volumes list
//	volar volumes show|delete NAME
//	volar volumes resize NAME --size SIZE
//	volar tokens create NAME --role viewer|operator|admin [--expires-in D]
//	volar tokens list
//	volar tokens revoke NAME
//	volar events [--since ID] [--type T]...
//	volar completion bash|zsh
//	volar version
//
// Global flags (before or after the command):
//
//	-H, --host ADDR     volantd's address: a unix socket path (/run/volant/volantd.sock,
//	                    the default), unix:///path, or http(s)://host:port (VOLANT_HOST)
//	    --token TOKEN   bearer token for TCP, or for a non-root user on the socket (VOLANT_TOKEN):
//	                    volantd's own (an admin) or a named one (volar tokens create)
//	-o, --output FMT    table (default) or json
//	-q, --quiet         print only names
//
// VOLANT_CA_FILE names the PEM certificate an https:// volantd's must chain
// to (its self-signed one: volar setup --tls).
//
// # Output
//
// By default results are printed for people: lists as aligned tables,
// `show` as "Key: value" lines, actions as one sentence
// (`VM nginx-demo created with IP 192.168.127.100`). The layout may change
// between releases; scripts use -o json or -q.
//
// With -o json, stdout carries the API objects exactly as volantd sends
// them (docs/api.md, GET /openapi.json), indented:
//
//	plugins list, vms list, deployments list    a JSON array of Plugin / VM / Deployment (never null)
//	plugins show|install|enable|disable|remove  one Plugin object
//	vms create|show|start|stop|pause|resume|restart|delete|wait  one VM object (create --wait: the VM once running)
//	run                                         one VM object, once running
//	deployments create|scale|update|show|delete one Deployment object
//	deployments rollout status|undo             one Rollout object
//	deployments rollout history                 {"rollouts": [Rollout...]}, newest first
//	volumes list                                a JSON array of Volume
//	volumes create|show|resize|delete           one Volume object
//	snapshots list                              a JSON array of Snapshot
//	vms snapshot, snapshots show|delete         one Snapshot object
//	vms restore                                 one VM object
//	tokens list                                 a JSON array of Token (never a secret)
//	tokens create                               one CreatedToken object (with its secret; -q: the secret alone)
//	tokens revoke                               one Token object
//	events                                      one compact Event object per line (NDJSON)
//	setup                                       one object {"dry_run","changed","ready","items":[...],...}
//	version                                     {"client","server","addr"}
//
// `vms logs` prints the serial log as it is in every format. With -q,
// stdout carries the names of the objects listed or acted on, one per
// line (events: the resource of each event). Progress (create --wait, the
// steps of a plugin build from an image) goes to stderr.
//
// # Exit status and errors
//
//	0    success
//	1    volantd (or, for setup, the host) answered with an error
//	2    usage: bad flags or arguments (a flag that holds one value given twice
//	     too); nothing was sent
//	3    volantd cannot be reached (the message says where volar looked and how to start it)
//	130  interrupted (SIGINT/SIGTERM); `events` and `logs --follow` exit 0 when interrupted
//
// Errors go to stderr as "volar: CODE: message" plus a hint; with -o json
// as one JSON object {"code","message","details"} (the codes of
// docs/stdio-contract.md, as volantd sends them).
//
// # Setup
//
// `volar setup` prepares the host directly (not through volantd) and
// needs root: the data directories (/var/lib/volant with plugins/, vms/,
// cache/; /run/volant/vms), the bridge network through the same library as
// `volant-net setup` (bridge vbr0 with 192.168.127.1/24, IP forwarding,
// with --nat masquerading), a check of the guest kernel (`make kernel`)
// with the uncompressed vmlinux extracted once, and the hypervisor volantd
// would use; with --systemd also volantd's units (volantd.socket,
// volantd.service, volant-vm@.service, embedded from contrib/systemd) in
// /etc/systemd/system, followed by `systemctl daemon-reload` where systemd
// runs (nothing is enabled: `systemctl enable --now volantd.socket`); with
// --tls a self-signed certificate and key for volantd's TCP API in
// <data dir>/tls (cert.pem, key.pem 0600; --tls-host names it is for). It
// prints what it changed; running it again changes nothing.
// --dry-run changes nothing and prints what would change. Start volantd
// with the same --bridge/--nat choices (volantd sets the bridge up itself
// at start and follows its own --nat).
//
// # Tokens
//
// volantd's API has three roles: viewer (read, events, logs), operator
// (also the VM lifecycle, exec, console, files, snapshots, volumes) and
// admin (also plugins, deployments, tokens). `volar tokens create ci
// --role viewer [--expires-in 30d]` makes a named token and prints its
// secret once (-q prints it alone, for a file); volantd keeps only its
// hash. `tokens list` shows names, roles and states (active, expired,
// revoked); `tokens revoke NAME` stops it at once. These need an admin:
// root on the unix socket, volantd's own token, or an admin token. A call
// the token's role does not allow is PERMISSION_DENIED (exit 1). Every
// change made through the API is an "audit" event naming the token:
// `volar events --type audit`.
//
// # Published ports
//
// -p (--publish) [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp], repeatable, on
// `vms create` and `deployments create` forwards a host port to the
// guest (nftables DNAT in volantd's table; default every host address and
// tcp): a deployment's port is balanced across its running, healthy
// replicas (its Endpoints in `deployments show`). A port in use is
// PORT_IN_USE (exit 1). -p is no longer short for --plugin.
//
// # Plugin versions and rolling updates
//
// A plugin may be installed in several versions; --plugin NAME@VERSION
// (and NAME@VERSION for plugins show|remove) picks one, a bare NAME the
// version installed last. `deployments update` replaces a deployment's
// replicas with ones of another version a batch at a time: new replicas
// while there are fewer than the count plus --max-surge (default 1), old
// ones removed while at least the count minus --max-unavailable (default
// 0) stay healthy; a new replica not healthy within --deadline (default
// 5m) rolls the update back. `rollout status` shows where it is, `rollout
// undo` rolls back the update under way (or goes back to the version
// before the last complete one), `rollout history` lists the updates.
//
// # Console
//
// `volar vms console NAME` attaches the terminal to the VM's serial
// console through volantd (GET /api/v1/vms/NAME/console upgraded to a raw
// stream, so it works over the unix socket and over TCP with a token). The
// terminal is in raw mode: every key, Ctrl-C included, goes to the guest.
// Ctrl-] detaches (change it with --escape ^X, or --escape none); the
// terminal is restored however the session ends. When stdin is not a
// terminal, its bytes are sent and the session ends once stdin ends and the
// guest has been quiet for a second (--linger DURATION; at most ten times
// that in all). QEMU and Cloud Hypervisor VMs both
// have a console (volant-launch relays CH's); a run without a console
// socket answers NOT_SUPPORTED: use `vms logs --follow`.
//
// # Volumes
//
// `volar volumes create data --size 1GiB` makes a volume: a sparse disk
// image with an empty ext4 filesystem that outlives the VMs using it.
// `volar vms create web1 --plugin P -v data:/data` attaches it; kestrel
// mounts it at /data before the workload starts (-v data:/data:ro
// read-only; repeat -v for more). One VM at a time may write to a volume:
// creating or starting a VM that would write to a volume another running
// VM uses (or read one another running VM writes) fails with
// VOLUME_IN_USE. `resize` grows a volume whose VMs are stopped; `delete`
// is refused while any VM is attached to the volume (delete the VM first:
// the volume stays).
//
// `volar deployments create svc ... --volume-template data:1GiB:/data`
// gives replica svc-i a volume of its own, data-i, made when the replica
// is first created. Scaling down keeps the volumes of the replicas it
// removes (and deleting the deployment keeps them all); scaling up again
// gives replica i its data-i back. Delete them with `volumes delete`.
//
// # Snapshots
//
// `volar vms snapshot web1 --name warm` saves the running VM web1 — its
// memory, devices and a point-in-time copy of its disks and volumes — and
// lets it run on. `volar vms create web2 --from-snapshot warm` starts a
// new VM from it without booting: the workload is already running, warm,
// with the saved VM's memory, under web2's own address, MAC, hostname,
// clock and fresh randomness (docs/snapshots.md). `volar vms restore web1
// warm` rolls web1 back to the snapshot, its volumes too (what it wrote
// since is lost; docs/snapshots.md). `volar deployments create
// svc --from-snapshot warm --replicas 3` starts every replica from it, so
// scaling up restores instead of booting. A snapshot in use by a VM or a
// deployment cannot be deleted (CONFLICT).
//
// # Events
//
// `volar events` follows volantd's event stream until interrupted,
// resuming by itself (Last-Event-ID) when the connection drops, so no
// event is lost or repeated. --since ID starts after event ID (--since 0:
// the whole retained log); without it only new events are shown. --type
// filters by type; "vm.*" matches a prefix (repeat or comma-separate).
//
// # Completion
//
// `volar completion bash` and `volar completion zsh` print scripts that
// complete commands, flags, file names, and the names of VMs, plugins,
// deployments and volumes (asked from volantd with a 0.5 s timeout):
//
//	source <(volar completion bash)                       # this shell
//	volar completion bash > /etc/bash_completion.d/volar  # every shell
//	volar completion zsh > "${fpath[1]}/_volar"
//
// They run `GO_FLAGS_COMPLETION=1 volar WORDS...`, which prints the
// candidates for the last word instead of running a command.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/volar"
)

func main() {
	// SIGHUP too: a console session restores the terminal on every way out.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	env := cli.OSEnv()
	code := run(ctx, env)
	stop()
	os.Exit(code)
}

// run is volar's whole run: lib/volar holds the commands (CommandLine).
func run(ctx context.Context, env *cli.Env) int { return volar.Run(ctx, env) }
