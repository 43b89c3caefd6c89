package kubelet

import (
	"context"
	"fmt"
	"io"
	"time"

	vkapi "github.com/virtual-kubelet/virtual-kubelet/node/api"
	utilexec "k8s.io/utils/exec"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// vmOf is the VM of a pod on this node.
func (p *Provider) vmOf(ns, name, container string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.pods[key(ns, name)]
	if !ok {
		return "", errdefs.NotFoundf("pod %s/%s is not on this node", ns, name)
	}
	if len(e.pod.Spec.Containers) == 1 && container != "" && container != e.pod.Spec.Containers[0].Name {
		return "", errdefs.NotFoundf("pod %s/%s has no container %q", ns, name, container)
	}
	if e.vmState == nil {
		return "", errdefs.NotFoundf("pod %s/%s has no VM yet", ns, name)
	}
	return e.vm, nil
}

// GetContainerLogs is `kubectl logs`: the workload's output (stdout and
// stderr, as kestrel read them), followed with -f. --previous gives the
// same log: a VM keeps one log across workload restarts.
func (p *Provider) GetContainerLogs(ctx context.Context, ns, pod, container string, o vkapi.ContainerLogOpts) (io.ReadCloser, error) {
	vm, err := p.vmOf(ns, pod, container)
	if err != nil {
		return nil, err
	}
	lo := api.LogOptions{Follow: o.Follow, Tail: o.Tail, Stream: api.LogWorkload, Timestamps: o.Timestamps, Since: o.SinceTime}
	if o.SinceSeconds > 0 {
		lo.Since = time.Now().Add(-time.Duration(o.SinceSeconds) * time.Second)
	}
	rc, err := p.cfg.Volant.VMLogs(ctx, vm, lo)
	if err != nil {
		return nil, err
	}
	if o.LimitBytes > 0 {
		return struct {
			io.Reader
			io.Closer
		}{io.LimitReader(rc, int64(o.LimitBytes)), rc}, nil
	}
	return rc, nil
}

// RunInContainer is `kubectl exec`: the command runs in the guest, with a
// terminal when asked, its exit status passed on.
func (p *Provider) RunInContainer(ctx context.Context, ns, pod, container string, cmd []string, attach vkapi.AttachIO) error {
	vm, err := p.vmOf(ns, pod, container)
	if err != nil {
		return err
	}
	req := agentchan.ExecRequest{Argv: cmd, TTY: attach.TTY(), Stdin: attach.Stdin() != nil}
	eio := agentchan.ExecIO{Stdin: attach.Stdin(), Stdout: discardNil(attach.Stdout()), Stderr: discardNil(attach.Stderr())}
	if rs := attach.Resize(); rs != nil && attach.TTY() {
		ctl := make(chan agentchan.Control)
		eio.Control = ctl
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case s, ok := <-rs:
					if !ok {
						return
					}
					select {
					case ctl <- agentchan.Control{Resize: &agentchan.Size{Cols: s.Width, Rows: s.Height}}:
					case <-ctx.Done():
						return
					}
				}
			}
		}()
	}
	res, err := p.cfg.Volant.Exec(ctx, vm, req, eio)
	if c := attach.Stdout(); c != nil {
		c.Close()
	}
	if c := attach.Stderr(); c != nil {
		c.Close()
	}
	if err != nil {
		return err
	}
	if res.Code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command %q exited with status %d", cmd[0], res.Code), Code: res.Code}
	}
	return nil
}

func discardNil(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// AttachToContainer is not supported: a workload's stdin is not attached.
func (p *Provider) AttachToContainer(context.Context, string, string, string, vkapi.AttachIO) error {
	return apierr.New(apierr.NotSupported, "kubectl attach is not supported by volant-kubelet; use kubectl exec or kubectl logs -f")
}

// PortForward is not supported: pod IPs are reachable on the pod network.
func (p *Provider) PortForward(context.Context, string, string, int32, io.ReadWriteCloser) error {
	return apierr.New(apierr.NotSupported, "kubectl port-forward is not supported by volant-kubelet; reach the pod IP or a Service")
}
