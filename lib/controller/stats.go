package controller

// Stats are the controller's own counters, for volantd's metrics.
type Stats struct {
	// ReconcilePasses counts passes of the deployment reconciler;
	// ReconcileErrors the errors they met (a replica that could not be
	// created, deleted or replaced; a database read that failed).
	ReconcilePasses, ReconcileErrors uint64
	// BootQueue is the number of starts waiting for a boot slot
	// (--max-booting); Booting the slots taken.
	BootQueue, Booting int
}

// Stats returns the controller's counters now.
func (c *Controller) Stats() Stats {
	return Stats{
		ReconcilePasses: c.passes.Load(), ReconcileErrors: c.passErrors.Load(),
		BootQueue: c.boots.Waiting(), Booting: c.boots.Booting(),
	}
}
