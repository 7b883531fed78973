package hosts

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/refiners-go/refiners/sdk"
)

// TestPluginErrorsKeepTheirCodes: a plugin's error reaches the host's
// caller with the plugin's code and message (not the gRPC wrapping), and
// the host's own failures have codes of their own.
func TestPluginErrorsKeepTheirCodes(t *testing.T) {
	h := newHost(t, Options{CallTimeout: 2 * time.Second})
	install(t, h, "example")
	install(t, h, "faulty")
	ctx := context.Background()
	for _, c := range []struct {
		name, plugin, op, params string
		code                     codes.Code
		msg                      string
	}{
		{"bad parameters", "example", "lora", `{"target": 3}`, sdk.InvalidArgument, "plugin example: Plan: lora: parameters: json: cannot unmarshal"},
		{"unknown operation", "example", "nope", `{}`, sdk.InvalidArgument, `unknown operation "nope"`},
		{"a crash", "faulty", "crash", ``, codes.Unavailable, "crashed during Plan"},
		{"a hang", "faulty", "hang", ``, codes.DeadlineExceeded, "did not answer Plan within 2s"},
		{"not installed", "missing", "x", ``, sdk.NotFound, "is not installed"},
	} {
		_, err := h.Plan(ctx, c.plugin, &sdk.PlanRequest{Operation: c.op, Params: c.params})
		if got := sdk.CodeOf(err); got != c.code || !strings.Contains(err.Error(), c.msg) || strings.Contains(err.Error(), "rpc error") {
			t.Errorf("%s: code %v, error %v; want %v and %q", c.name, got, err, c.code, c.msg)
		}
	}
}

// TestAPluginThatForksIsStoppedOnTime: a "plugin" whose child keeps its
// output open fails to start within the start timeout, and its child is
// stopped with it.
func TestAPluginThatForksIsStoppedOnTime(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	script := filepath.Join(dir, "forks.sh")
	os.WriteFile(script, []byte("#!/bin/sh\nsleep 120 &\necho $! > "+pidFile+"\nwait\n"), 0o755)
	h := newHost(t, Options{StartTimeout: time.Second, CallTimeout: time.Second})
	done := make(chan error, 1)
	go func() {
		_, err := h.Install(context.Background(), script)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "timeout while waiting for plugin to start") {
			t.Errorf("install: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("install of a forking plugin still waits 30s after its 1s start timeout")
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("the plugin's child (pid %d) outlived it", pid)
	}
}
