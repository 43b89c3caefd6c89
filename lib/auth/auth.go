// Package auth holds who may call volantd's API: the three roles, the
// principal a request runs as, and the one rule for making and hashing
// named tokens. lib/server decides each route's role (its access table)
// and checks it; lib/controller stores tokens (hashed, never in clear) and
// records every mutating call in the event log under the principal's name.
//
// Roles are ordered: a viewer reads (VMs, plugins, deployments, volumes,
// snapshots, logs, events); an operator also runs VMs (create, start,
// stop, pause, resume, delete, exec, console, files, snapshots, volumes);
// an admin also manages plugins, deployments and tokens.
//
// A token is "volant_" followed by 43 characters of unpadded base64url (32
// random bytes, 256 bits). volantd keeps only its SHA-256: a token has far
// more entropy than a password, so a slow password hash would add nothing
// but cost to every request, and a leaked database does not give the
// tokens back.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"strings"

	"github.com/volantvm/volant/lib/apierr"
)

// Role is what a principal may do.
type Role string

// The roles, weakest first.
const (
	Viewer   Role = "viewer"
	Operator Role = "operator"
	Admin    Role = "admin"
)

// Roles lists the roles, weakest first.
func Roles() []Role { return []Role{Viewer, Operator, Admin} }

func (r Role) rank() int {
	switch r {
	case Viewer:
		return 1
	case Operator:
		return 2
	case Admin:
		return 3
	}
	return 0
}

// Valid reports whether r is one of Roles.
func (r Role) Valid() bool { return r.rank() > 0 }

// Allows reports whether a principal with role r may do what needs role
// need. An unknown role allows nothing, and nothing allows an unknown need.
func (r Role) Allows(need Role) bool {
	return r.rank() > 0 && need.rank() > 0 && r.rank() >= need.rank()
}

// ParseRole checks a role's name (INVALID_INPUT naming the roles).
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if !r.Valid() {
		return "", apierr.New(apierr.InvalidInput, "role %q is not one of viewer, operator, admin", s).With("field", "role").With("roles", Roles())
	}
	return r, nil
}

// Principal is who a request runs as: a named token, the daemon's own
// token (--token-file), or a local user on the unix socket.
type Principal struct {
	// Name is what the audit trail records: a token's name, DaemonToken,
	// or "unix:root" / "unix:uid=N" (UnixName).
	Name string `json:"name"`
	Role Role   `json:"role"`
}

// DaemonToken is the name the token volantd was started with (--token,
// --token-file, VOLANT_TOKEN) goes by: an admin token. Named tokens cannot
// take it (a name has no ':').
const DaemonToken = "volantd:token"

// UnixName is the name of a local user calling over the unix socket
// without a token.
func UnixName(uid int) string {
	if uid == 0 {
		return "unix:root"
	}
	return "unix:uid=" + strconv.Itoa(uid)
}

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the principal ctx carries (false: none, as in a
// library call that did not come through the API).
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// TokenPrefix starts every token volantd makes.
const TokenPrefix = "volant_"

// NewToken returns a fresh token (TokenPrefix and 256 random bits).
func NewToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", apierr.Wrap(apierr.Internal, err, "reading random bytes for a token")
	}
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// Hash is what volantd stores of a token: its SHA-256, in hex.
func Hash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// TokenInQuery returns the name of a parameter of a URL's query that
// would carry a token ("token", "access_token", "bearer", "auth",
// "authorization", "api_key", in any case), or "". volantd refuses such a
// request whatever its header says: a URL ends up in proxies' and servers'
// logs and in shell history.
func TokenInQuery(query map[string][]string) string {
	for k := range query {
		for _, p := range []string{"token", "access_token", "bearer", "auth", "authorization", "api_key"} {
			if strings.EqualFold(k, p) {
				return k
			}
		}
	}
	return ""
}
