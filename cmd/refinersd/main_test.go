package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// TestRunWithAdapterThroughAPlugin drives the real binaries: install the
// example plugin, then `refinersd run` the ViT spec with a LoRA planned by
// the plugin, at run time and fused.
func TestRunWithAdapterThroughAPlugin(t *testing.T) {
	dir := t.TempDir()
	bin, plug := filepath.Join(dir, "refinersd"), filepath.Join(dir, "example")
	for out, pkg := range map[string]string{bin: ".", plug: "../../plugins/example"} {
		if msg, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, msg)
		}
	}
	plugins := filepath.Join(dir, "plugins")
	refinersd := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("refinersd %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	refinersd("plugins", "install", plug, "--dir", plugins)

	golden := "../../conformance/testdata/specs/vit_tiny.safetensors"
	lora := filepath.Join(dir, "lora.safetensors")
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		down, up := core.NewParameter(2, 16), core.NewParameter(64, 2)
		if err := core.InitRandom(s, down, 1); err != nil {
			return err
		}
		if err := core.InitRandom(s, up, 2); err != nil {
			return err
		}
		defer core.ReleaseParams(down)
		defer core.ReleaseParams(up)
		return weights.Save(s, lora, map[string]*tensor.Tensor{"d": down.Weight, "u": up.Weight}, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"run", "../../specs/vit.yaml", "--set", "embedding_dim=16", "--set", "patch_size=8", "--set", "image_size=32",
		"--set", "num_layers=2", "--set", "num_heads=2", "--weights", golden, "--prefix", "param.", "--input", golden, "--plugins-dir", plugins}
	adapter := "example:" + lora + `:{"target": "Chain_1.Residual_2.Linear_1", "file": "file0", "down": "d", "up": "u", "scale": 4}`
	outputs := map[string]string{}
	for name, extra := range map[string][]string{
		"base":    nil,
		"runtime": {"--adapter", adapter},
		"fused":   {"--adapter", adapter, "--fuse"},
	} {
		out := filepath.Join(dir, name+".safetensors")
		msg := refinersd(append(append(append([]string{}, base...), "--output", out), extra...)...)
		if extra != nil && !strings.Contains(msg, "1 layers adapted, 2 keys matched, 0 unmatched") {
			t.Errorf("%s: no match report in %q", name, msg)
		}
		outputs[name] = out
	}
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		load := func(path string) *tensor.Tensor {
			f, err := weights.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			return f.Load(s, "output.0")
		}
		b, r, fu := load(outputs["base"]), load(outputs["runtime"]), load(outputs["fused"])
		if s.AllClose(b, r, 1e-4, 1e-4) {
			t.Error("the adapter did not change the output")
		}
		if !s.AllClose(r, fu, 1e-4, 1e-4) {
			t.Error("fused and runtime adapters disagree")
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(lora)

	// A spec using the plugin's layer type builds once the plugin is installed.
	specPath := filepath.Join(dir, "scaled.yaml")
	os.WriteFile(specPath, []byte("refiners: 1\nlayers:\n  - example/Scaled: {factor: 5}\n"), 0o644)
	if tree := refinersd("inspect", specPath, "--plugins-dir", plugins); !strings.Contains(tree, "(CHAIN) Scaled()") || !strings.Contains(tree, "Multiply(scale=5.0)") {
		t.Errorf("inspect with the plugin's layer type:\n%s", tree)
	}
	out, err := exec.Command(bin, "inspect", specPath, "--plugins-dir", filepath.Join(dir, "none")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `RFN-S011 layer type "example/Scaled" is provided by plugin "example", which is not installed`) {
		t.Errorf("without the plugin: %v\n%s", err, out)
	}
}
