package main

import (
	"bytes"
	"context"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// TestThirdPartyPlugin: the plugin in examples/third-party-plugin, a Go
// module of its own that depends on the SDK's module path, builds with
// go build in its folder, installs, passes the conformance kit, and its
// plan applied in a run (as branches, and fused) gives the outputs of the
// base weights plus scale·Δ.
func TestThirdPartyPlugin(t *testing.T) {
	dir := t.TempDir()
	bin, plugins := filepath.Join(dir, "taskvector"), filepath.Join(dir, "plugins")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = filepath.Join("..", "..", "examples", "third-party-plugin")
	build.Env = append(os.Environ(), "GOFLAGS=-mod=readonly")
	if msg, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build in %s: %v\n%s\n(after a dependency change in the main module, bring the example's go.mod and go.sum along: "+
			"cd examples/third-party-plugin && cp ../../go.sum . && GOFLAGS=-mod=mod go build -o /dev/null .)", build.Dir, err, msg)
	}
	var out bytes.Buffer
	refinersd := func(args ...string) string {
		t.Helper()
		out.Reset()
		if err := run(args, &out); err != nil {
			t.Fatalf("refinersd %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}
	if msg := refinersd("plugins", "install", bin, "--dir", plugins); !strings.Contains(msg, "installed taskvector 0.2.0 (protocol 1") {
		t.Errorf("install: %q", msg)
	}
	if msg := refinersd("plugins", "check", bin); !strings.Contains(msg, " 0 failed") || !strings.Contains(msg, `ok   operation "apply": its example plans, and the plan is well-formed`) {
		t.Errorf("check:\n%s", msg)
	}

	specPath := filepath.Join(dir, "mlp.yaml")
	os.WriteFile(specPath, []byte("refiners: 1\nlayers:\n  - Linear: {in_features: 4, out_features: 8}\n  - ReLU\n  - Linear: {in_features: 8, out_features: 2}\n"), 0o644)
	base := filepath.Join(dir, "base.safetensors")
	refinersd("init", specPath, "--output", base, "--seed", "1")
	delta, input, shifted := filepath.Join(dir, "delta.safetensors"), filepath.Join(dir, "in.safetensors"), filepath.Join(dir, "shifted.safetensors")
	const scale = 0.5
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		dw, db := s.Randn(2, tensor.Float32, 8, 4), s.Randn(3, tensor.Float32, 8)
		if err := weights.Save(s, delta, map[string]*tensor.Tensor{"Linear_1.weight": dw, "Linear_1.bias": db, "Unrelated.weight": db}, nil); err != nil {
			return err
		}
		if err := weights.Save(s, input, map[string]*tensor.Tensor{"input.0": s.Randn(4, tensor.Float32, 3, 4)}, nil); err != nil {
			return err
		}
		// The expected model: the base weights plus scale·Δ, by hand.
		f, err := weights.Open(base)
		if err != nil {
			return err
		}
		defer f.Close()
		w := map[string]*tensor.Tensor{}
		for _, k := range f.Keys() {
			w[k] = f.Load(s, k)
		}
		w["Linear_1.weight"] = s.Add(w["Linear_1.weight"], s.Scale(dw, scale))
		w["Linear_1.bias"] = s.Add(w["Linear_1.bias"], s.Scale(db, scale))
		return weights.Save(s, shifted, w, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	outputs := map[string]string{}
	adapter := "taskvector:" + delta + `:{"scale": 0.5}`
	for name, extra := range map[string][]string{
		"expected": {"--weights", shifted},
		"runtime":  {"--weights", base, "--adapter", adapter},
		"fused":    {"--weights", base, "--adapter", adapter, "--fuse"},
	} {
		outputs[name] = filepath.Join(dir, name+".safetensors")
		msg := refinersd(append([]string{"run", specPath, "--input", input, "--output", outputs[name], "--plugins-dir", plugins}, extra...)...)
		if name != "expected" && !strings.Contains(msg, "1 layers adapted, 2 keys matched, 1 unmatched") {
			t.Errorf("%s: no match report in %q", name, msg)
		}
	}
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		load := func(name string) []float32 {
			f, err := weights.Open(outputs[name])
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			return s.Float32s(f.Load(s, "output.0"))
		}
		want := load("expected")
		for _, name := range []string{"runtime", "fused"} {
			got := load(name)
			if len(got) != len(want) || len(got) != 6 {
				t.Fatalf("%s: %d values, want %d", name, len(got), len(want))
			}
			for i := range got {
				if d := math.Abs(float64(got[i] - want[i])); d > 1e-5*(1+math.Abs(float64(want[i]))) {
					t.Errorf("%s: output %d is %g, want %g", name, i, got[i], want[i])
				}
			}
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
}
