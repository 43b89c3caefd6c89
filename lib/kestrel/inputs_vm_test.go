package kestrel_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/kestrel/internal/vmtest"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/testutil/guesttest"
)

// TestVMInputs boots kestrel with volant.inputs=1: it holds the workload
// (the handshake says it waits) until the host sends the VM's inputs over
// the agent channel; then the files are there with their modes, the empty
// directory exists, and the workload and exec'd commands see the
// environment, which appears nowhere on the kernel command line. An input
// /etc/hostname names the host (the kernel's hostname, not only the file).
func TestVMInputs(t *testing.T) {
	k, vmlinux := guesttest.Kernel(t)
	n := vmtest.NewNet(t)
	m := &manifest.Manifest{
		Name: "inputs", Version: "1", Initramfs: &manifest.Artifact{URL: "/unused.cpio"},
		Workload: manifest.Workload{
			Entrypoint: []string{"/bin/sh", "-c", `echo "workload sees TOKEN=$TOKEN and $(cat /etc/app/config)"; exec sleep 1000`},
			Env:        map[string]string{"PLAIN": "from the manifest"},
		},
	}
	im := vmtest.BootImage(t, k)
	im.AddBusybox("sh", "sleep", "cat", "stat", "ls", "echo", "hostname")
	vm := vmtest.Boot(t, n, vmlinux, vmtest.Config{Name: "inputs", Initrd: im.Write(), Agent: true,
		Cmdline: "volant.vm=inputs volant.inputs=1 volant.manifest=" + encode(t, m)})
	vm.WaitConsole("waiting for the VM's inputs", bootTimeout)
	sess := connectAgent(t, vm, bootTimeout)
	if sess.Hello.Inputs != agentchan.InputsWaiting {
		t.Fatalf("hello %+v: want inputs %q", sess.Hello, agentchan.InputsWaiting)
	}
	// Held: a second passes and the workload has not run.
	time.Sleep(time.Second)
	if strings.Contains(vm.ConsoleText(), "workload sees") {
		t.Fatalf("the workload started before its inputs:\n%s", vm.ConsoleText())
	}

	secret := "s3cr3t-" + t.Name()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := sess.SendInputs(ctx, &agentchan.Inputs{
		Env: map[string]string{"TOKEN": secret, "PLAIN": "from the inputs"},
		Files: []agentchan.InputFile{{Path: "/etc/app/config", Data: []byte("config-v1")}, {Path: "/run/secrets/key", Mode: 0o400, Data: []byte(secret)},
			{Path: "/etc/hostname", Data: []byte("web-7d9f-abcde\n")}},
		Dirs: []string{"/data/empty"},
	})
	if err != nil {
		t.Fatal(err)
	}
	vm.WaitConsole("workload sees TOKEN="+secret+" and config-v1", bootTimeout)

	out, _, code := run(t, sess, "sh", "-c", `echo "$TOKEN|$PLAIN"; stat -c %a /run/secrets/key /etc/app/config; ls -a /data/empty; cat /proc/cmdline`)
	lines := strings.Split(out, "\n")
	if code != 0 || len(lines) < 6 || lines[0] != secret+"|from the inputs" || lines[1] != "400" || lines[2] != "644" {
		t.Fatalf("exec after the inputs (%d):\n%s", code, out)
	}
	if strings.Contains(lines[len(lines)-2], secret) || !strings.Contains(lines[len(lines)-2], "volant.inputs=1") {
		t.Fatalf("the kernel command line: %q", lines[len(lines)-2])
	}
	if out, _, code := run(t, sess, "hostname"); code != 0 || strings.TrimSpace(out) != "web-7d9f-abcde" {
		t.Fatalf("hostname after an input /etc/hostname (%d): %q", code, out)
	}
	// Sent again: answered, not applied twice.
	err = sess.SendInputs(ctx, &agentchan.Inputs{Files: []agentchan.InputFile{{Path: "/etc/app/config", Data: []byte("config-v2")}}})
	if err != nil {
		t.Fatal(err)
	}
	if out, _, _ := run(t, sess, "cat", "/etc/app/config"); out != "config-v1" {
		t.Fatalf("inputs applied twice: config is %q", out)
	}
}
