package client

import (
	"context"
	"net/http"

	"github.com/volantvm/volant/lib/api"
)

// --- tokens (admin only) ---

// ListTokens returns the named tokens (never their secrets), by name.
func (c *Client) ListTokens(ctx context.Context) ([]api.Token, error) {
	var l api.TokenList
	if err := c.call(ctx, request{method: http.MethodGet, path: api.Prefix + "/tokens"}, &l); err != nil {
		return nil, err
	}
	return l.Tokens, nil
}

// CreateToken makes a named token; the answer's Secret is the only copy.
func (c *Client) CreateToken(ctx context.Context, req api.CreateTokenRequest) (*api.CreatedToken, error) {
	var t api.CreatedToken
	return &t, c.call(ctx, request{method: http.MethodPost, path: api.Prefix + "/tokens", body: req}, &t)
}

// RevokeToken revokes a named token at once.
func (c *Client) RevokeToken(ctx context.Context, name string) (*api.Token, error) {
	var t api.Token
	return &t, c.call(ctx, request{method: http.MethodDelete, path: api.Prefix + "/tokens/" + esc(name)}, &t)
}
