// Package health probes the workload over HTTP for the VM's whole life and
// keeps a verdict with hysteresis:
//
//   - the verdict starts "unknown";
//   - one passing probe makes it "healthy";
//   - Retries failing probes in a row make it "unhealthy" (from unknown or
//     healthy); fewer leave it where it was;
//   - a probe passes when the workload answers base_url+endpoint with a
//     status below 400 within the timeout (redirects are not followed);
//     an http:// URL is probed with one GET over a fresh TCP connection
//     whose response head kestrel reads itself (probe.go): net/http's
//     client, which https:// URLs use, is a large body of code to run
//     for the first time while the workload starts, and under software
//     emulation every new piece of code is translated before it runs;
//   - while the verdict is still "unknown" (start-up, at most StartupWindow)
//     the checker probes every StartupInterval, so a workload that is up in
//     50 ms is healthy in about StartupInterval, not after a whole
//     interval; a failure is counted at most once per interval, so turning
//     unhealthy still takes Retries intervals;
//   - the first probe waits StartupInterval (or the interval, if shorter):
//     the workload's process has only just been executed then, so a probe
//     at once would fail and take the CPU from the workload's start.
//
// Machine is the pure state machine; Checker runs it on a ticker.
package health

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/manifest"
)

// Start-up probing (see the package comment).
const (
	StartupInterval = 100 * time.Millisecond
	StartupWindow   = time.Minute
)

// Machine is the verdict and its history. The zero value is unusable; use
// NewMachine.
type Machine struct {
	retries int
	st      agentapi.HealthStatus
}

// NewMachine returns a machine that turns unhealthy after retries failures
// in a row (at least 1).
func NewMachine(endpoint string, retries int) *Machine {
	if retries < 1 {
		retries = 1
	}
	return &Machine{retries: retries, st: agentapi.HealthStatus{State: agentapi.HealthUnknown, Endpoint: endpoint}}
}

// Observe records one probe's outcome (err nil is a pass) and reports
// whether the verdict changed.
func (m *Machine) Observe(now time.Time, err error) bool {
	at := now
	m.st.LastCheck = &at
	prev := m.st.State
	if err == nil {
		m.st.ConsecutiveFailures = 0
		m.st.LastError = ""
		m.st.State = agentapi.HealthHealthy
	} else {
		m.st.ConsecutiveFailures++
		m.st.LastError = err.Error()
		if m.st.ConsecutiveFailures >= m.retries {
			m.st.State = agentapi.HealthUnhealthy
		}
	}
	if m.st.State != prev {
		m.st.Since = &at
		return true
	}
	return false
}

// Status returns the verdict.
func (m *Machine) Status() agentapi.HealthStatus { return m.st }

// Checker probes a URL periodically.
type Checker struct {
	url      string
	interval time.Duration
	timeout  time.Duration
	// target is the parsed http:// URL the raw probe dials; nil for
	// other URLs, which go through client.
	target   *target
	client   *http.Client
	log      *slog.Logger
	onChange func(agentapi.HealthStatus)

	mu sync.Mutex
	m  *Machine
}

// NewChecker builds a checker for a normalized manifest's health check of
// the workload at baseURL. onChange (may be nil) gets every verdict change.
func NewChecker(baseURL string, hc manifest.HealthCheck, log *slog.Logger, onChange func(agentapi.HealthStatus)) *Checker {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if onChange == nil {
		onChange = func(agentapi.HealthStatus) {}
	}
	interval := time.Duration(hc.IntervalMS) * time.Millisecond
	if interval <= 0 {
		interval = manifest.DefaultIntervalMS * time.Millisecond
	}
	timeout := time.Duration(hc.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = manifest.DefaultTimeoutMS * time.Millisecond
	}
	retries := hc.Retries
	if retries == 0 {
		retries = manifest.DefaultRetries
	}
	raw := trimSlash(baseURL) + hc.Endpoint
	c := &Checker{
		url:      raw,
		interval: interval,
		timeout:  timeout,
		log:      log,
		onChange: onChange,
		m:        NewMachine(hc.Endpoint, retries),
	}
	if u, err := url.Parse(raw); err == nil && u.Scheme == "http" && u.Host != "" {
		c.target = newTarget(u)
	} else {
		c.client = &http.Client{
			Timeout: timeout,
			// A fresh connection per probe: a probe must see a workload
			// that stopped accepting, not a pooled connection.
			Transport:     &http.Transport{DisableKeepAlives: true, Proxy: nil},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return c
}

func trimSlash(s string) string {
	for len(s) > 0 && s[len(s)-1] == '/' {
		s = s[:len(s)-1]
	}
	return s
}

// URL is what the checker probes.
func (c *Checker) URL() string { return c.url }

// Status returns the current verdict.
func (c *Checker) Status() agentapi.HealthStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m.Status()
}

// Run probes after the first wait (see the package comment) and then
// every interval until ctx is done.
func (c *Checker) Run(ctx context.Context) {
	start := time.Now()
	first := time.NewTimer(min(c.interval, StartupInterval))
	select {
	case <-ctx.Done():
		first.Stop()
		return
	case <-first.C:
	}
	var lastCounted time.Time
	for {
		t0 := time.Now()
		err := c.probe(ctx)
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		if err != nil {
			c.log.Debug("health probe failed", "took", now.Sub(t0), "err", err)
		}
		c.mu.Lock()
		startup := c.m.Status().State == agentapi.HealthUnknown && now.Sub(start) < StartupWindow && c.interval > StartupInterval
		count := err == nil || !startup || now.Sub(lastCounted) >= c.interval
		changed := false
		if count {
			if err != nil {
				lastCounted = now
			}
			changed = c.m.Observe(now, err)
		}
		st := c.m.Status()
		c.mu.Unlock()
		if changed {
			if err != nil {
				c.log.Warn("workload is "+string(st.State), "url", c.url, "failures", st.ConsecutiveFailures, "err", err)
			} else {
				c.log.Info("workload is "+string(st.State), "url", c.url)
			}
			c.onChange(st)
		}
		wait := c.interval
		if st.State == agentapi.HealthUnknown && time.Since(start) < StartupWindow && c.interval > StartupInterval {
			wait = StartupInterval
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (c *Checker) probe(ctx context.Context) error {
	if c.target != nil {
		return c.probeRaw(ctx)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "kestrel-health")
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return fmt.Errorf("GET %s: %s", c.url, resp.Status)
	}
	return nil
}
