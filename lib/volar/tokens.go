package volar

import (
	"context"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/auth"
)

// --- tokens ---

// CreateToken is `volar tokens create NAME --role ROLE [--expires-in D]`.
func (s *Session) CreateToken(ctx context.Context, name, role, expiresIn string) error {
	if err := checkName("token", name); err != nil {
		return err
	}
	if !auth.Role(role).Valid() {
		return usage("--role viewer, operator or admin", "--role %q is not a role", role)
	}
	t, err := s.Client.CreateToken(ctx, api.CreateTokenRequest{Name: name, Role: role, ExpiresIn: expiresIn})
	if err != nil {
		return err
	}
	return s.Out.CreatedToken(t)
}

// ListTokens is `volar tokens list`.
func (s *Session) ListTokens(ctx context.Context) error {
	ts, err := s.Client.ListTokens(ctx)
	if err != nil {
		return err
	}
	return s.Out.TokenList(ts)
}

// RevokeToken is `volar tokens revoke NAME`.
func (s *Session) RevokeToken(ctx context.Context, name string) error {
	if err := checkName("token", name); err != nil {
		return err
	}
	t, err := s.Client.RevokeToken(ctx, name)
	if err != nil {
		return err
	}
	switch {
	case s.Out.Quiet:
		return s.Out.names(t.Name)
	case s.Out.Format == JSON:
		return s.Out.JSONValue(t)
	}
	return s.Out.line("Token %s revoked", t.Name)
}

// CreatedToken prints a new token: its secret alone on stdout with -q
// (for a file or a variable), else with what it is.
func (o *Output) CreatedToken(t *api.CreatedToken) error {
	switch {
	case o.Quiet:
		return o.names(t.Secret)
	case o.Format == JSON:
		return o.JSONValue(t)
	}
	exp := "never expires"
	if t.ExpiresAt != nil {
		exp = "expires " + t.ExpiresAt.UTC().Format(time.RFC3339)
	}
	return o.line("Token %s created (role %s, %s). Its secret, shown only now:\n%s", t.Name, t.Role, exp, t.Secret)
}

// TokenList prints tokens.
func (o *Output) TokenList(ts []api.Token) error {
	if ts == nil {
		ts = []api.Token{}
	}
	switch {
	case o.Quiet:
		for _, t := range ts {
			if err := o.names(t.Name); err != nil {
				return err
			}
		}
		return nil
	case o.Format == JSON:
		return o.JSONValue(ts)
	}
	rows := make([][]string, 0, len(ts))
	for _, t := range ts {
		exp := "-"
		if t.ExpiresAt != nil {
			exp = t.ExpiresAt.UTC().Format(time.RFC3339)
		}
		rows = append(rows, []string{t.Name, t.Role, t.State, t.CreatedBy, Age(o.now(), t.CreatedAt), exp})
	}
	return o.table([]string{"NAME", "ROLE", "STATE", "CREATED BY", "AGE", "EXPIRES"}, rows)
}
