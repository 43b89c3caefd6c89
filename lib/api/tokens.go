package api

import "time"

// The token routes (admin only; see docs/security.md):
//
//	GET    /api/v1/tokens             TokenList
//	POST   /api/v1/tokens             CreateTokenRequest → 201 CreatedToken (the only time the secret is shown)
//	DELETE /api/v1/tokens/{name}      Token (revoked_at set; repeating it answers the same)

// Token is a named API token as volantd lists it: never the secret, which
// volantd does not keep (only its SHA-256).
type Token struct {
	Name string `json:"name"`
	// Role is viewer, operator or admin.
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
	// CreatedBy is the principal that made it (a token's name, or
	// unix:root).
	CreatedBy string     `json:"created_by"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	RevokedBy string     `json:"revoked_by,omitempty"`
	// State is active, expired or revoked.
	State string `json:"state"`
}

// Token states.
const (
	TokenActive  = "active"
	TokenExpired = "expired"
	TokenRevoked = "revoked"
)

// TokenList is the answer of GET /api/v1/tokens.
type TokenList struct {
	Tokens []Token `json:"tokens"`
}

// CreateTokenRequest is the body of POST /api/v1/tokens.
type CreateTokenRequest struct {
	// Name identifies the token in listings and in the audit trail; a
	// revoked token's name stays taken.
	Name string `json:"name" jsonschema:"pattern=^[a-z0-9][a-z0-9_-]{0\\,62}$"`
	Role string `json:"role" jsonschema:"enum=viewer,enum=operator,enum=admin"`
	// ExpiresIn is how long the token is valid: a duration such as 90m,
	// 24h or 30d (default: until revoked).
	ExpiresIn string `json:"expires_in,omitempty"`
}

// CreatedToken is the answer of POST /api/v1/tokens: the token and its
// secret, which cannot be read again.
type CreatedToken struct {
	Token
	Secret string `json:"secret"`
}

// Token and audit events.
const (
	EventTokenCreated = "token.created" // {"name","role","expires_at","by"}
	EventTokenRevoked = "token.revoked" // {"name","by"}
	// EventAudit records one call that asked to change something (any
	// method but GET, and attaching to a console), made by a principal
	// who passed authentication, whatever came of it:
	// {"principal","role","operation","method","path","status","code"}
	// (code only when refused or failed). resource_id is the name in the
	// path, if any. Calls refused for a missing or wrong token are not
	// recorded here (anyone could fill the log): volantd logs them.
	EventAudit = "audit"
)
