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
// stdin). The output of `decode` and `validate` is accepted as input too (its
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
//	USAGE             2  bad flags or no input
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/manifest/schema"
)

func main() { cli.Main(run) }

type options struct {
	Validate struct {
		Args struct {
			File string `positional-arg-name:"FILE"`
		} `positional-args:"yes"`
	} `command:"validate" description:"Normalize and validate a manifest; report every problem"`
	Encode struct {
		Raw  bool `long:"raw" description:"print only the encoded string"`
		Args struct {
			File string `positional-arg-name:"FILE"`
		} `positional-args:"yes"`
	} `command:"encode" description:"Encode a manifest as base64url(gzip(json))"`
	Decode struct {
		Raw  bool `long:"raw" description:"print only the manifest JSON"`
		Args struct {
			Encoded string `positional-arg-name:"ENCODED"`
		} `positional-args:"yes"`
	} `command:"decode" description:"Decode an encoded manifest (argument or stdin)"`
	Cmdline struct {
		Budget int `long:"budget" description:"maximum bytes of the fragment (default 1535)"`
		Args   struct {
			File string `positional-arg-name:"FILE"`
		} `positional-args:"yes"`
	} `command:"cmdline" description:"Print the kernel command-line fragment for a manifest"`
	Schema  struct{} `command:"schema" description:"Print the manifest's JSON Schema"`
	Version struct{} `command:"version" description:"Print the build version"`
}

func run(ctx context.Context, env *cli.Env) error {
	var o options
	verb, _, err := cli.Parse(env, "volant-manifest", &o)
	if err != nil {
		return err
	}
	switch verb {
	case "validate":
		m, err := readManifest(env, o.Validate.Args.File)
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "manifest.validate", validateResult{Valid: true, Name: m.Name, PluginVersion: m.Version, Manifest: m})
	case "encode":
		m, err := readManifest(env, o.Encode.Args.File)
		if err != nil {
			return err
		}
		enc, err := m.Encode()
		if err != nil {
			return err
		}
		if o.Encode.Raw {
			_, err := fmt.Fprintln(env.Stdout, enc)
			return err
		}
		return cli.WriteResult(env, "manifest.encode", encodeResult{Encoded: enc, Bytes: len(enc)})
	case "decode":
		s := o.Decode.Args.Encoded
		if s == "" || s == "-" {
			b, err := readInput(env, "")
			if err != nil {
				return err
			}
			s = string(b)
		}
		m, err := manifest.DecodeString(s)
		if err != nil {
			return err
		}
		if o.Decode.Raw {
			b, err := json.MarshalIndent(m, "", "  ")
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(env.Stdout, "%s\n", b)
			return err
		}
		return cli.WriteResult(env, "manifest.decode", decodeResult{Manifest: m})
	case "cmdline":
		budget := o.Cmdline.Budget
		if budget == 0 {
			budget = manifest.DefaultFragmentBudget
		}
		if budget < 0 {
			return apierr.New(apierr.Usage, "--budget must be positive")
		}
		m, err := readManifest(env, o.Cmdline.Args.File)
		if err != nil {
			return err
		}
		line, err := m.Cmdline(budget)
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "manifest.cmdline", cmdlineResult{Cmdline: line, Bytes: len(line), Budget: budget})
	case "schema":
		b, err := schema.Document()
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(env.Stdout, "%s\n", b)
		return err
	case "version":
		return cli.WriteResult(env, "manifest.version", versionResult{Build: buildinfo.String()})
	}
	return apierr.New(apierr.Usage, "missing verb; run volant-manifest --help")
}

type validateResult struct {
	Valid         bool               `json:"valid"`
	Name          string             `json:"name"`
	PluginVersion string             `json:"plugin_version"`
	Manifest      *manifest.Manifest `json:"manifest"`
}

type encodeResult struct {
	Encoded string `json:"encoded"`
	Bytes   int    `json:"bytes"`
}

type decodeResult struct {
	Manifest *manifest.Manifest `json:"manifest"`
}

type cmdlineResult struct {
	Cmdline string `json:"cmdline"`
	Bytes   int    `json:"bytes"`
	Budget  int    `json:"budget"`
}

type versionResult struct {
	Build string `json:"build"`
}

// readManifest reads a manifest document from FILE or stdin and parses it.
// The result of `decode` or `validate` is unwrapped to its "manifest" field.
func readManifest(env *cli.Env, file string) (*manifest.Manifest, error) {
	data, err := readInput(env, file)
	if err != nil {
		return nil, err
	}
	var probe struct {
		Kind     string          `json:"kind"`
		Manifest json.RawMessage `json:"manifest"`
	}
	if json.Unmarshal(data, &probe) == nil && probe.Kind != "" {
		if len(probe.Manifest) == 0 {
			return nil, apierr.New(apierr.InvalidInput, "input is a %q result without a manifest field", probe.Kind)
		}
		data = probe.Manifest
	}
	return manifest.Parse(data)
}

func readInput(env *cli.Env, file string) ([]byte, error) {
	var r io.Reader
	switch {
	case file != "" && file != "-":
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("reading manifest: %w", err)
		}
		defer f.Close()
		r = f
	case cli.StdinHasInput(env):
		r = env.Stdin
	default:
		return nil, apierr.New(apierr.Usage, "no input: give a FILE or pipe it on stdin")
	}
	data, err := io.ReadAll(io.LimitReader(r, manifest.MaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading input: %w", err)
	}
	if len(data) > manifest.MaxBytes {
		return nil, apierr.New(apierr.TooLarge, "input is larger than %d bytes", manifest.MaxBytes)
	}
	if strings.TrimSpace(string(data)) == "" {
		return nil, apierr.New(apierr.Usage, "no input: give a FILE or pipe it on stdin")
	}
	return data, nil
}
