//go:build !linux

package upstreams

import "os/exec"

// setChildAttrs has no portable equivalent of Linux's parent-death signal;
// Close still terminates children on an orderly shutdown.
func setChildAttrs(*exec.Cmd) {}

// killGroup has nothing to do where children get no process group.
func killGroup(*exec.Cmd) {}
