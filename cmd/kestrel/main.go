// Command kestrel is the in-guest agent of Volant: PID 1 of every microVM.
//
// Synopsis:
//
//	kestrel                 as the guest's init (the kernel runs it as /init)
//	kestrel run [flags]     supervise a workload outside a guest
//	kestrel version
//
// As the guest's init, kestrel reads the volant.* keys of the kernel command
// line (lib/bootargs), mounts /proc, /sys, /dev, /run, /dev/pts, /dev/shm,
// /tmp and cgroup2, loads the kernel modules of the initramfs, decides
// between the initramfs and a root disk (volant.boot=auto|initramfs|rootfs,
// volant.rootfs_device, volant.rootfs_fstype), switches root and re-executes
// itself for a rootfs plugin, configures the network (volant.ip, volant.gw,
// volant.dns, volant.vm or ip=), gets the manifest (volant.manifest=,
// volant.manifest_file=, or GET /api/v1/plugins/<plugin>/manifest on
// volant.api_host:volant.api_port), mounts the manifest's data disks,
// starts and supervises the workload, probes its health, reports state
// changes to the control plane, and serves its HTTP API on port 8080
// (lib/agentapi): /healthz, /v1/logs[?follow=1], /v1/actions/{name}, and
// /v1/... proxied to the workload. When the manifest's console.shell (or
// volant.console_shell=PATH, which "off" refuses) names a shell, kestrel
// runs it on the serial console as root and respawns it; otherwise the
// console is output only. SIGTERM, SIGINT (Ctrl-Alt-Del), SIGPWR and
// the ACPI power button shut the guest down: the workload gets SIGTERM, then
// SIGKILL after 10 s, every other process likewise, disks are unmounted or
// remounted read-only, and the guest powers off. A fatal error is printed on
// the console ("kestrel: FATAL: ...") and the guest powers off. The details
// are in docs/kestrel.md.
//
// Anywhere else (not PID 1 of the kernel's initial PID namespace), kestrel
// refuses the guest duties above and only offers `kestrel run`, which
// supervises a workload with the same agent and API:
//
//	kestrel run --manifest FILE [--listen 127.0.0.1:8080] [--grace 10s] [--debug]
//	kestrel run --cmdline 'volant.manifest=... volant.vm=NAME volant.api_host=H volant.api_port=P'
//
// The workload's output goes to stdout and to the log ring; kestrel's own
// log lines ("kestrel: ...") go to stderr. SIGTERM, SIGINT or SIGPWR stop
// the workload gracefully and end kestrel.
//
// Exit statuses of `kestrel run`: 0 after a requested stop; 1 when the
// manifest cannot be loaded or the API cannot listen; 2 for usage errors and
// for a bare `kestrel` that is not a guest's init.
//
//go:debug multipathtcp=0
package main

import (
	"os"

	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/kestrel"
)

// The go:debug line above makes kestrel's sockets plain TCP: Go's default of
// Multipath TCP for listeners brings a microVM nothing, and costs its boot
// the kernel's MPTCP paths (~260 blocks of translated code under TCG). The
// agent's listener asks for plain TCP itself (agent.Listen), so that the
// setting is not consulted at boot: consulting a non-default setting makes
// the runtime build its metrics table (~350 blocks).

func main() {
	os.Exit(kestrel.Main(buildinfo.String(), kestrel.Env{Args: os.Args[1:], Stdout: os.Stdout, Stderr: os.Stderr, Stdin: os.Stdin}))
}
