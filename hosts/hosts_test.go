package hosts

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/refiners-go/refiners/adapt"
	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/sdk"
)

var bins = map[string]string{} // plugin name -> freshly built binary

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "refiners-plugins-")
	if err != nil {
		panic(err)
	}
	for name, pkg := range map[string]string{"example": "../plugins/example", "faulty": "./testdata/faulty"} {
		out := filepath.Join(dir, name)
		if msg, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
			panic(string(msg))
		}
		bins[name] = out
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func newHost(t *testing.T, o Options) *Host {
	h, err := New(t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func install(t *testing.T, h *Host, name string) Entry {
	e, err := h.Install(context.Background(), bins[name])
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestInstallListDescribeRemove(t *testing.T) {
	h := newHost(t, Options{})
	e := install(t, h, "example")
	if e.Name != "example" || e.Version != "1.1.0" || e.Protocol != 1 || len(e.SHA256) != 64 {
		t.Errorf("entry %+v", e)
	}
	list, err := h.List()
	if err != nil || len(list) != 1 || list[0] != e {
		t.Fatalf("list = %v, %v", list, err)
	}
	d, err := h.Describe(context.Background(), "example")
	if err != nil || len(d.Operations) != 1 || d.Operations[0].Name != "lora" {
		t.Fatalf("describe = %v, %v", d, err)
	}
	if err := h.Remove("example"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Describe(context.Background(), "example"); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Errorf("describe after remove: %v", err)
	}
}

func TestChangedBinaryIsRefused(t *testing.T) {
	h := newHost(t, Options{})
	e := install(t, h, "example")
	path := filepath.Join(h.dir, e.File)
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0})
	f.Close()
	_, err = h.Describe(context.Background(), "example")
	if err == nil || !strings.Contains(err.Error(), "changed since it was installed") {
		t.Errorf("tampered binary: %v", err)
	}
	// A binary dropped into the directory without being installed is not a plugin.
	os.WriteFile(filepath.Join(h.dir, "stray.plugin"), []byte("#!/bin/sh\n"), 0o755)
	if _, err := h.Describe(context.Background(), "stray"); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Errorf("unlisted binary: %v", err)
	}
}

func TestCrashedOrHungPluginFailsOneCall(t *testing.T) {
	h := newHost(t, Options{CallTimeout: 2 * time.Second})
	install(t, h, "faulty")
	ctx := context.Background()
	if _, err := h.Plan(ctx, "faulty", &sdk.PlanRequest{Operation: "ok"}); err != nil {
		t.Fatal(err)
	}
	first := h.PID("faulty")
	_, err := h.Plan(ctx, "faulty", &sdk.PlanRequest{Operation: "crash"})
	if err == nil || !strings.Contains(err.Error(), "plugin faulty crashed during Plan") {
		t.Errorf("crash: %v", err)
	}
	if _, err := h.Plan(ctx, "faulty", &sdk.PlanRequest{Operation: "ok"}); err != nil {
		t.Fatalf("call after a crash: %v", err)
	}
	if second := h.PID("faulty"); second == 0 || second == first {
		t.Errorf("plugin not restarted: pid %d then %d", first, second)
	}
	hung := h.PID("faulty")
	_, err = h.Plan(ctx, "faulty", &sdk.PlanRequest{Operation: "hang"})
	if err == nil || !strings.Contains(err.Error(), "did not answer Plan within 2s") {
		t.Errorf("hang: %v", err)
	}
	if _, err := h.Plan(ctx, "faulty", &sdk.PlanRequest{Operation: "ok"}); err != nil {
		t.Fatalf("call after a hang: %v", err)
	}
	if alive(hung) {
		t.Errorf("the hung plugin (pid %d) is still running", hung)
	}
	if n := h.Restarts()["faulty"]; n != 2 {
		t.Errorf("Restarts = %d, want 2 (after the crash and after the hang)", n)
	}
}

func TestPluginLogsAreRelevelled(t *testing.T) {
	var buf syncBuffer
	h := newHost(t, Options{Logger: hclog.New(&hclog.LoggerOptions{Name: "host", Level: hclog.Debug, Output: &buf})})
	install(t, h, "faulty")
	if _, err := h.Plan(context.Background(), "faulty", &sdk.PlanRequest{Operation: "ok"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for !strings.Contains(buf.String(), "[WARN]  host.plugins.faulty.faulty.plugin: planning: operation=ok") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(buf.String(), "[WARN]  host.plugins.faulty.faulty.plugin: planning: operation=ok") {
		t.Errorf("the plugin's warning is not in the host log at WARN:\n%s", buf.String())
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestClosingTheHostLeavesNoPlugin(t *testing.T) {
	h := newHost(t, Options{})
	install(t, h, "faulty")
	if _, err := h.Plan(context.Background(), "faulty", &sdk.PlanRequest{Operation: "ok"}); err != nil {
		t.Fatal(err)
	}
	pid := h.PID("faulty")
	h.Close()
	if alive(pid) {
		t.Errorf("plugin pid %d outlived the host", pid)
	}
}

// alive reports whether pid is a live (not zombie) process, after giving
// it a moment to go.
func alive(pid int) bool {
	if pid == 0 {
		return false
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		stat, err := os.ReadFile("/proc/" + itoa(pid) + "/stat")
		if errors.Is(err, os.ErrNotExist) || syscall.Kill(pid, 0) == syscall.ESRCH {
			return false
		}
		if fields := strings.Fields(string(stat)); len(fields) > 2 && fields[2] == "Z" {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

// TestApplyAndEjectThroughThePlugin plans a LoRA with the example plugin,
// applies it on the host, checks the output, and ejects it exactly.
func TestApplyAndEjectThroughThePlugin(t *testing.T) {
	h := newHost(t, Options{})
	install(t, h, "example")
	dir := t.TempDir()
	loraPath := filepath.Join(dir, "lora.safetensors")
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		m := core.NewChain(core.NewLinear(4, 8, true), core.NewSiLU(), core.NewLinear(8, 8, true))
		if err := core.InitRandom(s, m, 1); err != nil {
			return err
		}
		defer core.ReleaseParams(m)
		down := s.FromFloat32([]float32{1, 0, 0, 0, 0, 1, 0, 0}, 2, 4)
		up := s.FromFloat32([]float32{1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, -1}, 8, 2)
		if err := weights.Save(s, loraPath, map[string]*tensor.Tensor{"down": down, "up": up}, nil); err != nil {
			return err
		}
		f, err := weights.Open(loraPath)
		if err != nil {
			return err
		}
		defer f.Close()
		x := s.FromFloat32([]float32{1, 2, 3, 4, -1, 0.5, 0, 2}, 2, 4)
		before, params := print(s, m)
		base, _ := core.Forward(s, m.Children()[0], x)

		req := &sdk.PlanRequest{Operation: "lora", Params: `{"target": "Linear_1", "file": "f", "down": "down", "up": "up", "scale": 0.5}`,
			Model: adapt.Summarize(m), Files: []sdk.File{adapt.Header("f", "", f)}}
		plan, err := h.Plan(context.Background(), "example", req)
		if err != nil {
			return err
		}
		a, err := adapt.Apply(s, m, plan, map[string]*weights.File{"f": f})
		if err != nil {
			return err
		}
		adapted, _ := core.Forward(s, m.Children()[0], x)
		want := s.Add(base[0], s.Scale(s.Matmul(s.Matmul(x, s.Transpose(down, 0, 1)), s.Transpose(up, 0, 1)), 0.5))
		if !s.AllClose(adapted[0], want, 1e-6, 1e-6) {
			t.Errorf("adapted output is not W x + b + 0.5·up(down(x)): %v vs %v", s.Float32s(adapted[0]), s.Float32s(want))
		}
		if err := a.Eject(); err != nil {
			return err
		}
		after, params2 := print(s, m)
		if after != before {
			t.Errorf("tree after eject:\n%s\nbefore:\n%s", after, before)
		}
		for k, v := range params {
			if !bytes.Equal(v, params2[k]) {
				t.Errorf("%s changed", k)
			}
		}
		// A plan whose binding does not fit changes nothing and says why.
		plan.Patches[0].Bindings[1].Key = "down"
		if _, err := adapt.Apply(s, m, plan, map[string]*weights.File{"f": f}); err == nil || !strings.Contains(err.Error(), "f[down] gives shape [2 4], the branch wants [8 2]") {
			t.Errorf("bad plan: %v", err)
		}
		if again, _ := print(s, m); again != before {
			t.Error("a rejected plan changed the model")
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
}

func print(s *tensor.Scope, m *core.Chain) (string, map[string][]byte) {
	params := map[string][]byte{}
	for _, e := range core.StateDict(m) {
		params[e.Key] = s.Bytes(*e.Value)
	}
	return m.String(), params
}

func TestConformanceKit(t *testing.T) {
	results, err := Check(context.Background(), bins["example"])
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if !r.Passed {
			t.Errorf("example plugin failed %q: %s", r.Name, r.Detail)
		}
	}
	if len(results) < 8 {
		t.Errorf("only %d checks ran", len(results))
	}
	results, err = Check(context.Background(), bins["faulty"])
	if err != nil {
		t.Fatal(err)
	}
	failed := map[string]bool{}
	for _, r := range results {
		if !r.Passed {
			failed[r.Name] = true
		}
	}
	for _, want := range []string{`operation "ok": has an example request`, "rejects an unknown operation with InvalidArgument"} {
		if !failed[want] {
			t.Errorf("the faulty plugin passed %q", want)
		}
	}
}
