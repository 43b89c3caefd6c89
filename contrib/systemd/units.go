// Package systemd embeds Volant's systemd units (the files beside this
// one), so `volar setup --systemd` installs the units of the build it is
// part of. The units themselves are documented in their comments.
package systemd

import "embed"

// Units holds volantd.socket, volantd.service and volant-vm@.service.
//
//go:embed *.service *.socket
var Units embed.FS
