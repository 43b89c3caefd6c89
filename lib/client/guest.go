package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// Exec runs a command in a running VM to its end and returns its output
// (POST /api/v1/vms/{name}/exec without an upgrade).
func (c *Client) Exec(ctx context.Context, name string, req api.ExecRequest) (*api.ExecResult, error) {
	var res api.ExecResult
	if err := c.call(ctx, request{method: http.MethodPost, path: api.Prefix + "/vms/" + esc(name) + "/exec", body: req, stream: true}, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// GuestSession opens an interactive session with a running VM's agent
// (POST /api/v1/vms/{name}/exec upgraded to agentchan.UpgradeProtocol):
// run commands on it with Exec. Close it when done.
func (c *Client) GuestSession(ctx context.Context, name string) (*agentchan.Session, error) {
	resp, cancel, err := c.do(ctx, request{method: http.MethodPost, path: api.Prefix + "/vms/" + esc(name) + "/exec", stream: true,
		header: http.Header{"Connection": {"Upgrade"}, "Upgrade": {agentchan.UpgradeProtocol}, "Accept": {"*/*"}}})
	if err != nil {
		return nil, err
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if resp.StatusCode != http.StatusSwitchingProtocols || !ok {
		resp.Body.Close()
		cancel()
		return nil, apierr.New(apierr.NotSupported, "volantd at %s answered the exec upgrade with %s instead of switching protocols", c.addr, resp.Status).
			With("http_status", resp.StatusCode)
	}
	sess, err := agentchan.Client(&cancelOnCloseRW{ReadWriteCloser: rwc, cancel: cancel})
	if err != nil {
		rwc.Close()
		cancel()
		return nil, err
	}
	return sess, nil
}

// ReadFiles streams a tar archive of a guest path to w (GET
// /api/v1/vms/{name}/files). An error reported after the archive started
// (the copy-error trailer) is returned after the archive.
func (c *Client) ReadFiles(ctx context.Context, name, path string, w io.Writer) error {
	resp, cancel, err := c.do(ctx, request{method: http.MethodGet, path: api.Prefix + "/vms/" + esc(name) + "/files",
		query: url.Values{"path": {path}}, stream: true, header: http.Header{"Accept": {"application/x-tar"}}})
	if err != nil {
		return err
	}
	defer cancel()
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		if ctx.Err() != nil {
			return apierr.From(context.Cause(ctx))
		}
		return apierr.Wrap(apierr.Unavailable, err, "reading the archive from volantd")
	}
	if t := resp.Trailer.Get("Volant-Copy-Error"); t != "" {
		var e apierr.Error
		if json.Unmarshal([]byte(t), &e) == nil && e.Code != "" {
			return &e
		}
		return errors.New(t)
	}
	return nil
}

// WriteFiles sends the tar stream r to be extracted at a guest path (PUT
// /api/v1/vms/{name}/files).
func (c *Client) WriteFiles(ctx context.Context, name, path string, r io.Reader) (*api.CopyResult, error) {
	var res api.CopyResult
	err := c.call(ctx, request{method: http.MethodPut, path: api.Prefix + "/vms/" + esc(name) + "/files",
		query: url.Values{"path": {path}}, body: r, stream: true, header: http.Header{"Content-Type": {"application/x-tar"}}}, &res)
	if err != nil {
		return nil, err
	}
	return &res, nil
}
