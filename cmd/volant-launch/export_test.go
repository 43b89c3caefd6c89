package main

import "github.com/volantvm/volant/lib/launch/launchcli"

// The names the tests of this package use from the command's code, which
// lives in lib/launch/launchcli.
const (
	ExitCommandFailed   = launchcli.ExitCommandFailed
	ExitCommandNotFound = launchcli.ExitCommandNotFound
)

type backendsResult = launchcli.BackendsResult
