// Package agui serves AG-UI 1.0 for users: the consent stream and console,
// and the agent proxy that runs upstream AG-UI agents through the gateway
// (their events checked against the AG-UI event schema). It does not
// import server: it declares the small interfaces it needs.
package agui
