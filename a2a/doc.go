// Package a2a maps A2A 1.0 tasks onto the request pipeline (package
// pipeline). It does not import server: it declares the small interfaces it
// needs.
package a2a
