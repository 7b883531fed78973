package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/models/sam/predict"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

// The tiny SAM of the predictor's conformance cases (random weights).
const (
	tinySAM      = "../../conformance/testdata/sam/predict_model.safetensors"
	tinySAMImage = "../../conformance/testdata/sam/predict_wide.png"
	officialSAM  = "../../conformance/testdata/sam_official/model.pth"
)

// predictInProcess is the library's answer to the same prompt.
func predictInProcess(t *testing.T, weightsPath string, prompt predict.Prompt) *predict.Prediction {
	t.Helper()
	img, err := pipeline.ReadImage(tinySAMImage)
	if err != nil {
		t.Fatal(err)
	}
	var p *predict.Prediction
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		m, err := predict.Load(s, predict.Config{Weights: weightsPath})
		if err != nil {
			return err
		}
		defer m.Release()
		e, err := m.Embed(s, pipeline.ToRGB(img))
		if err != nil {
			return err
		}
		p, err = m.Predict(s, e, prompt)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// readMask reads a mask PNG back as booleans, checking it is 0/255 gray.
func readMask(t *testing.T, path string) ([]bool, int, int) {
	t.Helper()
	img, err := pipeline.ReadImage(path)
	if err != nil {
		t.Fatal(err)
	}
	g, ok := img.(*image.Gray)
	if !ok {
		t.Fatalf("%s is a %T, want 8-bit gray", path, img)
	}
	out := make([]bool, len(g.Pix))
	for i, v := range g.Pix {
		if v != 0 && v != 255 {
			t.Fatalf("%s has a pixel %d (want 0 or 255)", path, v)
		}
		out[i] = v == 255
	}
	return out, g.Rect.Dx(), g.Rect.Dy()
}

func TestSegment(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "mask.png")
	low := filepath.Join(dir, "low.safetensors")
	var stdout bytes.Buffer
	args := []string{"segment", "--weights", tinySAM, "--image", tinySAMImage, "--point", "40,30.5", "--point", "100,60,fg",
		"--point", "12,80,bg", "--output", out, "--all-masks", "--json", "--low-res-output", low}
	if err := run(args, &stdout); err != nil {
		t.Fatal(err)
	}
	var res segmentResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("--json output: %v\n%s", err, stdout.String())
	}
	want := predictInProcess(t, tinySAM, predict.Prompt{Points: []predict.Point{{X: 40, Y: 30.5, Foreground: true}, {X: 100, Y: 60, Foreground: true}, {X: 12, Y: 80}}})
	if res.Width != 150 || res.Height != 97 || res.Best != want.Best() || len(res.Masks) != 3 {
		t.Fatalf("result %+v", res)
	}
	for i, m := range res.Masks {
		got, w, h := readMask(t, m.Path)
		if w != 150 || h != 97 {
			t.Errorf("mask %d is %dx%d, want 150x97", i, w, h)
		}
		n := 0
		for j, b := range want.Binary(i) {
			if got[j] != b {
				t.Fatalf("mask %d differs from the library's at pixel %d", i, j)
			}
			if b {
				n++
			}
		}
		if m.Pixels != n || m.Score != want.IoU[i] || m.Path != filepath.Join(dir, "mask-"+string(rune('1'+i))+".png") {
			t.Errorf("mask %d: %+v, want %d pixels, score %v", i, m, n, want.IoU[i])
		}
	}

	// The low-res logits fed back as a mask prompt, to the official model
	// with a box: the same as the library's.
	out2 := filepath.Join(dir, "refined.png")
	stdout.Reset()
	if err := run([]string{"segment", "--weights", officialSAM, "--image", tinySAMImage, "--box", "20,15,120,90",
		"--mask-input", low, "--output", out2}, &stdout); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "(best)") {
		t.Errorf("output: %s", stdout.String())
	}
	f, err := weights.Open(low)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	v, _, err := f.Float64s("mask")
	if err != nil {
		t.Fatal(err)
	}
	mask := make([]float32, len(v))
	for i, x := range v {
		mask[i] = float32(x)
	}
	for i := range mask {
		if mask[i] != want.LowRes[want.Best()][i] {
			t.Fatalf("low-res output differs from the library's at %d", i)
		}
	}
	want2 := predictInProcess(t, officialSAM, predict.Prompt{Box: &predict.Box{X0: 20, Y0: 15, X1: 120, Y1: 90}, Mask: mask})
	got2, _, _ := readMask(t, out2)
	for j, b := range want2.Binary(want2.Best()) {
		if got2[j] != b {
			t.Fatalf("refined mask differs from the library's at pixel %d", j)
		}
	}
}

func TestSegmentRefusals(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "mask.png")
	bad := filepath.Join(dir, "bad.safetensors")
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		return weights.Save(s, bad, map[string]*tensor.Tensor{"a": s.Zeros(tensor.Float32, 2, 3), "b": s.Zeros(tensor.Float32, 1)}, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"segment", "--weights", tinySAM, "--image", tinySAMImage}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no weights", []string{"segment", "--image", tinySAMImage, "--point", "1,1", "--output", out}, "--weights is required"},
		{"no output", append(base, "--point", "1,1"), "--output is required"},
		{"no prompt", append(base, "--output", out), "at least one --point or a --box"},
		{"bad point", append(base, "--point", "1", "--output", out), "want X,Y"},
		{"nan point", append(base, "--point", "NaN,1", "--output", out), "not a finite number"},
		{"bad label", append(base, "--point", "1,2,maybe", "--output", out), "fg or bg"},
		{"bad box", append(base, "--box", "1,2,3", "--output", out), "four numbers"},
		{"not png", append(base, "--point", "1,1", "--output", filepath.Join(dir, "m.jpg")), "want a .png name"},
		{"no dir", append(base, "--point", "1,1", "--output", filepath.Join(dir, "nope", "m.png")), "does not exist"},
		{"missing image", []string{"segment", "--weights", tinySAM, "--image", "nope.png", "--point", "1,1", "--output", out}, "no such file"},
		{"bad mask input", append(base, "--point", "1,1", "--mask-input", bad, "--output", out), "want one"},
		{"not SAM", []string{"segment", "--weights", bad, "--image", tinySAMImage, "--point", "1,1", "--output", out}, "not Segment Anything weights"},
	} {
		err := run(c.args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 { // bad.safetensors only
		t.Errorf("refused runs wrote files: %v", entries)
	}
}
