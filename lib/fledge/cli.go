package fledge

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/term"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/fledge/ociimage"
	"github.com/volantvm/volant/lib/fledge/progress"
	"github.com/volantvm/volant/lib/fledge/progress/bar"
	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/signing"
)

// Command is the whole of the fledge command (cmd/fledge documents it):
// one go-flags struct per verb, each with an Execute that turns its flags
// (and the environment: SOURCE_DATE_EPOCH, REGISTRY_AUTH_FILE, the signing
// password) into a request, calls this package and writes the result.
func Command(ctx context.Context, env *cli.Env) error {
	return cli.Run(ctx, env, "fledge", &fledgeCommand{})
}

type fledgeCommand struct {
	Build   buildCmd           `command:"build" description:"Build the plugin fledge.toml describes"`
	Boot    bootCmd            `command:"boot-initramfs" description:"Write the boot initramfs of rootfs plugins: kestrel + kernel modules"`
	Inspect inspectCmd         `command:"inspect" description:"Describe an image reference (--resolve: with its digest)"`
	Keygen  keygenCmd          `command:"keygen" description:"Write a new minisign key pair to sign plugins with"`
	Version cli.VersionCommand `command:"version" description:"Print the build version"`
}

type buildCmd struct {
	Config string `short:"c" long:"config" description:"build configuration (default fledge.toml)"`
	Image  string `long:"image" value-name:"IMAGE" description:"build an oci_rootfs plugin from this image alone (no fledge.toml)"`
	Name   string `long:"name" value-name:"NAME" description:"with --image: the plugin's name (default the image's repository name)"`
	imageFlags
	OutputDir     string `short:"o" long:"output-dir" default:"out" description:"where the artifact and manifest go"`
	KernelModules string `long:"kernel-modules" value-name:"DIR" description:"/lib/modules/<release> of the guest kernel, for initramfs plugins"`
	Kestrel       string `long:"kestrel" value-name:"PATH" description:"kestrel binary (overrides [agent])"`
	WorkDir       string `long:"work-dir" value-name:"DIR" description:"where images are unpacked (default /dev/shm when the image fits, else $TMPDIR)"`
	Sign          string `long:"sign" value-name:"KEY" description:"sign the manifest with this minisign private key (writes <manifest>.minisig)"`
	Progress      string `long:"progress" value-name:"FORMAT" choice:"auto" choice:"json" default:"auto" description:"progress on stderr: auto (a bar on a terminal, else lines) or json (one event a line)"`
	Quiet         bool   `short:"q" long:"quiet" description:"no progress on stderr"`
	Verbose       bool   `short:"v" long:"verbose" description:"debug logs on stderr"`
}

// imageFlags are [source]'s registry settings as flags (build --image, inspect).
type imageFlags struct {
	Insecure bool   `long:"insecure" description:"allow plain HTTP and unverified TLS for the registry"`
	AuthFile string `long:"auth-file" value-name:"FILE" description:"registry credentials (containers-auth.json; default: $REGISTRY_AUTH_FILE, else the usual places)"`
}

// authFile is --auth-file, else $REGISTRY_AUTH_FILE (containers-auth.json(5)),
// which containers/image leaves to the tools built on it.
func (f imageFlags) authFile(env *cli.Env) string {
	if f.AuthFile != "" {
		return f.AuthFile
	}
	return env.Env("REGISTRY_AUTH_FILE")
}

func (c *buildCmd) Execute(ctx context.Context, env *cli.Env) error {
	if c.Image == "" && (c.Name != "" || c.Insecure || c.AuthFile != "") {
		return apierr.New(apierr.Usage, "--name, --insecure and --auth-file go with --image (in fledge.toml: [plugin] name, [source] insecure and auth_file)")
	}
	if c.Image != "" && c.Config != "" {
		return apierr.New(apierr.Usage, "give -c or --image, not both")
	}
	req := Request{
		Config:        c.Config,
		OutputDir:     c.OutputDir,
		KernelModules: c.KernelModules,
		Kestrel:       c.Kestrel,
		WorkDir:       c.WorkDir,
		SignKey:       c.Sign,
		SignPassword:  env.Env(signing.PasswordEnv),
		AuthFile:      env.Env("REGISTRY_AUTH_FILE"),
		Logger:        env.Logger(c.Verbose),
		Progress:      reporter(env.Stderr, c.Quiet, c.Progress),
	}
	if s := env.Env("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return apierr.New(apierr.Usage, "SOURCE_DATE_EPOCH=%q is not a Unix time", s)
		}
		req.Epoch = n
	}
	var res *Result
	if c.Image != "" {
		out, err := filepath.Abs(c.OutputDir)
		if err != nil {
			return err
		}
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		cfg, err := ImageConfig(c.Image, c.Name, wd, c.authFile(env), c.Insecure)
		if err != nil {
			return err
		}
		req.OutputDir = out
		res, err = BuildConfig(ctx, cfg, req)
		if err != nil {
			return err
		}
	} else {
		var err error
		if res, err = Build(ctx, req); err != nil {
			return err
		}
	}
	return cli.WriteResult(env, "fledge.build", res)
}

type inspectCmd struct {
	Resolve bool `long:"resolve" description:"read the image's manifest for its digest (a registry request for docker://)"`
	imageFlags
	Verbose bool `short:"v" long:"verbose" description:"debug logs on stderr"`
	Args    struct {
		Image string `positional-arg-name:"IMAGE" required:"yes"`
	} `positional-args:"yes"`
}

func (c *inspectCmd) Execute(ctx context.Context, env *cli.Env) error {
	info, err := Inspect(ctx, c.Args.Image, c.Resolve, ociimage.Options{
		Insecure:  c.Insecure,
		AuthFile:  c.authFile(env),
		UserAgent: "volant-fledge/" + buildinfo.Version,
		Logger:    env.Logger(c.Verbose),
	})
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "fledge.inspect", info)
}

type keygenCmd struct {
	Output string `short:"o" long:"output" value-name:"KEYFILE" required:"yes" description:"private key file to write (the public key goes to KEYFILE.pub)"`
}

func (c *keygenCmd) Execute(_ context.Context, env *cli.Env) error {
	path, err := filepath.Abs(c.Output)
	if err != nil {
		return err
	}
	kp, err := signing.WriteKeyPair(path)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "fledge.keygen", struct {
		KeyID      string `json:"key_id"`
		PrivateKey string `json:"private_key"`
		PublicKey  string `json:"public_key"`
	}{kp.ID, path, path + signing.PublicKeySuffix})
}

type bootCmd struct {
	KernelModules string   `long:"kernel-modules" value-name:"DIR" description:"/lib/modules/<release> of the guest kernel (default: $VOLANT_KERNEL_DIR's)"`
	Output        string   `short:"o" long:"output" value-name:"FILE" description:"output file (default out/boot-<release>.cpio.gz)"`
	Kestrel       string   `long:"kestrel" value-name:"PATH" description:"kestrel binary"`
	Modules       []string `long:"module" value-name:"NAME" description:"module to include (repeatable; default the virtio/ext4/button set)"`
}

func (c *bootCmd) Execute(ctx context.Context, env *cli.Env) error {
	dir, release := c.KernelModules, ""
	if dir == "" {
		k, err := kernel.Open(layout.FromEnv(env.Env).WithDefaults().Kernel)
		if err != nil {
			return err
		}
		dir, release = k.ModulesDir, k.Release
	}
	if release == "" {
		release = filepath.Base(filepath.Clean(dir))
	}
	out := c.Output
	if out == "" {
		out = filepath.Join("out", "boot-"+release+".cpio.gz")
	}
	res, err := BootInitramfs(ctx, BootRequest{Kestrel: c.Kestrel, ModulesDir: dir, Modules: c.Modules, Output: out})
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "fledge.boot-initramfs", res)
}

// reporter shows JSON lines when asked, else a progress bar on a terminal
// and plain lines otherwise.
func reporter(w io.Writer, quiet bool, format string) progress.Reporter {
	switch {
	case quiet:
		return progress.Discard
	case format == "json":
		return progress.JSON(w)
	}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return bar.New(w)
	}
	return progress.Lines(w)
}
