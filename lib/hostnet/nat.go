package hostnet

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"

	"github.com/volantvm/volant/lib/apierr"
)

// natChain is the one chain of a bridge's NAT table.
const natChain = "postrouting"

// natComment is the comment of the masquerade rule; it spells out the rule's
// parameters, so comparing comments compares configurations.
func natComment(subnet netip.Prefix, uplink string) string {
	s := "volant-net masquerade " + subnet.Masked().String()
	if uplink != "" {
		s += " oif " + uplink
	}
	return s
}

// natState is what the kernel holds in a bridge's NAT table.
type natState struct {
	Present bool
	// ChainOK: exactly one chain, the postrouting nat base chain.
	ChainOK bool
	// Rules are the comments of all rules in the table.
	Rules []string
}

// matches reports whether the table is exactly what writeNAT makes.
func (n natState) matches(comment string) bool {
	return n.Present && n.ChainOK && len(n.Rules) == 1 && n.Rules[0] == comment
}

func (n natState) describe() string {
	switch {
	case !n.Present:
		return "absent"
	case !n.ChainOK || len(n.Rules) != 1:
		return fmt.Sprintf("table present with unexpected content (%d rules)", len(n.Rules))
	}
	return n.Rules[0]
}

func readNAT(table string) (natState, error) {
	var st natState
	c, err := nftables.New()
	if err != nil {
		return st, natErr(fmt.Errorf("opening nftables: %w", err))
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return st, natErr(fmt.Errorf("listing nftables tables: %w", err))
	}
	var t *nftables.Table
	for _, x := range tables {
		if x.Name == table {
			t = x
		}
	}
	if t == nil {
		return st, nil
	}
	st.Present = true
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return st, natErr(fmt.Errorf("listing nftables chains: %w", err))
	}
	var mine []*nftables.Chain
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == table {
			mine = append(mine, ch)
		}
	}
	if len(mine) == 1 {
		ch := mine[0]
		st.ChainOK = ch.Name == natChain && ch.Type == nftables.ChainTypeNAT &&
			ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookPostrouting &&
			ch.Priority != nil && *ch.Priority == *nftables.ChainPriorityNATSource
	}
	for _, ch := range mine {
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return st, natErr(fmt.Errorf("listing rules of %s %s: %w", table, ch.Name, err))
		}
		for _, r := range rules {
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			st.Rules = append(st.Rules, comment)
		}
	}
	return st, nil
}

// writeNAT makes the table hold exactly the masquerade rule, replacing
// whatever it held, in one nftables transaction.
func writeNAT(table string, replace bool, subnet netip.Prefix, uplink string) error {
	c, err := nftables.New()
	if err != nil {
		return natErr(fmt.Errorf("opening nftables: %w", err))
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: table}
	if replace {
		c.DelTable(t)
	}
	c.AddTable(t)
	ch := c.AddChain(&nftables.Chain{
		Name:     natChain,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	c.AddRule(&nftables.Rule{
		Table:    t,
		Chain:    ch,
		Exprs:    masqueradeExprs(subnet, uplink),
		UserData: userdata.AppendString(nil, userdata.TypeComment, natComment(subnet, uplink)),
	})
	if err := c.Flush(); err != nil {
		return natErr(fmt.Errorf("writing nftables table ip %s: %w", table, err))
	}
	return nil
}

func deleteNAT(table string) error {
	c, err := nftables.New()
	if err != nil {
		return natErr(fmt.Errorf("opening nftables: %w", err))
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: table})
	if err := c.Flush(); err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil // already gone
		}
		return natErr(fmt.Errorf("deleting nftables table ip %s: %w", table, err))
	}
	return nil
}

// masqueradeExprs is
//
//	ip saddr SUBNET ip daddr != SUBNET [oifname UPLINK] masquerade
func masqueradeExprs(subnet netip.Prefix, uplink string) []expr.Any {
	net4 := subnet.Masked().Addr().As4()
	mask := prefixMask(subnet.Bits())
	match := func(offset uint32, op expr.CmpOp) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask[:], Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: op, Register: 1, Data: net4[:]},
		}
	}
	e := append(match(12, expr.CmpOpEq), match(16, expr.CmpOpNeq)...) // saddr, daddr
	if uplink != "" {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: append([]byte(uplink), 0)},
		)
	}
	return append(e, &expr.Masq{})
}

func prefixMask(bits int) [4]byte {
	m := ^uint32(0) << (32 - bits)
	return [4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)}
}

// natErr marks failures that mean the kernel lacks nftables NAT.
func natErr(err error) error {
	for _, e := range []syscall.Errno{syscall.EOPNOTSUPP, syscall.EAFNOSUPPORT, syscall.EPROTONOSUPPORT} {
		if errors.Is(err, e) {
			return apierr.Wrap(apierr.NotSupported, err, "this kernel lacks nftables NAT (nf_tables, nft_chain_nat, nft_masq)")
		}
	}
	return err
}
