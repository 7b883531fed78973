package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// smallCNN is the model a spec writer writes first.
const smallCNN = `refiners: 1
name: SmallCNN
params: {classes: 10, hidden: 2048}
layers:
  - Conv2d: {in_channels: 3, out_channels: 16, kernel_size: 3, padding: 1}
  - ReLU
  - MaxPool2d: {kernel_size: 2}
  - Conv2d: {in_channels: 16, out_channels: 32, kernel_size: 3, padding: 1}
  - ReLU
  - MaxPool2d: {kernel_size: 2}
  - Flatten: {start_dim: 1}
  - Linear: {in_features: "${hidden}", out_features: 64}
  - ReLU
  - Linear: {in_features: 64, out_features: "${classes}"}
`

// TestInspectSummary: with --input-shape, inspect prints each layer's
// output shape and parameter count; a wrong in_features after a Flatten
// is named with its layer, the spec position and the shapes, after the
// rows of the layers that ran.
func TestInspectSummary(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cnn.yaml")
	os.WriteFile(path, []byte(smallCNN), 0o644)
	var b bytes.Buffer
	if err := run([]string{"inspect", path, "--input-shape", "2,3,32,32"}, &b); err != nil {
		t.Fatal(err)
	}
	want := `LAYER          OUTPUT SHAPE      PARAMS
SmallCNN       [2, 10]          136,874
  Conv2d_1     [2, 16, 32, 32]      448
  ReLU_1       [2, 16, 32, 32]        0
  MaxPool2d_1  [2, 16, 16, 16]        0
  Conv2d_2     [2, 32, 16, 16]    4,640
  ReLU_2       [2, 32, 16, 16]        0
  MaxPool2d_2  [2, 32, 8, 8]          0
  Flatten      [2, 2048]              0
  Linear_1     [2, 64]          131,136
  ReLU_3       [2, 64]                0
  Linear_2     [2, 10]              650

input [2, 3, 32, 32] float32 -> output [2, 10]
8 parameter tensors, 136,874 parameters (534.7 KiB in float32)
`
	if b.String() != want {
		t.Errorf("summary:\n%s\nwant:\n%s", b.String(), want)
	}

	b.Reset()
	err := run([]string{"inspect", path, "--input-shape", "1,3,32,32", "--set", "hidden=1024"}, &b)
	if err == nil {
		t.Fatal("a wrong in_features ran")
	}
	for _, w := range []string{"fails at layer Linear_1", "declared at " + path + ":12:5", "Linear(in_features=1024): input of shape [1, 2048], whose last dim is not 1024"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q not in the error %q", w, err)
		}
	}
	if !strings.Contains(b.String(), "  Flatten      [1, 2048]") || !strings.Contains(b.String(), "  Linear_1     --") {
		t.Errorf("the rows before the failure:\n%s", b.String())
	}
	for _, bad := range []string{"1,x,3", "-1,3"} {
		if err := run([]string{"inspect", path, "--input-shape", bad}, &b); err == nil || !strings.Contains(err.Error(), "--input-shape wants sizes") {
			t.Errorf("--input-shape %s: %v", bad, err)
		}
	}
}

// TestInitWritesTorchLikeWeights: init writes a file the spec plans
// against without a problem and that runs, with the seed in its metadata;
// the same seed writes the same bytes, and an output that is the spec
// itself is refused.
func TestInitWritesTorchLikeWeights(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cnn.yaml")
	os.WriteFile(path, []byte(smallCNN), 0o644)
	w1, w2 := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
	var b bytes.Buffer
	for _, w := range []string{w1, w2} {
		if err := run([]string{"init", path, "--output", w, "--seed", "5"}, &b); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(b.String(), "wrote "+w1+": 8 tensors, 136874 parameters (float32, seed 5)") {
		t.Errorf("init printed %q", b.String())
	}
	x, _ := os.ReadFile(w1)
	y, _ := os.ReadFile(w2)
	if !bytes.Equal(x, y) {
		t.Error("the same seed wrote different files")
	}
	if err := run([]string{"plan", path, "--weights", w1}, &b); err != nil {
		t.Errorf("plan against the initialised weights: %v", err)
	}
	f, err := weights.Open(w1)
	if err != nil {
		t.Fatal(err)
	}
	if f.Metadata()["seed"] != "5" {
		t.Errorf("metadata %v", f.Metadata())
	}
	f.Close()
	input := filepath.Join(dir, "in.safetensors")
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		return weights.Save(s, input, map[string]*tensor.Tensor{"input.0": s.Randn(1, tensor.Float32, 1, 3, 32, 32)}, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := run([]string{"run", path, "--weights", w1, "--input", input, "--output", filepath.Join(dir, "out.safetensors")}, &b); err != nil {
		t.Errorf("run with the initialised weights: %v", err)
	}
	if err := run([]string{"init", path, "--output", path}, &b); err == nil || !strings.Contains(err.Error(), "would be overwritten") {
		t.Errorf("init over the spec: %v", err)
	}
}

// TestInspectSummaryWithContexts: --input runs the summary on a file's
// inputs and contexts, for a model that reads contexts (the SD 1.5 U-Net,
// at the conformance vectors' tiny size).
func TestInspectSummaryWithContexts(t *testing.T) {
	sets := []string{"--set", "channels_1=4", "--set", "channels_2=8", "--set", "channels_3=12", "--set", "sinusoidal_embedding_dim=8",
		"--set", "timestep_embedding_dim=16", "--set", "clip_embedding_dim=8", "--set", "num_heads=2", "--set", "num_groups=2"}
	var b bytes.Buffer
	args := append([]string{"inspect", "../../specs/sd15_unet.yaml", "--input", "../../conformance/testdata/specs/sd15_unet_tiny.safetensors", "--depth", "1"}, sets...)
	if err := run(args, &b); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"  DownBlocks ", "  UpBlocks ", "input [2, 4, 8, 12] float32 -> output [2, 4, 8, 12]"} {
		if !strings.Contains(b.String(), w) {
			t.Errorf("%q not in\n%s", w, b.String())
		}
	}
	if err := run(append(args, "--input-shape", "1,4,8,8"), &b); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("--input and --input-shape together: %v", err)
	}
}
