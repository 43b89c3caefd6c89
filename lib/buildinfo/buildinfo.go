// Package buildinfo holds the version stamped into every binary. The Makefile
// sets it once for all commands:
//
//	go build -ldflags "-X github.com/volantvm/volant/lib/buildinfo.Version=$(VERSION)"
package buildinfo

import "runtime/debug"

// Version is the release or `git describe` of this build.
var Version = "dev"

// String is Version, falling back to the module version or VCS revision
// recorded by the Go toolchain for builds that did not go through make.
func String() string {
	if Version != "dev" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			return bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return Version
}
