package kubelet

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/api"
)

// probeResult is a probe's verdict: ok after successThreshold passes in a
// row, not ok after failureThreshold failures in a row.
type probeResult struct {
	ok         bool
	fails, oks int
	since      time.Time // when ok last changed
}

// startProbes runs the container's readiness and liveness probes, as the
// kubelet does, while the pod is on the node.
func (p *Provider) startProbes(ctx context.Context, k string, e *podEntry) {
	if len(e.pod.Spec.Containers) != 1 {
		return
	}
	c := e.pod.Spec.Containers[0]
	if c.ReadinessProbe != nil {
		go p.probeLoop(ctx, k, e, c.ReadinessProbe, false)
	}
	if c.LivenessProbe != nil {
		go p.probeLoop(ctx, k, e, c.LivenessProbe, true)
	}
}

func seconds(n, def int32) time.Duration {
	if n <= 0 {
		n = def
	}
	return time.Duration(n) * time.Second
}

func (p *Provider) probeLoop(ctx context.Context, k string, e *podEntry, pr *corev1.Probe, liveness bool) {
	period := seconds(pr.PeriodSeconds, 10)
	failAt, okAt := max(pr.FailureThreshold, 1), max(pr.SuccessThreshold, 1)
	if pr.FailureThreshold == 0 {
		failAt = 3
	}
	var runningSince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(period, time.Second)):
		}
		p.mu.Lock()
		v := e.vmState
		started := e.startedAt
		p.mu.Unlock()
		if v == nil || v.State != api.VMRunning || v.Agent == nil || v.Agent.Workload.State != agentapi.WorkloadRunning {
			runningSince = time.Time{}
			continue
		}
		if runningSince.IsZero() {
			runningSince = time.Now()
			if !started.IsZero() && started.Before(runningSince) && !liveness {
				runningSince = started
			}
			if d := seconds(pr.InitialDelaySeconds, 0) - time.Since(runningSince); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
		}
		pctx, cancel := context.WithTimeout(ctx, seconds(pr.TimeoutSeconds, 1))
		err := p.probe(pctx, e, v, pr.ProbeHandler)
		cancel()
		if ctx.Err() != nil {
			return
		}
		restart := false
		p.mu.Lock()
		r := &e.ready
		if liveness {
			r = &e.liveness
		}
		pod := e.pod
		if err == nil {
			r.oks, r.fails = r.oks+1, 0
			if !r.ok && int32(r.oks) >= okAt {
				r.ok, r.since = true, time.Now().Truncate(time.Second)
			}
		} else {
			r.fails, r.oks = r.fails+1, 0
			if int32(r.fails) >= failAt {
				if r.ok || r.since.IsZero() {
					r.since = time.Now().Truncate(time.Second)
				}
				r.ok = false
				if liveness {
					restart, r.fails = true, 0
				}
			}
		}
		p.mu.Unlock()
		if err != nil {
			kind := "Readiness"
			if liveness {
				kind = "Liveness"
			}
			p.event(pod, corev1.EventTypeWarning, "Unhealthy", "%s probe failed: %v", kind, err)
		}
		p.poke()
		if restart {
			p.log.Info("liveness probe failed; restarting the pod's VM", "pod", k, "vm", v.Name, "err", err)
			at := time.Now()
			if _, rerr := p.cfg.Volant.RestartVM(ctx, v.Name); rerr != nil {
				p.log.Warn("restarting a pod's VM", "pod", k, "err", rerr)
			} else {
				e.reboot(at)
				p.mu.Lock()
				e.restarts++
				e.ready.ok, e.ready.oks = false, 0
				p.mu.Unlock()
				runningSince = time.Time{}
			}
			p.poke()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(period - min(period, time.Second)):
		}
	}
}

// probe runs one probe against the VM: HTTP and TCP from the host to the
// pod IP, exec through the guest-access API.
func (p *Provider) probe(ctx context.Context, e *podEntry, v *api.VM, h corev1.ProbeHandler) error {
	c := e.pod.Spec.Containers[0]
	switch {
	case h.Exec != nil:
		res, err := p.cfg.Volant.Exec(ctx, v.Name, agentchan.ExecRequest{Argv: h.Exec.Command}, agentchan.ExecIO{Stdout: io.Discard})
		if err != nil {
			return err
		}
		if res.Code != 0 {
			return fmt.Errorf("exit status %d", res.Code)
		}
		return nil
	case h.HTTPGet != nil:
		g := h.HTTPGet
		port, err := probePort(g.Port, c)
		if err != nil {
			return err
		}
		host := g.Host
		if host == "" {
			host = v.IP
		}
		scheme := "http"
		if g.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		u := url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port)), Path: g.Path}
		if u.Path == "" {
			u.Path = "/"
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return err
		}
		for _, hd := range g.HTTPHeaders {
			req.Header.Add(hd.Name, hd.Value)
		}
		req.Header.Set("User-Agent", "volant-kubelet/probe")
		// The kubelet does not verify a probed pod's certificate either.
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true} //nolint:gosec
		resp, err := (&http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return nil
	case h.TCPSocket != nil:
		port, err := probePort(h.TCPSocket.Port, c)
		if err != nil {
			return err
		}
		host := h.TCPSocket.Host
		if host == "" {
			host = v.IP
		}
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	}
	return fmt.Errorf("no probe handler the provider runs")
}

// probePort is a probe's port: a number, or the name of a containerPort.
func probePort(p intstr.IntOrString, c corev1.Container) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("no containerPort named %q", p.StrVal)
}
