package controller

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/auth"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/store"
)

// MaxTokenLifetime bounds a token's expires_in.
const MaxTokenLifetime = 10 * 365 * 24 * time.Hour

// ParseLifetime reads a token's lifetime: a Go duration (90m, 24h) or a
// number of days (30d); it must be positive and at most MaxTokenLifetime.
func ParseLifetime(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if days, ok := strings.CutSuffix(s, "d"); ok && err != nil {
		var n int
		if n, err = strconv.Atoi(days); err == nil {
			d = time.Duration(n) * 24 * time.Hour
		}
	}
	if err != nil || d <= 0 || d > MaxTokenLifetime {
		return 0, apierr.New(apierr.InvalidInput, "expires_in %q must be a duration such as 90m, 24h or 30d, at most ten years", s).With("field", "expires_in")
	}
	return d, nil
}

// actor is the name the audit trail and the token events record for
// whoever ctx's call came from ("" when it came from no API call).
func actor(ctx context.Context) string {
	p, _ := auth.FromContext(ctx)
	return p.Name
}

// CreateToken makes a named token and returns it with its secret, which
// is stored only as its hash and never shown again.
func (c *Controller) CreateToken(ctx context.Context, req api.CreateTokenRequest) (*api.CreatedToken, error) {
	if err := names.Check("token name", req.Name); err != nil {
		return nil, err
	}
	role, err := auth.ParseRole(req.Role)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	var expires *time.Time
	if req.ExpiresIn != "" {
		d, err := ParseLifetime(req.ExpiresIn)
		if err != nil {
			return nil, err
		}
		t := now.Add(d)
		expires = &t
	}
	secret, err := auth.NewToken()
	if err != nil {
		return nil, err
	}
	by := actor(ctx)
	out := &api.CreatedToken{Token: api.Token{Name: req.Name, Role: string(role), CreatedAt: now, CreatedBy: by, ExpiresAt: expires, State: api.TokenActive},
		Secret: secret}
	err = c.st.Tx(ctx, func(tx *sql.Tx) error {
		var exp sql.NullString
		if expires != nil {
			exp = sql.NullString{String: store.FormatTime(*expires), Valid: true}
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO tokens (name, role, hash, created_at, created_by, expires_at) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (name) DO NOTHING`, req.Name, string(role), auth.Hash(secret), store.FormatTime(now), by, exp)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return apierr.New(apierr.Conflict, "a token named %s exists (a revoked token's name stays taken)", req.Name).With("name", req.Name)
		}
		_, err = store.AppendEvent(ctx, tx, api.EventTokenCreated, req.Name, map[string]any{"name": req.Name, "role": role, "expires_at": expires, "by": by})
		return err
	})
	if err != nil {
		return nil, err
	}
	c.notify()
	return out, nil
}

const tokenColumns = "name, role, created_at, created_by, expires_at, revoked_at, revoked_by"

func scanToken(r rowScanner, now time.Time) (api.Token, error) {
	var t api.Token
	var created string
	var expires, revoked, revokedBy sql.NullString
	if err := r.Scan(&t.Name, &t.Role, &created, &t.CreatedBy, &expires, &revoked, &revokedBy); err != nil {
		return t, err
	}
	var err error
	if t.CreatedAt, err = store.ParseTime(created); err != nil {
		return t, err
	}
	for _, f := range []struct {
		s   sql.NullString
		dst **time.Time
	}{{expires, &t.ExpiresAt}, {revoked, &t.RevokedAt}} {
		if f.s.Valid {
			tm, err := store.ParseTime(f.s.String)
			if err != nil {
				return t, err
			}
			*f.dst = &tm
		}
	}
	t.RevokedBy = revokedBy.String
	switch {
	case t.RevokedAt != nil:
		t.State = api.TokenRevoked
	case t.ExpiresAt != nil && !now.Before(*t.ExpiresAt):
		t.State = api.TokenExpired
	default:
		t.State = api.TokenActive
	}
	return t, nil
}

// ListTokens lists the named tokens, by name.
func (c *Controller) ListTokens(ctx context.Context) ([]api.Token, error) {
	out := []api.Token{}
	now := time.Now()
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, "SELECT "+tokenColumns+" FROM tokens ORDER BY name")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			t, err := scanToken(rows, now)
			if err != nil {
				return err
			}
			out = append(out, t)
		}
		return rows.Err()
	})
	return out, err
}

// RevokeToken revokes a named token at once: the next request with it is
// UNAUTHORIZED. Revoking a revoked token answers it as it is.
func (c *Controller) RevokeToken(ctx context.Context, name string) (*api.Token, error) {
	if err := names.Check("token name", name); err != nil {
		return nil, err
	}
	by := actor(ctx)
	var out api.Token
	changed := false
	err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE tokens SET revoked_at = ?, revoked_by = ? WHERE name = ? AND revoked_at IS NULL",
			store.FormatTime(time.Now()), by, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			changed = true
			if _, err := store.AppendEvent(ctx, tx, api.EventTokenRevoked, name, map[string]any{"name": name, "by": by}); err != nil {
				return err
			}
		}
		out, err = scanToken(tx.QueryRowContext(ctx, "SELECT "+tokenColumns+" FROM tokens WHERE name = ?", name), time.Now())
		if errors.Is(err, sql.ErrNoRows) {
			return apierr.New(apierr.NotFound, "no token named %s", name).With("name", name)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if changed {
		c.notify()
	}
	return &out, nil
}

// Authenticate finds the named token whose secret is token. A token that
// is unknown, expired or revoked is UNAUTHORIZED (details.reason says
// which of the last two; an unknown one is just not known).
func (c *Controller) Authenticate(ctx context.Context, token string) (auth.Principal, error) {
	var t api.Token
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		t, err = scanToken(tx.QueryRowContext(ctx, "SELECT "+tokenColumns+" FROM tokens WHERE hash = ?", auth.Hash(token)), time.Now())
		return err
	})
	if errors.Is(err, sql.ErrNoRows) {
		return auth.Principal{}, apierr.New(apierr.Unauthorized, "wrong bearer token").With("reason", "unknown")
	}
	if err != nil {
		return auth.Principal{}, err
	}
	switch t.State {
	case api.TokenRevoked:
		return auth.Principal{}, apierr.New(apierr.Unauthorized, "the token %s was revoked at %s", t.Name, t.RevokedAt.Format(time.RFC3339)).
			With("reason", "revoked").With("token", t.Name)
	case api.TokenExpired:
		return auth.Principal{}, apierr.New(apierr.Unauthorized, "the token %s expired at %s", t.Name, t.ExpiresAt.Format(time.RFC3339)).
			With("reason", "expired").With("token", t.Name)
	}
	return auth.Principal{Name: t.Name, Role: auth.Role(t.Role)}, nil
}

// Audit records one call in the event log (api.EventAudit). It runs on
// after the call's own context ended.
func (c *Controller) Audit(ctx context.Context, resource string, data map[string]any) error {
	ctx = context.WithoutCancel(ctx)
	if _, err := c.st.AppendEvent(ctx, api.EventAudit, resource, data); err != nil {
		return err
	}
	c.events.Kick()
	return nil
}
