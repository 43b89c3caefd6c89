// Package report posts kestrel's Status to the control plane
// (POST http://<volant.api_host>:<volant.api_port>/api/v1/vms/<vm>/agent)
// whenever the workload or health state changes.
//
// Reporting is best effort and never blocks supervision: Send queues a
// snapshot and returns. A sender goroutine posts the queue in order; a
// failed post is retried with backoff (200 ms doubling to 30 s) until it
// succeeds, is answered with a 4xx (the control plane rejected it: dropped),
// or is pushed out of the queue. The queue holds the newest MaxQueue
// snapshots; when the control plane is away the oldest are dropped, so the
// latest state is always the last one delivered.
package report

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
)

// MaxQueue is how many unsent snapshots are kept.
const MaxQueue = 32

// Reporter queues and posts snapshots.
type Reporter struct {
	client *http.Client
	log    *slog.Logger

	mu      sync.Mutex
	url     string
	queue   []queued
	seq     uint64
	wake    chan struct{}
	sent    int
	dropped int
	// heldUntil, while in the future, holds deliveries (SetURL: the
	// guest's network is not out yet); Resume ends it.
	heldUntil time.Time
	// cancelPost ends the post under way.
	cancelPost context.CancelFunc
	// stale says the idle connections were made from the address the
	// guest had: closed before the next post.
	stale bool
}

// HoldMax bounds how long SetURL holds the reports when Resume does not
// come (a host that never says the network is out).
const HoldMax = 10 * time.Second

// URL is where reports for vm go on the control plane at host:port.
func URL(host string, port int, vm string) string {
	return "http://" + joinHostPort(host, port) + agentapi.ReportPath(vm)
}

func joinHostPort(host string, port int) string {
	if port == 0 {
		port = 80
	}
	for _, c := range host {
		if c == ':' {
			return "[" + host + "]:" + strconv.Itoa(port)
		}
	}
	return host + ":" + strconv.Itoa(port)
}

type queued struct {
	seq uint64
	st  agentapi.Status
}

// New returns a reporter posting to url. log may be nil.
func New(url string, log *slog.Logger) *Reporter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reporter{
		url:    url,
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}},
		log:    log,
		wake:   make(chan struct{}, 1),
	}
}

// Send queues st. It never blocks.
func (r *Reporter) Send(st agentapi.Status) {
	r.mu.Lock()
	r.seq++
	r.queue = append(r.queue, queued{seq: r.seq, st: st})
	if len(r.queue) > MaxQueue {
		n := len(r.queue) - MaxQueue
		r.dropped += n
		r.queue = append([]queued(nil), r.queue[n:]...)
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// SetURL makes the reporter post to url from now on (a guest restored from
// a snapshot reports as the VM it now is); the reports still queued
// describe the guest as it was and are dropped, and so are the idle
// connections, made from the address the guest had, and the post under
// way. Deliveries are held until Resume (at most HoldMax): a packet sent
// while the VM's tap is still down (a connection tried, or an idle one
// closed) leaves the guest waiting for the gateway's ARP answer until its
// retransmission timer fires, a second after the tap is up. So the idle
// connections are closed when the hold ends, with the network out.
func (r *Reporter) SetURL(url string) {
	r.mu.Lock()
	r.url = url
	r.dropped += len(r.queue)
	r.queue = nil
	r.heldUntil = time.Now().Add(HoldMax)
	r.stale = true
	if r.cancelPost != nil {
		r.cancelPost()
	}
	r.mu.Unlock()
}

// Resume ends SetURL's hold: the guest's network is out.
func (r *Reporter) Resume() {
	r.mu.Lock()
	r.heldUntil = time.Time{}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *Reporter) target() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.url
}

// Stats returns how many reports were delivered and dropped.
func (r *Reporter) Stats() (sent, dropped int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sent, r.dropped
}

// Run delivers queued reports until ctx is done.
func (r *Reporter) Run(ctx context.Context) {
	backoff := time.Duration(0)
	for {
		r.mu.Lock()
		var head queued
		have := len(r.queue) > 0
		if have {
			head = r.queue[0]
		}
		held := time.Until(r.heldUntil)
		stale := r.stale && held <= 0
		if stale {
			r.stale = false
		}
		r.mu.Unlock()
		if stale {
			r.client.CloseIdleConnections()
		}
		if held > 0 {
			t := time.NewTimer(held)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-r.wake:
			case <-t.C:
			}
			t.Stop()
			continue
		}
		if !have {
			select {
			case <-ctx.Done():
				return
			case <-r.wake:
				continue
			}
		}
		pctx, cancel := context.WithCancel(ctx)
		r.mu.Lock()
		r.cancelPost = cancel
		r.mu.Unlock()
		err := r.post(pctx, head.st)
		r.mu.Lock()
		r.cancelPost = nil
		r.mu.Unlock()
		canceled := pctx.Err() != nil
		cancel()
		if ctx.Err() != nil {
			return
		}
		if canceled && err != nil {
			continue // SetURL: the report is gone from the queue
		}
		var rejected *rejectedError
		switch {
		case err == nil:
			r.pop(head.seq, false)
			backoff = 0
			continue
		case errors.As(err, &rejected):
			r.log.Warn("control plane rejected a status report; dropping it", "url", r.target(), "err", err)
			r.pop(head.seq, true)
			continue
		}
		if backoff == 0 {
			backoff = 200 * time.Millisecond
			r.log.Warn("status report failed; retrying", "url", r.target(), "err", err)
		} else if backoff < 30*time.Second {
			backoff = min(2*backoff, 30*time.Second)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// pop removes report seq from the head if it is still there (Send may have
// pushed it out meanwhile).
func (r *Reporter) pop(seq uint64, dropped bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) > 0 && r.queue[0].seq == seq {
		r.queue = r.queue[1:]
	}
	if dropped {
		r.dropped++
	} else {
		r.sent++
	}
}

type rejectedError struct{ status string }

func (e *rejectedError) Error() string { return "control plane answered " + e.status }

func (r *Reporter) post(ctx context.Context, st agentapi.Status) error {
	body, err := json.Marshal(st)
	if err != nil {
		return &rejectedError{status: "unencodable status: " + err.Error()}
	}
	url := r.target()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return &rejectedError{status: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "kestrel")
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode < 300:
		return nil
	case resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusRequestTimeout:
		return &rejectedError{status: resp.Status}
	}
	return fmt.Errorf("POST %s: %s", url, resp.Status)
}

// Flush waits until every queued report was delivered or dropped, or ctx is
// done. Run must be running.
func (r *Reporter) Flush(ctx context.Context) {
	for {
		r.mu.Lock()
		n := len(r.queue)
		r.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}
