// Package config owns SAG's configuration: the Config types, the embedded
// default, and the way a YAML file becomes a Config. Parsing is strict and
// runs in a fixed order: YAML decode, JSON Schema validation against the
// config schema (package schemas), decode with unknown fields refused over the
// defaults, then semantic validation. Every error names the field at fault
// and none contains the admin token.
//
// It only describes configuration: it must not start listeners, open stores,
// spawn upstreams or read anything but the config file and the admin token
// file it is pointed at.
package config
