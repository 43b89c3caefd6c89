package server

import "time"

// SetBlockRefresh sets how old block counters may get before a scrape
// asks the hypervisors again (blockRefresh).
func SetBlockRefresh(s *Server, d time.Duration) {
	s.metrics.blockMu.Lock()
	s.metrics.blockRefresh = d
	s.metrics.blockMu.Unlock()
}
