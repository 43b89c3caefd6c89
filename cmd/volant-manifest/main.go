// Command volant-manifest checks, encodes and decodes Volant plugin manifests.
//
// Synopsis:
//
//	volant-manifest validate [FILE]
//	volant-manifest encode   [FILE] [--raw]
//	volant-manifest decode   [ENCODED] [--raw]
//	volant-manifest cmdline  [FILE] [--budget BYTES]
//	volant-manifest schema
//	volant-manifest version
//
// Input: FILE, or the manifest on stdin when FILE is omitted ("-" also means
// stdin). Each verb takes at most the arguments shown; more are refused
// (USAGE), as is a flag given twice. The output of `decode` and `validate` is accepted as input too (its
// "manifest" field is used), so `volant-manifest decode X | volant-manifest
// cmdline` composes. `decode` takes the encoded string as its argument or on
// stdin.
//
// Output (stdout, one JSON object with "version":"1" and "kind"):
//
//	validate  {"kind":"manifest.validate","valid":true,"name":..,"plugin_version":..,"manifest":{normalized}}
//	encode    {"kind":"manifest.encode","encoded":"<base64url(gzip(json)), no padding>","bytes":N}
//	          --raw prints only the encoded string and a newline
//	decode    {"kind":"manifest.decode","manifest":{...}}; --raw prints only the manifest
//	cmdline   {"kind":"manifest.cmdline","cmdline":"volant.plugin=.. volant.manifest=..","bytes":N,"budget":B}
//	schema    the JSON Schema document of the manifest (generated from the Go types)
//	version   {"kind":"manifest.version","build":".."}
//
// x86 Linux keeps 2047 bytes of kernel command line and silently cuts the
// rest. `cmdline` refuses a fragment longer than --budget (default 1535:
// 2047 minus 512 reserved for what volant-launch adds) with CMDLINE_TOO_LONG.
//
// Errors (stderr, one JSON object {"code","message","details"}; exit status):
//
//	INVALID_MANIFEST  3  details.errors lists every problem as {"field","message"}
//	INVALID_INPUT     3  the encoded string is not base64url/gzip
//	CMDLINE_TOO_LONG  3  details.bytes and details.budget
//	TOO_LARGE         3  input over 256 KiB
//	NOT_FOUND         4  FILE does not exist
//	USAGE             2  bad flags, an unexpected argument, a flag given twice, or no input
package main

import (
	"context"

	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/manifest/manifestcli"
)

func main() { cli.Main(run) }

// run is volant-manifest's whole run: lib/manifest/manifestcli holds its
// verbs.
func run(ctx context.Context, env *cli.Env) error { return manifestcli.Command(ctx, env) }
