//go:build !unix

package identity

// lockDir has no portable lock here: one process per keys directory.
func lockDir(string) (unlock func(), err error) { return func() {}, nil }
