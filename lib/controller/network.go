package controller

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/store"
)

// Renetwork makes the host side of a new guest pool: the bridge's address
// and the endpoint kestrel reports to. It returns that endpoint's host.
type Renetwork func(ctx context.Context, pool ipam.Pool) (agentHost string, err error)

// NetworkSetting is the stored guest network (store.SettingNetwork).
type NetworkSetting struct {
	Subnet string `json:"subnet"`
}

// pool is the guest address pool now.
func (c *Controller) pool() ipam.Pool {
	c.netMu.RLock()
	defer c.netMu.RUnlock()
	return c.cfg.Pool
}

func (c *Controller) agentHost() string {
	c.netMu.RLock()
	defer c.netMu.RUnlock()
	return c.cfg.AgentHost
}

// Network is the guest network: the pool VMs take their addresses from.
func (c *Controller) Network() api.Network { return networkOf(c.pool()) }

func networkOf(p ipam.Pool) api.Network {
	return api.Network{Subnet: p.Subnet.String(), Gateway: p.Gateway.String(), RangeStart: p.Start.String(), RangeEnd: p.End.String()}
}

// SetNetwork makes subnet the guest subnet (gateway its first address,
// the default range) and keeps it across restarts, where it wins over
// volantd's --subnet. The same subnet again changes nothing (changed
// false), with or without VMs. Another subnet is refused (CONFLICT) while
// any VM exists: VMs keep their leases, and a VM's address never moves
// under it. NOT_SUPPORTED when the daemon cannot change its host network
// (no Renetwork).
func (c *Controller) SetNetwork(ctx context.Context, subnet string) (api.Network, bool, error) {
	pool, err := ipam.PoolConfig{Subnet: subnet}.Pool()
	if err != nil {
		return api.Network{}, false, err
	}
	// Creates hold netMu for reading from the pool they lease from to
	// their commit, so no VM appears between the count and the swap.
	c.netMu.Lock()
	defer c.netMu.Unlock()
	if pool == c.cfg.Pool {
		return networkOf(pool), false, nil
	}
	if c.cfg.Renetwork == nil {
		return networkOf(c.cfg.Pool), false, apierr.New(apierr.NotSupported, "this volantd cannot change its guest network at run time; start it with --subnet %s", pool.Subnet)
	}
	var vms, leases int
	err = c.st.Read(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM vms), (SELECT count(*) FROM ip_leases)`).Scan(&vms, &leases)
	})
	if err != nil {
		return api.Network{}, false, err
	}
	if vms > 0 || leases > 0 {
		return networkOf(c.cfg.Pool), false, apierr.New(apierr.Conflict,
			"the guest subnet is %s and %d VMs hold %d addresses in it: a VM's address never moves; delete the VMs first to use %s",
			c.cfg.Pool.Subnet, vms, leases, pool.Subnet).With("subnet", c.cfg.Pool.Subnet.String()).With("requested", pool.Subnet.String()).
			With("vms", vms)
	}
	host, err := c.cfg.Renetwork(ctx, pool)
	if err != nil {
		return networkOf(c.cfg.Pool), false, fmt.Errorf("changing the guest network to %s: %w", pool.Subnet, err)
	}
	if err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		return store.SetSettingTx(ctx, tx, store.SettingNetwork, NetworkSetting{Subnet: pool.Subnet.String()})
	}); err != nil {
		// Not kept: put the host back as it was.
		if _, rerr := c.cfg.Renetwork(context.WithoutCancel(ctx), c.cfg.Pool); rerr != nil {
			c.log.Error("restoring the guest network", "subnet", c.cfg.Pool.Subnet.String(), "err", rerr)
		}
		return networkOf(c.cfg.Pool), false, err
	}
	old := c.cfg.Pool
	c.cfg.Pool, c.cfg.AgentHost = pool, host
	c.log.Info("guest network changed", "subnet", pool.Subnet.String(), "was", old.Subnet.String(), "agent_host", host)
	return networkOf(pool), true, nil
}
