package launch

// unusedNetwork refuses the network settings of a spec whose VM gets no
// NIC (why says why): a MAC or resolvers given for it would otherwise be
// dropped without a word.
func unusedNetwork(s Spec, why string) error {
	switch {
	case s.MAC != "":
		return badInput("mac %s given, but %s: the VM has no network", s.MAC, why).With("field", "mac").
			With("hint", "give a tap (--tap) or a lease too, or leave out the MAC")
	case len(s.DNS) > 0:
		return badInput("dns given, but %s: the VM has no network", why).With("field", "dns").
			With("hint", "give a tap (--tap) or a lease too, or leave out the resolvers")
	}
	return nil
}
