// Package manifestcli is the volant-manifest command (cmd/volant-manifest
// documents it): one go-flags struct per verb, each with an Execute that
// reads the manifest (FILE or stdin), calls lib/manifest and writes the
// result. It is a package of its own so that what imports lib/manifest
// (kestrel, above all) does not link the command line.
package manifestcli

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/manifest/schema"
)

// Command is the whole of volant-manifest.
func Command(ctx context.Context, env *cli.Env) error {
	return cli.Run(ctx, env, "volant-manifest", &manifestCommand{})
}

type manifestCommand struct {
	Validate validateCmd        `command:"validate" description:"Normalize and validate a manifest; report every problem"`
	Encode   encodeCmd          `command:"encode" description:"Encode a manifest as base64url(gzip(json))"`
	Decode   decodeCmd          `command:"decode" description:"Decode an encoded manifest (argument or stdin)"`
	Cmdline  cmdlineCmd         `command:"cmdline" description:"Print the kernel command-line fragment for a manifest"`
	Schema   schemaCmd          `command:"schema" description:"Print the manifest's JSON Schema"`
	Version  cli.VersionCommand `command:"version" description:"Print the build version"`
}

type fileArg struct {
	File string `positional-arg-name:"FILE"`
}

type validateCmd struct {
	Args fileArg `positional-args:"yes"`
}

func (c *validateCmd) Execute(_ context.Context, env *cli.Env) error {
	m, err := readManifest(env, c.Args.File)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "manifest.validate", validateResult{Valid: true, Name: m.Name, PluginVersion: m.Version, Manifest: m})
}

type encodeCmd struct {
	Raw  bool    `long:"raw" description:"print only the encoded string"`
	Args fileArg `positional-args:"yes"`
}

func (c *encodeCmd) Execute(_ context.Context, env *cli.Env) error {
	m, err := readManifest(env, c.Args.File)
	if err != nil {
		return err
	}
	enc, err := m.Encode()
	if err != nil {
		return err
	}
	if c.Raw {
		_, err := fmt.Fprintln(env.Stdout, enc)
		return err
	}
	return cli.WriteResult(env, "manifest.encode", encodeResult{Encoded: enc, Bytes: len(enc)})
}

type decodeCmd struct {
	Raw  bool `long:"raw" description:"print only the manifest JSON"`
	Args struct {
		Encoded string `positional-arg-name:"ENCODED"`
	} `positional-args:"yes"`
}

func (c *decodeCmd) Execute(_ context.Context, env *cli.Env) error {
	s := c.Args.Encoded
	if s == "" || s == "-" {
		b, err := cli.ReadInput(env, "encoded manifest", "", manifest.MaxBytes)
		if err != nil {
			return err
		}
		s = string(b)
	}
	m, err := manifest.DecodeString(s)
	if err != nil {
		return err
	}
	if c.Raw {
		b, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(env.Stdout, "%s\n", b)
		return err
	}
	return cli.WriteResult(env, "manifest.decode", decodeResult{Manifest: m})
}

type cmdlineCmd struct {
	Budget int     `long:"budget" description:"maximum bytes of the fragment (default 1535)"`
	Args   fileArg `positional-args:"yes"`
}

func (c *cmdlineCmd) Execute(_ context.Context, env *cli.Env) error {
	budget := c.Budget
	if budget == 0 {
		budget = manifest.DefaultFragmentBudget
	}
	if budget < 0 {
		return apierr.New(apierr.Usage, "--budget must be positive")
	}
	m, err := readManifest(env, c.Args.File)
	if err != nil {
		return err
	}
	line, err := m.Cmdline(budget)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "manifest.cmdline", cmdlineResult{Cmdline: line, Bytes: len(line), Budget: budget})
}

type schemaCmd struct{}

func (schemaCmd) Execute(_ context.Context, env *cli.Env) error {
	b, err := schema.Document()
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(env.Stdout, "%s\n", b)
	return err
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

// readManifest reads a manifest, or a result that carries one, from FILE
// or stdin.
func readManifest(env *cli.Env, file string) (*manifest.Manifest, error) {
	data, err := cli.ReadInput(env, "manifest", file, manifest.MaxBytes)
	if err != nil {
		return nil, err
	}
	return manifest.ParseInput(data)
}
