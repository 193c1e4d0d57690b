package upstreams

import (
	"os/exec"
	"syscall"
)

// setChildAttrs starts a stdio upstream in a process group of its own, and
// makes the kernel kill it when the gateway dies, so that it does not
// outlive the gateway even on SIGKILL. (Processes it starts itself are
// killed with its group when its session ends; on SIGKILL of the gateway
// only the child is.)
func setChildAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}

// killGroup kills what is left of a stdio upstream's process group.
func killGroup(cmd *exec.Cmd) {
	if cmd != nil && cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}
