// Package fetch downloads over http(s) with the bounds a daemon or a build
// needs, so that a server that never answers, stops sending halfway, or
// sends without end cannot hang or fill up its caller:
//
//   - ConnectTimeout bounds the TCP connect and the TLS handshake;
//   - HeaderTimeout bounds the wait for the response's headers;
//   - StallTimeout ends a body that sends nothing for that long (a slow but
//     moving download of a large image is fine; a stuck one is not);
//   - MaxBytes bounds the body (TOO_LARGE, checked against Content-Length
//     before anything is read, and again while reading).
//
// Every failure is an *apierr.Error: TIMEOUT for the timeouts, TOO_LARGE,
// NOT_FOUND for a 404, UNAVAILABLE for the rest (unreachable server,
// another status, a cut connection), CANCELED when ctx ends. Only http and
// https URLs are fetched (INVALID_INPUT otherwise).
package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/volantvm/volant/lib/apierr"
)

// Defaults of Options.
const (
	DefaultConnectTimeout = 15 * time.Second
	DefaultHeaderTimeout  = 30 * time.Second
	DefaultStallTimeout   = 60 * time.Second
)

// Options bound one download. The zero value uses the defaults and no size
// bound.
type Options struct {
	// MaxBytes bounds the body; 0 means no bound.
	MaxBytes       int64
	ConnectTimeout time.Duration
	HeaderTimeout  time.Duration
	StallTimeout   time.Duration
	// UserAgent is sent when set.
	UserAgent string
}

func (o Options) withDefaults() Options {
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.HeaderTimeout <= 0 {
		o.HeaderTimeout = DefaultHeaderTimeout
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = DefaultStallTimeout
	}
	return o
}

// Get downloads rawURL into w and returns how many bytes it wrote.
func Get(ctx context.Context, rawURL string, w io.Writer, o Options) (int64, error) {
	o = o.withDefaults()
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return 0, apierr.New(apierr.InvalidInput, "%q is not an http(s) URL", rawURL).With("url", rawURL)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return 0, apierr.Wrap(apierr.InvalidInput, err, "fetching "+rawURL).With("url", rawURL)
	}
	if o.UserAgent != "" {
		req.Header.Set("User-Agent", o.UserAgent)
	}
	dialer := &net.Dialer{Timeout: o.ConnectTimeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   o.ConnectTimeout,
		ResponseHeaderTimeout: o.HeaderTimeout,
		DisableKeepAlives:     true,
		ForceAttemptHTTP2:     true,
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return 0, failure(ctx, rawURL, err, o)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		code := apierr.Unavailable
		if resp.StatusCode == http.StatusNotFound {
			code = apierr.NotFound
		}
		return 0, apierr.New(code, "fetching %s: %s", rawURL, resp.Status).With("url", rawURL).With("status", resp.StatusCode)
	}
	if o.MaxBytes > 0 && resp.ContentLength > o.MaxBytes {
		return 0, tooLarge(rawURL, o.MaxBytes)
	}
	// The stall timer cancels the request when no byte came for
	// StallTimeout; every read that returns data re-arms it.
	stall := time.AfterFunc(o.StallTimeout, func() { cancel(errStalled) })
	defer stall.Stop()
	var body io.Reader = &stallReader{r: resp.Body, t: stall, d: o.StallTimeout}
	if o.MaxBytes > 0 {
		body = io.LimitReader(body, o.MaxBytes+1)
	}
	n, err := io.Copy(w, body)
	if err != nil {
		return n, failure(ctx, rawURL, err, o)
	}
	if o.MaxBytes > 0 && n > o.MaxBytes {
		return n, tooLarge(rawURL, o.MaxBytes)
	}
	return n, nil
}

var errStalled = errors.New("stalled")

type stallReader struct {
	r io.Reader
	t *time.Timer
	d time.Duration
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.t.Reset(s.d)
	}
	return n, err
}

func tooLarge(rawURL string, limit int64) error {
	return apierr.New(apierr.TooLarge, "fetching %s: larger than %d bytes", rawURL, limit).
		With("url", rawURL).With("limit_bytes", limit)
}

// failure converts a transport or body error into an apierr.
func failure(ctx context.Context, rawURL string, err error, o Options) error {
	if errors.Is(context.Cause(ctx), errStalled) {
		return apierr.Wrap(apierr.Timeout, err, fmt.Sprintf("fetching %s: nothing received for %s", rawURL, o.StallTimeout)).
			With("url", rawURL).With("stall_timeout", o.StallTimeout.String())
	}
	if ctx.Err() != nil {
		return apierr.Wrap(apierr.CodeOf(ctx.Err()), err, "fetching "+rawURL).With("url", rawURL)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return apierr.Wrap(apierr.Timeout, err, fmt.Sprintf("fetching %s: no answer in time (connect %s, headers %s)",
			rawURL, o.ConnectTimeout, o.HeaderTimeout)).With("url", rawURL)
	}
	return apierr.Wrap(apierr.Unavailable, err, "fetching "+rawURL).With("url", rawURL)
}
