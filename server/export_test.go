package server

// SetMaxKnownSessions lowers the bound of the sessions component's node
// cache for gateways built from now on (tests of eviction), and returns a
// func that restores it.
func SetMaxKnownSessions(n int) func() {
	old := maxKnownSessions
	maxKnownSessions = n
	return func() { maxKnownSessions = old }
}
