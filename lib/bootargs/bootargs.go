// Package bootargs is the contract between the host and kestrel: the
// volant.* keys of the guest kernel command line. The host side
// (lib/manifest, lib/launch) formats them; kestrel parses them. It has no
// dependencies beyond the standard library, so kestrel stays small.
//
// Keys (all optional unless a feature needs them):
//
//	volant.manifest=<b64url(gzip(json))>  the plugin manifest (see lib/manifest)
//	volant.manifest_file=/path            manifest inside the initramfs, when too big for the line
//	volant.plugin=NAME                    plugin name (also used to fetch the manifest from the API)
//	volant.runtime=NAME                   runtime identifier
//	volant.vm=NAME                        the VM's name; kestrel sets it as the hostname
//	volant.ip=A.B.C.D/NN                  guest address and prefix
//	volant.gw=A.B.C.D                     default gateway
//	volant.dns=A.B.C.D[,A.B.C.D]          resolvers written to /etc/resolv.conf
//	volant.api_host=HOST volant.api_port=N the control plane kestrel reports to
//	volant.agent_port=N                   kestrel's own API port in the guest (default 8080)
//	volant.boot=auto|initramfs|rootfs     stage-1 decision (default auto)
//	volant.rootfs_device=/dev/vda         root disk for the rootfs path
//	volant.rootfs_fstype=ext4             its filesystem
//	volant.modules=a,b                    extra kernel modules to load at boot
//	volant.debug=1                        verbose agent logging
//	volant.inputs=1                       hold the workload until the host sends the VM's inputs over the agent channel
//	volant.console_shell=/bin/sh|off      a shell on the serial console (overrides the manifest's console.shell)
//	volant.volumes=SERIAL:PATH[:ro],...   volumes to mount before the workload starts (see Volume)
//
// Parse also understands the kernel's own
// ip=<client>::<gw>:<netmask>:<hostname>:<device>:<autoconf> form, which
// Debian's kernel ignores (it has no CONFIG_IP_PNP), so kestrel applies it.
package bootargs

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode"
)

// MaxCmdline is the longest kernel command line x86 Linux keeps: its
// COMMAND_LINE_SIZE is 2048 bytes including the terminating NUL. The kernel
// silently truncates anything longer, so callers must refuse instead.
const MaxCmdline = 2047

// Mode is kestrel's stage-1 decision.
type Mode string

const (
	BootAuto      Mode = "auto"
	BootInitramfs Mode = "initramfs"
	BootRootfs    Mode = "rootfs"
)

// Args are the volant.* settings on a kernel command line.
type Args struct {
	Manifest     string
	ManifestFile string
	Plugin       string
	Runtime      string
	VM           string
	IP           netip.Prefix
	Gateway      netip.Addr
	DNS          []netip.Addr
	APIHost      string
	APIPort      int
	AgentPort    int
	Boot         Mode
	RootfsDevice string
	RootfsFSType string
	Modules      []string
	Debug        bool
	// ConsoleShell is a shell for the serial console ("" unset: the
	// manifest decides; ConsoleShellOff: none).
	ConsoleShell string
	// Volumes are mounted before the workload starts.
	Volumes []Volume
	// Inputs: the host sends the VM's inputs (env, files) over the agent
	// channel; kestrel starts the workload only once it has them.
	Inputs bool
}

// ConsoleShellOff as volant.console_shell refuses a console shell even
// when the manifest asks for one.
const ConsoleShellOff = "off"

// Fields returns the arguments as "key=value" words in a fixed order,
// omitting unset ones. The encoded manifest comes last, so a reader of a
// console log sees the short keys first.
func (a Args) Fields() []string {
	var f []string
	add := func(k, v string) {
		if v != "" {
			f = append(f, k+"="+v)
		}
	}
	add("volant.vm", a.VM)
	add("volant.plugin", a.Plugin)
	add("volant.runtime", a.Runtime)
	if a.IP.IsValid() {
		add("volant.ip", a.IP.String())
	}
	if a.Gateway.IsValid() {
		add("volant.gw", a.Gateway.String())
	}
	if len(a.DNS) > 0 {
		s := make([]string, len(a.DNS))
		for i, d := range a.DNS {
			s[i] = d.String()
		}
		add("volant.dns", strings.Join(s, ","))
	}
	add("volant.api_host", a.APIHost)
	if a.APIPort != 0 {
		add("volant.api_port", strconv.Itoa(a.APIPort))
	}
	if a.AgentPort != 0 {
		add("volant.agent_port", strconv.Itoa(a.AgentPort))
	}
	add("volant.boot", string(a.Boot))
	add("volant.rootfs_device", a.RootfsDevice)
	add("volant.rootfs_fstype", a.RootfsFSType)
	add("volant.modules", strings.Join(a.Modules, ","))
	if a.Debug {
		add("volant.debug", "1")
	}
	add("volant.console_shell", a.ConsoleShell)
	if a.Inputs {
		add("volant.inputs", "1")
	}
	add("volant.volumes", formatVolumes(a.Volumes))
	add("volant.manifest_file", a.ManifestFile)
	add("volant.manifest", a.Manifest)
	return f
}

// String is Fields joined by spaces.
func (a Args) String() string { return strings.Join(a.Fields(), " ") }

// Split splits a kernel command line into words the way the kernel does:
// on spaces, with double quotes grouping (and removed).
func Split(cmdline string) []string {
	var words []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range cmdline {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				words = append(words, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		words = append(words, cur.String())
	}
	return words
}

// Parse reads the volant.* keys (and ip=) from a kernel command line. Other
// words are ignored. Every malformed value is reported, joined in one error;
// the Args returned hold what did parse.
func Parse(cmdline string) (Args, error) {
	var a Args
	var errs []error
	bad := func(k, v string, why string) {
		errs = append(errs, fmt.Errorf("%s=%q: %s", k, v, why))
	}
	for _, w := range Split(cmdline) {
		k, v, _ := strings.Cut(w, "=")
		switch k {
		case "volant.manifest":
			a.Manifest = v
		case "volant.manifest_file":
			a.ManifestFile = v
		case "volant.plugin":
			a.Plugin = v
		case "volant.runtime":
			a.Runtime = v
		case "volant.vm":
			a.VM = v
		case "volant.ip":
			p, err := netip.ParsePrefix(v)
			if err != nil || !p.Addr().Is4() {
				bad(k, v, "want an IPv4 address with prefix length, like 192.168.127.100/24")
				continue
			}
			a.IP = p
		case "volant.gw":
			g, err := netip.ParseAddr(v)
			if err != nil {
				bad(k, v, "want an IP address")
				continue
			}
			a.Gateway = g
		case "volant.dns":
			a.DNS = nil
			for _, s := range strings.Split(v, ",") {
				d, err := netip.ParseAddr(s)
				if err != nil {
					bad(k, v, "want comma-separated IP addresses")
					a.DNS = nil
					break
				}
				a.DNS = append(a.DNS, d)
			}
		case "volant.api_host":
			a.APIHost = v
		case "volant.api_port":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 65535 {
				bad(k, v, "want a port number 1-65535")
				continue
			}
			a.APIPort = n
		case "volant.agent_port":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 65535 {
				bad(k, v, "want a port number 1-65535")
				continue
			}
			a.AgentPort = n
		case "volant.boot":
			switch Mode(v) {
			case BootAuto, BootInitramfs, BootRootfs:
				a.Boot = Mode(v)
			default:
				bad(k, v, "want auto, initramfs or rootfs")
			}
		case "volant.rootfs_device":
			a.RootfsDevice = v
		case "volant.rootfs_fstype":
			a.RootfsFSType = v
		case "volant.modules":
			a.Modules = nil
			for _, m := range strings.Split(v, ",") {
				if m != "" {
					a.Modules = append(a.Modules, m)
				}
			}
		case "volant.debug":
			a.Debug = v == "" || v == "1" || v == "true" || v == "on"
		case "volant.inputs":
			a.Inputs = v == "" || v == "1" || v == "true" || v == "on"
		case "volant.console_shell":
			if v != ConsoleShellOff && (!strings.HasPrefix(v, "/") || strings.ContainsFunc(v, unicode.IsControl)) {
				bad(k, v, "want an absolute path of a shell in the guest, or off")
				continue
			}
			a.ConsoleShell = v
		case "volant.volumes":
			vs, err := parseVolumes(v)
			if err != nil {
				bad(k, v, err.Error())
				continue
			}
			a.Volumes = vs
		case "ip":
			if err := a.parseKernelIP(v); err != nil {
				bad(k, v, err.Error())
			}
		}
	}
	return a, errors.Join(errs...)
}

// parseKernelIP applies ip=<client>:<server>:<gw>:<netmask>:<hostname>:<dev>:<autoconf>.
// Values given by volant.* keys win, whatever their order on the line.
func (a *Args) parseKernelIP(v string) error {
	parts := strings.Split(v, ":")
	if len(parts) < 4 {
		return errors.New("want <client>::<gw>:<netmask>[:<hostname>[:<device>[:off]]]")
	}
	client, err := netip.ParseAddr(parts[0])
	if err != nil || !client.Is4() {
		return errors.New("client address is not IPv4")
	}
	mask, err := netip.ParseAddr(parts[3])
	if err != nil || !mask.Is4() {
		return errors.New("netmask is not a dotted IPv4 mask")
	}
	bits, ok := maskBits(mask)
	if !ok {
		return errors.New("netmask is not contiguous")
	}
	if !a.IP.IsValid() {
		a.IP = netip.PrefixFrom(client, bits)
	}
	if parts[2] != "" && !a.Gateway.IsValid() {
		gw, err := netip.ParseAddr(parts[2])
		if err != nil {
			return errors.New("gateway is not an IP address")
		}
		a.Gateway = gw
	}
	if len(parts) > 4 && parts[4] != "" && a.VM == "" {
		a.VM = parts[4]
	}
	return nil
}

func maskBits(m netip.Addr) (int, bool) {
	b := m.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	n := 0
	for v&0x80000000 != 0 {
		n++
		v <<= 1
	}
	return n, v == 0
}
