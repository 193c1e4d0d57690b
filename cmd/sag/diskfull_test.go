package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDiskFull runs a gateway whose data directory is on a small file
// system and fills it: calls are refused with a clear error (none is
// answered without its audit record), and once there is room again the
// gateway serves again, without a restart. Mounting needs root: without
// it, the test runs itself again as root of a user namespace of its own
// (unshare), and fails if it cannot.
// diskFullChild marks TestDiskFull's run of itself in a user namespace.
const diskFullChild = "SAG_DISK_FULL_CHILD"

func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv(diskFullChild) != "" {
			t.Fatal("not root even in a user namespace of its own")
		}
		cmd := exec.Command("unshare", "--user", "--map-root-user", "--mount",
			os.Args[0], "-test.run=^TestDiskFull$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), diskFullChild+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("TestDiskFull as root of a user namespace (it mounts a tmpfs): %v\n%s", err, out)
		}
		t.Logf("run as root of a user namespace:\n%s", out)
		return
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a 16 MiB tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	p := startSagAt(t, freeAddr(t), filepath.Join(dir, "data"), "--auth", "open", "--upstream", "fx="+startFixture(t))
	cs := connectTo(t, p.base+"/mcp", "2026-07-28")

	acked := 0
	call := func(text string) error {
		res, err := callOnce(cs, "fx__echo", map[string]any{"text": text})
		switch {
		case err != nil:
			return err
		case res.IsError:
			return fmt.Errorf("tool error: %v", res.Content)
		}
		acked++
		return nil
	}
	if err := call("before"); err != nil {
		t.Fatal(err)
	}

	// Fill the file system.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()
	var refused error
	for i := 0; i < 5000 && refused == nil; i++ {
		refused = call(fmt.Sprintf("full %d", i))
	}
	if refused == nil || !strings.Contains(refused.Error(), "audit unavailable; call refused") {
		t.Fatalf("calls on a full disk: %v, want them refused: audit unavailable", refused)
	}

	// Room again: the gateway serves again.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for call("after") != nil {
		if time.Now().After(deadline) {
			t.Fatalf("still refusing 10s after the disk has room\n%s", p.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	if p.err != nil {
		t.Errorf("graceful stop: %v\n%s", p.err, p.stderr)
	}
	stored := 0
	for _, rec := range storedAudit(t, p.data) {
		if rec.Tool == "fx__echo" && rec.Decision == "allow" {
			stored++
		}
	}
	t.Logf("%d calls answered, %d allow records stored; refused with: %v", acked, stored, refused)
	if stored < acked {
		t.Errorf("%d calls were answered but only %d have their audit record", acked, stored)
	}
}
