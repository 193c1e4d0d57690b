// Package agui serves the AG-UI consent stream and console. It does not
// import server: it declares the small interfaces it needs.
package agui
