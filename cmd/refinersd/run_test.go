package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// TestRunDoesNotOverwriteItsInputs: --output naming the weights, the
// input or the spec is refused before anything runs, as is an output
// folder that does not exist; nothing is changed.
func TestRunDoesNotOverwriteItsInputs(t *testing.T) {
	dir := t.TempDir()
	spec := filepath.Join(dir, "lin.yaml")
	os.WriteFile(spec, []byte("refiners: 1\nlayers:\n  - Linear: {in_features: 2, out_features: 3}\n"), 0o644)
	both := filepath.Join(dir, "both.safetensors") // weights and input in one file
	var buf bytes.Buffer
	f32 := func(shape ...int64) weights.Raw {
		n := int64(4)
		for _, d := range shape {
			n *= d
		}
		return weights.Raw{DType: tensor.Float32, Shape: shape, Data: make([]byte, n)}
	}
	if err := weights.Encode(&buf, map[string]weights.Raw{"param.Linear.weight": f32(3, 2), "param.Linear.bias": f32(3), "input.0": f32(1, 2)}, nil); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(both, buf.Bytes(), 0o644)
	original := buf.String()
	base := []string{"run", spec, "--weights", both, "--prefix", "param.", "--input", both}
	for _, c := range []struct {
		output, want string
	}{
		{both, "is --input"},
		{filepath.Join(dir, ".", "both.safetensors"), "would be overwritten"},
		{spec, "is the spec"},
		{filepath.Join(dir, "missing", "out.safetensors"), "folder " + filepath.Join(dir, "missing") + " does not exist"},
	} {
		var out bytes.Buffer
		err := run(append(base, "--output", c.output), &out)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--output %s: %v, want %q", c.output, err, c.want)
		}
	}
	if b, _ := os.ReadFile(both); string(b) != original {
		t.Error("the weights file was changed")
	}
	if b, _ := os.ReadFile(spec); !strings.HasPrefix(string(b), "refiners: 1") {
		t.Error("the spec was changed")
	}
	var out bytes.Buffer
	if err := run(append(base, "--output", filepath.Join(dir, "out.safetensors")), &out); err != nil {
		t.Errorf("a new output: %v", err)
	}
}
