package boot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/manifest"
)

// FetchBudget bounds how long kestrel keeps trying the control plane for a
// manifest before it gives up (and, in a guest, powers off saying why).
const FetchBudget = 60 * time.Second

// ErrNoManifest says that no source was configured.
var ErrNoManifest = errors.New("no manifest: volant.manifest, volant.manifest_file and volant.api_host with volant.plugin are all unset")

// LocalManifest reads the manifest from the command line (volant.manifest=)
// or from a file (volant.manifest_file=, a path in the initramfs). It
// returns nil, nil when neither is set.
func LocalManifest(a bootargs.Args) (*manifest.Manifest, error) {
	if a.Manifest != "" {
		m, err := manifest.DecodeString(a.Manifest)
		if err != nil {
			return nil, fmt.Errorf("volant.manifest: %w", err)
		}
		return m, nil
	}
	if a.ManifestFile != "" {
		data, err := os.ReadFile(a.ManifestFile)
		if err != nil {
			return nil, fmt.Errorf("volant.manifest_file: %w", err)
		}
		m, err := manifest.Parse(data)
		if err != nil {
			return nil, fmt.Errorf("volant.manifest_file=%s: %w", a.ManifestFile, err)
		}
		return m, nil
	}
	return nil, nil
}

// ManifestURL is where the control plane serves plugin's manifest.
func ManifestURL(host string, port int, plugin string) string {
	if port == 0 {
		port = 80
	}
	return "http://" + joinHostPort(host, port) + agentapi.ManifestPath(plugin)
}

func joinHostPort(host string, port int) string {
	for _, c := range host {
		if c == ':' {
			return "[" + host + "]:" + strconv.Itoa(port)
		}
	}
	return host + ":" + strconv.Itoa(port)
}

// FetchManifest gets the manifest from the control plane, retrying with
// backoff (250 ms doubling to 5 s) until budget runs out. A 4xx answer other
// than 408/429 is final: the control plane knows no such plugin.
func FetchManifest(ctx context.Context, a bootargs.Args, budget time.Duration, log *slog.Logger) (*manifest.Manifest, error) {
	if a.APIHost == "" || a.Plugin == "" {
		return nil, ErrNoManifest
	}
	url := ManifestURL(a.APIHost, a.APIPort, a.Plugin)
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	backoff := 250 * time.Millisecond
	var last error
	for attempt := 1; ; attempt++ {
		m, err, final := fetchOnce(ctx, client, url)
		if err == nil {
			log.Info("manifest fetched from the control plane", "url", url, "attempts", attempt)
			return m, nil
		}
		if final {
			return nil, err
		}
		last = err
		if attempt == 1 {
			log.Warn("cannot fetch the manifest yet; retrying", "url", url, "for", budget, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("fetching the manifest from %s: no success within %s (%d attempts); last error: %w", url, budget, attempt, last)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func fetchOnce(ctx context.Context, client *http.Client, url string) (m *manifest.Manifest, err error, final bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err, true
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "kestrel")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err, false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, manifest.MaxBytes+1))
	if err != nil {
		return nil, err, false
	}
	switch {
	case resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status), false
	case resp.StatusCode >= 400:
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, firstLine(body)), true
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("GET %s: unexpected %s", url, resp.Status), true
	}
	m, err = manifest.Parse(body)
	if err != nil {
		// Tolerate a wrapped answer ({"manifest":{...}}), as the volant-*
		// commands print it.
		var w struct {
			Manifest json.RawMessage `json:"manifest"`
		}
		if json.Unmarshal(body, &w) == nil && len(w.Manifest) > 0 {
			if m2, err2 := manifest.Parse(w.Manifest); err2 == nil {
				return m2, nil, true
			}
		}
		return nil, fmt.Errorf("manifest from %s: %w", url, err), true
	}
	return m, nil, true
}

func firstLine(b []byte) string {
	for i, c := range b {
		if c == '\n' || i >= 200 {
			return string(b[:i])
		}
	}
	return string(b)
}
