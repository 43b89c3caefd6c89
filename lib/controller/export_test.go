package controller

// Settings is the configuration the controller runs with, defaults filled.
func (c *Controller) Settings() Config { return c.cfg }
