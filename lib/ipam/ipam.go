// Package ipam leases guest IPv4 addresses to VM names, in the ip_leases
// table of lib/store. volant-ipam and volantd both call it.
//
// Rules:
//
//   - Allocation is in numeric order, lowest free address of the pool first
//     (see Pool for defaults), skipping the gateway.
//   - A VM name holds at most one lease, and an address is leased to at most
//     one VM in the whole database, whatever pool it was leased from.
//   - Acquire (the lease verb) is idempotent: a VM that holds a lease gets the same one back
//     (same address, MAC and time) as long as it lies in the requested pool:
//     same subnet, same gateway, inside the range. A lease from another pool
//     is a CONFLICT (release it first); leases are never moved silently,
//     because a running guest has its address configured.
//   - Release, Get and GC find leases by VM name alone, whatever the pool.
//   - Release of a VM without a lease succeeds (nothing to do).
//   - An exhausted pool is IP_EXHAUSTED and writes nothing.
//   - Every lease and release appends an event ("ip.leased", "ip.released")
//     in the same transaction.
//
// The MAC is derived from the VM name (names.MAC: 02 + the first five bytes
// of sha256(name)), so it is the same on every host and after every
// restart; it is stored with the lease. Acquire uses attempt 0 unless
// another lease holds that MAC (two names whose hashes share 40 bits: about
// one chance in 2^41 for two given VMs, one in 3*10^7 for a full /24), then
// the next free attempt, so the result is still deterministic for a given
// set of leases.
package ipam

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/store"
)

// Lease is one VM's address. Its JSON form is the result of `volant-ipam
// lease` (kind "ipam.lease"), which volant-net and volant-launch accept on
// stdin.
type Lease struct {
	VM       string     `json:"vm"`
	IP       netip.Addr `json:"ip"`
	Prefix   int        `json:"prefix"`
	Gateway  netip.Addr `json:"gateway"`
	MAC      string     `json:"mac"`
	LeasedAt time.Time  `json:"leased_at"`
}

// Kind is the result kind of a lease ("version"/"kind" header of lib/cli).
const Kind = "ipam.lease"

// Addr is the guest's address with its prefix length, as the guest
// configures it (192.168.127.100/24).
func (l Lease) Addr() netip.Prefix { return netip.PrefixFrom(l.IP, l.Prefix) }

// Subnet is the network the lease lies in (192.168.127.0/24).
func (l Lease) Subnet() netip.Prefix { return l.Addr().Masked() }

// Validate checks a lease received from elsewhere (a piped result): a valid
// VM name, an IPv4 address and gateway on one subnet, a locally administered
// unicast MAC. Errors are INVALID_INPUT.
func (l Lease) Validate() error {
	if err := names.Check("VM name", l.VM); err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	bad := func(format string, args ...any) error {
		return apierr.New(apierr.InvalidInput, "lease of %s: "+format, append([]any{l.VM}, args...)...).With("vm", l.VM)
	}
	if !l.IP.Is4() {
		return bad("ip %q is not an IPv4 address", l.IP)
	}
	if l.Prefix < 1 || l.Prefix > 30 {
		return bad("prefix %d is not between 1 and 30", l.Prefix)
	}
	if !l.Gateway.Is4() || !l.Subnet().Contains(l.Gateway) || l.Gateway == l.IP {
		return bad("gateway %s is not another address of %s", l.Gateway, l.Subnet())
	}
	if b, ok := parseMAC(l.MAC); !ok || b[0]&0b11 != 0b10 {
		return bad("mac %q is not a locally administered unicast MAC-48 (xx:xx:xx:xx:xx:xx, lowercase)", l.MAC)
	}
	return nil
}

// parseMAC reads the canonical form names.MAC writes: six lowercase hex pairs
// separated by colons. (net.ParseMAC would do, but importing net costs every
// volant-ipam run its start-up time.)
func parseMAC(s string) ([6]byte, bool) {
	var b [6]byte
	if len(s) != 17 {
		return b, false
	}
	for i := range b {
		if i > 0 && s[3*i-1] != ':' {
			return b, false
		}
		v, err := strconv.ParseUint(s[3*i:3*i+2], 16, 8)
		if err != nil || strings.ToLower(s[3*i:3*i+2]) != s[3*i:3*i+2] {
			return b, false
		}
		b[i] = byte(v)
	}
	return b, true
}

// maxMACAttempts bounds the search for a free MAC; reaching it would take
// more colliding hashes than there will ever be VMs.
const maxMACAttempts = 16

// Acquire leases an address from pool to vm, or returns vm's existing lease
// (see the package comment).
func Acquire(ctx context.Context, st *store.Store, pool Pool, vm string) (Lease, error) {
	if err := validate(pool, vm); err != nil {
		return Lease{}, err
	}
	var l Lease
	err := st.Tx(ctx, func(tx *sql.Tx) error {
		var err error
		l, err = AcquireTx(ctx, tx, pool, vm)
		return err
	})
	return l, err
}

func validate(pool Pool, vm string) error {
	if err := names.Check("VM name", vm); err != nil {
		return fmt.Errorf("leasing ip: %w", err)
	}
	if err := pool.Validate(); err != nil {
		return fmt.Errorf("leasing ip for %s: %w", vm, err)
	}
	return nil
}

// AcquireTx is Acquire inside the caller's write transaction (volantd leases
// in the transaction that creates the VM).
func AcquireTx(ctx context.Context, tx *sql.Tx, pool Pool, vm string) (Lease, error) {
	if err := validate(pool, vm); err != nil {
		return Lease{}, err
	}
	held, err := get(ctx, tx, vm)
	switch {
	case err == nil:
		if held.Subnet() == pool.Subnet && held.Gateway == pool.Gateway && pool.Contains(held.IP) {
			return held, nil
		}
		return Lease{}, apierr.New(apierr.Conflict,
			"leasing ip for %s: it already holds %s from %s, outside the requested pool %s; release it first",
			vm, held.IP, held.Subnet(), pool).
			With("vm", vm).With("ip", held.IP.String()).With("subnet", held.Subnet().String()).
			With("gateway", held.Gateway.String()).With("pool", pool.Subnet.String())
	case !apierr.Is(err, apierr.NotFound):
		return Lease{}, err
	}

	ip, ok, err := lowestFree(ctx, tx, pool)
	if err != nil {
		return Lease{}, fmt.Errorf("leasing ip for %s: %w", vm, err)
	}
	if !ok {
		return Lease{}, apierr.New(apierr.IPExhausted, "leasing ip for %s: pool %s has no free address", vm, pool).
			With("pool", pool.Subnet.String()).With("range_start", pool.Start.String()).
			With("range_end", pool.End.String()).With("size", pool.Size())
	}
	mac, err := freeMAC(ctx, tx, vm)
	if err != nil {
		return Lease{}, fmt.Errorf("leasing ip for %s: %w", vm, err)
	}
	l := Lease{
		VM:       vm,
		IP:       ip,
		Prefix:   pool.Subnet.Bits(),
		Gateway:  pool.Gateway,
		MAC:      mac,
		LeasedAt: time.Now().UTC().Truncate(time.Millisecond),
	}
	_, err = tx.ExecContext(ctx,
		`INSERT INTO ip_leases (ip, ip_num, vm_id, mac, subnet, gateway, leased_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		l.IP.String(), int64(num(l.IP)), l.VM, l.MAC, pool.Subnet.String(), l.Gateway.String(), store.FormatTime(l.LeasedAt))
	if err != nil {
		return Lease{}, fmt.Errorf("leasing ip for %s: recording %s: %w", vm, ip, err)
	}
	if _, err := store.AppendEvent(ctx, tx, "ip.leased", vm, eventData(l, "")); err != nil {
		return Lease{}, fmt.Errorf("leasing ip for %s: %w", vm, err)
	}
	return l, nil
}

type leaseEvent struct {
	IP      string `json:"ip"`
	Prefix  int    `json:"prefix"`
	Gateway string `json:"gateway"`
	MAC     string `json:"mac"`
	Reason  string `json:"reason,omitempty"`
}

func eventData(l Lease, reason string) leaseEvent {
	return leaseEvent{IP: l.IP.String(), Prefix: l.Prefix, Gateway: l.Gateway.String(), MAC: l.MAC, Reason: reason}
}

// lowestFreeSQL finds the lowest unleased number in [?1, ?2]: ?1 itself, or
// the successor of the lowest leased number in [?1, ?2) whose successor is
// unleased (NULL when every number is leased). Both probes use the ip_num
// index, and the second walks the leases in order and stops at the first
// gap, so the cost grows with the leases below the lowest free address,
// not with the size of the pool.
const lowestFreeSQL = `
SELECT CASE
	WHEN NOT EXISTS (SELECT 1 FROM ip_leases WHERE ip_num = ?1) THEN ?1
	ELSE (SELECT l.ip_num + 1 FROM ip_leases AS l
	       WHERE l.ip_num >= ?1 AND l.ip_num < ?2
	         AND NOT EXISTS (SELECT 1 FROM ip_leases AS m WHERE m.ip_num = l.ip_num + 1)
	       ORDER BY l.ip_num LIMIT 1)
END`

func lowestFree(ctx context.Context, tx *sql.Tx, pool Pool) (netip.Addr, bool, error) {
	for _, seg := range pool.segments() {
		var n sql.NullInt64
		err := tx.QueryRowContext(ctx, lowestFreeSQL, int64(seg[0]), int64(seg[1])).Scan(&n)
		if err != nil {
			return netip.Addr{}, false, fmt.Errorf("finding a free address in %s: %w", pool, err)
		}
		if n.Valid {
			return addr(uint32(n.Int64)), true, nil
		}
	}
	return netip.Addr{}, false, nil
}

func freeMAC(ctx context.Context, tx *sql.Tx, vm string) (string, error) {
	for attempt := 0; attempt < maxMACAttempts; attempt++ {
		mac := names.MAC(vm, attempt)
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM ip_leases WHERE mac = ?`, mac).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return mac, nil
		}
		if err != nil {
			return "", fmt.Errorf("checking mac %s: %w", mac, err)
		}
	}
	return "", fmt.Errorf("no free mac after %d attempts", maxMACAttempts)
}

// Release frees vm's lease and returns it, or returns nil when vm holds none
// (which is not an error).
func Release(ctx context.Context, st *store.Store, vm string) (*Lease, error) {
	if err := names.Check("VM name", vm); err != nil {
		return nil, fmt.Errorf("releasing ip: %w", err)
	}
	var l *Lease
	err := st.Tx(ctx, func(tx *sql.Tx) error {
		var err error
		l, err = ReleaseTx(ctx, tx, vm)
		return err
	})
	return l, err
}

// ReleaseTx is Release inside the caller's write transaction.
func ReleaseTx(ctx context.Context, tx *sql.Tx, vm string) (*Lease, error) {
	return release(ctx, tx, vm, "release")
}

func release(ctx context.Context, tx *sql.Tx, vm, reason string) (*Lease, error) {
	l, err := get(ctx, tx, vm)
	if apierr.Is(err, apierr.NotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM ip_leases WHERE vm_id = ?`, vm); err != nil {
		return nil, fmt.Errorf("releasing ip of %s: %w", vm, err)
	}
	if _, err := store.AppendEvent(ctx, tx, "ip.released", vm, eventData(l, reason)); err != nil {
		return nil, fmt.Errorf("releasing ip of %s: %w", vm, err)
	}
	return &l, nil
}

// Get returns vm's lease, or NOT_FOUND.
func Get(ctx context.Context, st *store.Store, vm string) (Lease, error) {
	if err := names.Check("VM name", vm); err != nil {
		return Lease{}, err
	}
	var l Lease
	err := st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		l, err = get(ctx, tx, vm)
		return err
	})
	return l, err
}

// List returns every lease in the database, in address order.
func List(ctx context.Context, st *store.Store) ([]Lease, error) {
	out := []Lease{}
	err := st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = list(ctx, tx)
		return err
	})
	return out, err
}

// GCResult reports what GC freed.
type GCResult struct {
	// Freed are the leases of VMs not in the keep list, in address order.
	Freed []Lease `json:"freed"`
	// Kept counts the leases left in place.
	Kept int `json:"kept"`
	// DryRun is set when nothing was actually freed.
	DryRun bool `json:"dry_run,omitempty"`
}

// GC frees the lease of every VM not named in keep (the live VMs; CNI's GC
// semantics) and reports what it freed. An empty keep list frees every
// lease. With dryRun it reports the same without changing anything. A keep
// list with an invalid name is refused whole: it is likely a typo, and
// freeing the address of a live VM is worse than doing nothing.
func GC(ctx context.Context, st *store.Store, keep []string, dryRun bool) (GCResult, error) {
	live := make(map[string]bool, len(keep))
	for _, k := range keep {
		if err := names.Check("VM name", k); err != nil {
			return GCResult{}, fmt.Errorf("gc: keep list: %w", err)
		}
		live[k] = true
	}
	res := GCResult{Freed: []Lease{}, DryRun: dryRun}
	err := st.Tx(ctx, func(tx *sql.Tx) error {
		res.Freed, res.Kept = []Lease{}, 0
		all, err := list(ctx, tx)
		if err != nil {
			return err
		}
		for _, l := range all {
			if live[l.VM] {
				res.Kept++
				continue
			}
			if !dryRun {
				if _, err := release(ctx, tx, l.VM, "gc"); err != nil {
					return err
				}
			}
			res.Freed = append(res.Freed, l)
		}
		return nil
	})
	if err != nil {
		return GCResult{}, fmt.Errorf("gc: %w", err)
	}
	return res, nil
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

const leaseColumns = `vm_id, ip, subnet, gateway, mac, leased_at`

type scanner interface{ Scan(dest ...any) error }

func scan(r scanner) (Lease, error) {
	var l Lease
	var ip, subnet, gw, at string
	if err := r.Scan(&l.VM, &ip, &subnet, &gw, &l.MAC, &at); err != nil {
		return l, err
	}
	var err error
	if l.IP, err = netip.ParseAddr(ip); err != nil {
		return l, fmt.Errorf("stored lease of %s: ip: %w", l.VM, err)
	}
	pfx, err := netip.ParsePrefix(subnet)
	if err != nil {
		return l, fmt.Errorf("stored lease of %s: subnet: %w", l.VM, err)
	}
	l.Prefix = pfx.Bits()
	if l.Gateway, err = netip.ParseAddr(gw); err != nil {
		return l, fmt.Errorf("stored lease of %s: gateway: %w", l.VM, err)
	}
	if l.LeasedAt, err = store.ParseTime(at); err != nil {
		return l, fmt.Errorf("stored lease of %s: %w", l.VM, err)
	}
	return l, nil
}

func get(ctx context.Context, q querier, vm string) (Lease, error) {
	l, err := scan(q.QueryRowContext(ctx, `SELECT `+leaseColumns+` FROM ip_leases WHERE vm_id = ?`, vm))
	if errors.Is(err, sql.ErrNoRows) {
		return Lease{}, apierr.New(apierr.NotFound, "no lease for VM %s", vm).With("vm", vm)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("reading the lease of %s: %w", vm, err)
	}
	return l, nil
}

func list(ctx context.Context, q querier) ([]Lease, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+leaseColumns+` FROM ip_leases ORDER BY ip_num`)
	if err != nil {
		return nil, fmt.Errorf("listing leases: %w", err)
	}
	defer rows.Close()
	out := []Lease{}
	for rows.Next() {
		l, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("listing leases: %w", err)
		}
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing leases: %w", err)
	}
	return out, nil
}
