package upstreams

import (
	"os/exec"
	"syscall"
)

// setChildAttrs makes the kernel kill a stdio upstream when the gateway dies,
// so no child process outlives it even on SIGKILL.
func setChildAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
