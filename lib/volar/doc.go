// Package volar is the logic of the volar command line (cmd/volar is its
// flags and dispatch): one Session method per command over lib/client,
// the output formats, the exit statuses, the serial console session, host
// setup and shell completion.
//
// # Output
//
// Output prints results in one of three forms: Table (aligned columns,
// "Key: value" lines, one sentence per action — for people), JSON (the
// lib/api objects exactly as volantd sends them: one object, an array for
// lists, NDJSON for the event stream — for scripts) and Quiet (names, one
// per line). Progress goes to stderr.
//
// # Errors and exit statuses
//
// Report prints an error as "volar: CODE: message" plus a hint (or as the
// JSON error object) and maps it to volar's exit statuses: ExitError (1)
// for anything volantd or the host refused, ExitUsage (2), ExitUnreachable
// (3) when volantd could not be reached at all — with where volar looked
// (Target: --host, VOLANT_HOST or the default socket) and how to start it —
// and ExitInterrupted (130).
//
// # Console
//
// Console joins a terminal to a VM's console stream (lib/client's Console)
// in raw mode with a detach key (DefaultEscape, Ctrl-]) and restores the
// terminal on every way out.
//
// # Setup
//
// Setup prepares the host for volantd directly (not through it):
// directories, lib/hostnet's bridge/forwarding/NAT in the calling thread's
// network namespace, the guest kernel and its vmlinux, the hypervisor
// report; DryRun changes nothing.
//
// # Completion
//
// Parse wraps go-flags and its GO_FLAGS_COMPLETION protocol;
// CompletionScript prints the bash and zsh scripts; VMName, PluginName,
// DeploymentName and VolumeName complete from volantd.
package volar
