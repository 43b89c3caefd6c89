// Command fledge builds Volant plugins from OCI images or from files.
//
// Synopsis:
//
//	fledge build [-c fledge.toml] [-o OUTDIR] [--kernel-modules DIR] [--kestrel PATH] [--work-dir DIR] [--sign KEY] [--progress auto|json] [-q] [-v]
//	fledge build --image IMAGE [--name NAME] [--insecure] [--auth-file FILE] [-o OUTDIR] [--kestrel PATH] [--work-dir DIR] [--sign KEY] [--progress auto|json] [-q] [-v]
//	fledge inspect [--resolve] [--insecure] [--auth-file FILE] [-v] IMAGE
//	fledge keygen -o KEYFILE
//	fledge boot-initramfs [--kernel-modules DIR] [-o FILE] [--kestrel PATH] [--module NAME]...
//	fledge version
//
// build reads fledge.toml (default ./fledge.toml; relative paths in it
// resolve against its folder) and writes into OUTDIR (default ./out):
//
//	oci_rootfs  <name>.img            ext4 root disk (needs root: keeps the image's owners)
//	initramfs   <name>.cpio.gz        newc cpio + gzip, kestrel as /init, busybox
//	both        <name>.manifest.json  the plugin manifest, ready for installation
//
// build --image IMAGE builds an oci_rootfs plugin from the image alone, as
// a fledge.toml with only [plugin] name (--name, default the image's
// repository name) and [source] image, insecure and auth_file would; -c is
// not read then. volantd builds plugins from images this way (POST
// /api/v1/plugins {"image": …}), running fledge as a separate process.
// Registry credentials: --auth-file (or [source] auth_file), else
// $REGISTRY_AUTH_FILE, else containers/image's usual places
// ($XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json, …).
//
// Both files are written under temporary names and renamed into place only
// when the build succeeded. Outputs are reproducible (same inputs, same
// bytes); SOURCE_DATE_EPOCH sets the time stamped where the inputs give
// none. --kernel-modules DIR (a /lib/modules/<release> directory with
// modules.dep) adds the guest kernel's virtio/ext4/button modules and their
// dependencies to an initramfs plugin. See docs/fledge.md for the
// fledge.toml reference.
//
// --sign KEY signs the manifest with the minisign private key KEY and
// writes the signature next to it as <name>.manifest.json.minisig (an
// encrypted key, from `minisign -G`, takes its password from
// $MINISIGN_PASSWORD). The manifest holds every artifact's sha256, so the
// signature covers the whole plugin; `volar plugins install --manifest
// FILE` sends FILE.minisig along, and volantd --trusted-keys checks it.
// A build without --sign removes a signature an earlier build left there.
// `minisign -Vm out/web.manifest.json -p KEY.pub` verifies it too.
//
// keygen writes a new minisign key pair: KEYFILE (the private key, mode
// 0600, not encrypted: keep it as a secret) and KEYFILE.pub (the public
// key, for volantd's --trusted-keys directory). An existing file is never
// overwritten (CONFLICT).
//
// inspect describes an image reference without fetching anything: its
// canonical form, transport, the host path or registry it is read from, and
// the plugin name a build would give it; --resolve also reads its manifest
// (a registry request for docker://; needs root, like a build) for its
// digest. IMAGE is TRANSPORT:REFERENCE (docker://, oci:, oci-archive:,
// docker-archive:, dir:) or a plain REPO:TAG (docker://).
//
// boot-initramfs writes the initrd rootfs plugins boot with: kestrel as
// /init plus the kernel's modules (default --kernel-modules: the modules of
// the kernel in $VOLANT_KERNEL_DIR, default /var/lib/volant/kernel;
// default -o: out/boot-<release>.cpio.gz).
//
// kestrel comes from --kestrel, else [agent] local in fledge.toml, else the
// kestrel installed next to fledge, else $PATH.
//
// Progress goes to stderr: a progress bar on a terminal, plain lines
// otherwise, nothing with -q. --progress json writes one JSON object a line
// instead, for a program running fledge (volantd): when a step starts
//
//	{"version":"1","kind":"fledge.progress","step":"fetch layer 1/3 sha256:1a2b3c4d5e6f","total_bytes":N}
//
// (total_bytes only when known) and when it ends
//
//	{"version":"1","kind":"fledge.progress","step":"…","done":true,"bytes":N,"duration_ms":N,"error":"…"}
//
// (error only when it failed). Log lines (-v) stay text; the error object
// is still the last line. Stdin is not read.
//
// Output (stdout, one JSON object):
//
//	build           {"version":"1","kind":"fledge.build","name":..,"plugin_version":..,"strategy":..,
//	                 "artifact":"/abs/out/web.img","manifest":"/abs/out/web.manifest.json",
//	                 "sha256":"<hex>","bytes":N,"duration_ms":N,"image":..,"image_digest":..,
//	                 "filesystem":{"size_bytes":..,"content_bytes":..,"free_bytes":..,..},
//	                 "entries":N,"busybox_applets":N,"kernel_release":..,"modules":[..],
//	                 "init":"kestrel|custom|none","kestrel":"/path","steps_ms":{..}}
//	                 with --sign also "signature":"/abs/out/web.manifest.json.minisig","key_id":"<16 hex>"
//	inspect         {"version":"1","kind":"fledge.inspect","image":"docker://docker.io/library/nginx:alpine",
//	                 "transport":"docker","registry":"docker.io","name":"nginx","tag":"alpine"}
//	                 (other transports: "path":"/abs/layout" instead of registry); with --resolve also
//	                 "digest":"sha256:…","instance_digest":"sha256:…","signature_policy":..,"compressed_bytes":N
//	keygen          {"version":"1","kind":"fledge.keygen","key_id":"<16 hex>","private_key":"/abs/KEYFILE",
//	                 "public_key":"/abs/KEYFILE.pub"}
//	boot-initramfs  {"version":"1","kind":"fledge.boot-initramfs","artifact":..,"sha256":..,"bytes":N,
//	                 "kernel_release":..,"modules":[..],"entries":N,"kestrel":..,"duration_ms":N}
//	version         {"version":"1","kind":"fledge.version","build":".."}
//
// Errors (stderr, last line, one JSON object {"code","message","details"}; exit status):
//
//	USAGE              2   bad flags, an argument, a flag given twice, -c with --image
//	INVALID_INPUT      3   the image reference does not parse, fledge.toml is invalid (details.errors lists every problem as
//	                       {"field","message"}), a mapping escapes the build context, the image
//	                       is not a linux/amd64 container image, a binary is not static
//	INVALID_MANIFEST   3   the manifest fledge would write is invalid
//	                       (also INVALID_INPUT: --sign KEY is not a minisign private key)
//	NOT_FOUND          4   fledge.toml, the image, kestrel, busybox, the modules directory or the key is missing
//	CONFLICT           5   keygen: KEYFILE or KEYFILE.pub exists
//	PERMISSION_DENIED 10   oci_rootfs without root, the signature policy rejects the image, or the
//	                       password does not decrypt the signing key
//	UNAUTHORIZED      10   the registry refused the credentials
//	UNAVAILABLE        9   the registry is unreachable, TLS failed (see [source] insecure), mkfs.ext4 missing
//	CHECKSUM_MISMATCH  8   a layer's digest or DiffID, or busybox_sha256, does not match
//	CANCELED          12   interrupted
//	INTERNAL           1   anything else
package main

import (
	"context"

	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/fledge"
)

func main() { cli.Main(run) }

// run is fledge's whole run: lib/fledge holds its verbs (cli.go).
func run(ctx context.Context, env *cli.Env) error { return fledge.Command(ctx, env) }
