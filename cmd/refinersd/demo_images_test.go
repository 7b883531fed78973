package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/weights"
)

// TestServeDemo: `refinersd demo-weights DIR` writes what `refinersd serve
// --config DIR/config.yaml` needs to generate images on a fresh clone, with
// its ControlNet: an image per request with a Canny-preprocessed
// condition, reported, in the recipe, re-run byte for byte from the recipe
// and the condition image as a multipart part; and the ControlNet fields'
// mistakes are 400s naming them.
func TestServeDemo(t *testing.T) {
	dir := t.TempDir()
	demo := filepath.Join(dir, "demo")
	f := &daemonFixture{dir: dir, bin: filepath.Join(dir, "refinersd"), store: filepath.Join(demo, "store"), plugins: filepath.Join(demo, "plugins")}
	buildBinaries(t, dir, map[string]string{"refinersd": ".", "bin/controlnet": "../../plugins/controlnet"})
	out := f.cli(t, "demo-weights", demo)
	for _, want := range []string{"sd15/unet.safetensors", "controlnet.safetensors", "config.yaml"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo-weights output does not name %s:\n%s", want, out)
		}
	}
	if msg, err := exec.Command(f.bin, "demo-weights", demo).CombinedOutput(); err == nil || !strings.Contains(string(msg), "use --force") {
		t.Errorf("demo-weights over an earlier demo: %v %s", err, msg)
	}
	f.cli(t, "demo-weights", demo, "--force")
	// The tiny SAM is in Refiners' layout: the keys the SAM predictor
	// reads its sizes from (models/sam/samkeys on branch sam).
	samFile, err := weights.Open(filepath.Join(demo, "sam.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	for key, shape := range map[string][]int64{"image_encoder.PatchEncoder.Conv2d.weight": {16, 3, 16, 16}, "image_encoder.PositionalEncoder.Parameter.weight": {8, 8, 16},
		"image_encoder.Neck.Conv2d_1.weight": {32, 16, 1, 1}, "point_encoder.Residual.PointTypeEmbedding.weight": {5, 32},
		"mask_encoder.Conv2d_3.weight": {32, 16, 1, 1}, "mask_encoder.Conv2d_2.weight": {16, 4, 2, 2}, "mask_decoder.IOUMaskEncoder.weight": {5, 32}} {
		info, ok := samFile.Info(key)
		if !ok || fmt.Sprint(info.Shape) != fmt.Sprint(shape) {
			t.Errorf("sam.safetensors: %s: %v (present %v), want %v", key, info.Shape, ok, shape)
		}
	}
	samFile.Close()
	f.cli(t, "plugins", "install", filepath.Join(dir, "bin"), "--dir", f.plugins)
	s := f.serve(t, nil, "--config", filepath.Join(demo, "config.yaml"), "--addr", "127.0.0.1:0")
	fx := &imagesFixture{daemonFixture: f, srv: s}
	post := func(req map[string]any, header ...string) (int, []byte) {
		t.Helper()
		if _, ok := req["model"]; !ok {
			req["model"] = "demo"
		}
		code, _, b := fx.post(t, "/v1/images", req, header...)
		return code, b
	}

	code, plain := post(map[string]any{"prompt": "a red cube", "seed": 5, "steps": 4}, "Accept", "image/png")
	if code != 200 {
		t.Fatalf("demo image: %d %s", code, plain)
	}
	if img := pixels(t, plain); img.Width != 64 || img.Height != 64 {
		t.Errorf("demo image %dx%d, want the config's 64x64", img.Width, img.Height)
	}

	// A recipe made on a pipeline this daemon does not have runs on its
	// one pipeline (here the same weights: the same pixels).
	rec := recipeOf(t, plain)
	rec.Model = "elsewhere"
	moved, err := rec.Embed(plain)
	if err != nil {
		t.Fatal(err)
	}
	if code, b := post(map[string]any{"model": "", "recipe": base64.StdEncoding.EncodeToString(moved)}, "Accept", "image/png"); code != 200 ||
		!bytes.Equal(pixels(t, b).Pix, pixels(t, plain).Pix) || recipeOf(t, b).Model != "demo" {
		t.Errorf("a recipe from another pipeline: %d %.200s", code, b)
	}

	condPNG, err := os.ReadFile(filepath.Join(tinySD, "init.png"))
	if err != nil {
		t.Fatal(err)
	}
	cond := base64.StdEncoding.EncodeToString(condPNG)
	cn := map[string]any{"adapter": "demo-controlnet", "image": cond, "preprocess": "canny", "low": 50, "high": 150, "scale": 2, "end": 0.5}
	code, b := post(map[string]any{"prompt": "a red cube", "seed": 5, "steps": 4, "controlnets": []map[string]any{cn}})
	if code != 200 {
		t.Fatalf("with a ControlNet: %d %s", code, b)
	}
	var resp struct {
		Images []struct {
			PNGBase64 string `json:"png_base64"`
		}
		Controlnets []struct {
			Plugin, Adapter, Digest, Name, Format, Preprocess string
			Scale, End                                        float64
			ActiveSteps                                       int `json:"active_steps"`
			Steps, Matched                                    int
		}
	}
	if err := json.Unmarshal(b, &resp); err != nil || len(resp.Images) != 1 || len(resp.Controlnets) != 1 {
		t.Fatalf("answer %.500s: %v", b, err)
	}
	r := resp.Controlnets[0]
	if r.Plugin != "controlnet" || r.Adapter != "demo-controlnet" || !strings.HasPrefix(r.Digest, "sha256:") || r.Format != "refiners" ||
		r.Scale != 2 || r.End != 0.5 || r.ActiveSteps != 2 || r.Steps != 4 || r.Preprocess != "canny" || r.Matched == 0 {
		t.Errorf("ControlNet report %+v", r)
	}
	withCN, _ := base64.StdEncoding.DecodeString(resp.Images[0].PNGBase64)
	if bytes.Equal(pixels(t, withCN).Pix, pixels(t, plain).Pix) {
		t.Error("the ControlNet did not change the image")
	}
	rec = recipeOf(t, withCN)
	if len(rec.Controlnets) != 1 || rec.Controlnets[0].Adapter != "demo-controlnet" || rec.Controlnets[0].Low != 50 || rec.Controlnets[0].High != 150 ||
		rec.Controlnets[0].Scale != 2 || rec.Controlnets[0].End != 0.5 || rec.Controlnets[0].Digest != r.Digest || !strings.HasPrefix(rec.Controlnets[0].Image, "sha256:") {
		t.Errorf("recipe ControlNets %+v", rec.Controlnets)
	}

	// The recipe with the condition as a multipart part: the same bytes.
	ct, body := multipartImages(t, map[string]any{}, map[string][]byte{"recipe": withCN, "controlnets.0.image": condPNG})
	if code, _, b := s.do(t, "POST", "/v1/images", ct, body, "Accept", "image/png"); code != 200 || !bytes.Equal(b, withCN) {
		t.Errorf("ControlNet recipe: %d, same bytes %v %.300s", code, bytes.Equal(b, withCN), b)
	}

	if configHasKey("segmenters") { // the daemon segments (branch sam): the demo's SAM answers
		code, _, b := fx.post(t, "/v1/segment", map[string]any{"model": "demo-sam", "image": base64.StdEncoding.EncodeToString(condPNG),
			"points": []map[string]any{{"x": 20, "y": 20, "label": "fg"}}})
		if code != 200 || !strings.Contains(string(b), "png_base64") {
			t.Errorf("segment with the demo SAM: %d %.300s", code, b)
		}
	}

	// refinersd generate --recipe with the ControlNet's file and condition:
	// the same bytes too.
	in, again := filepath.Join(dir, "cn.png"), filepath.Join(dir, "cn-again.png")
	if err := os.WriteFile(in, withCN, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"generate", "--weights", filepath.Join(demo, "sd15"), "--recipe", in, "--output", again, "--quiet", "--plugins-dir", f.plugins,
		"--control", filepath.Join(demo, "controlnet.safetensors") + ":" + filepath.Join(tinySD, "init.png")}
	for _, m := range []struct {
		name   string
		params map[string]string
	}{{"unet", demoUNet}, {"text_encoder", demoTextEncoder}, {"autoencoder", demoAutoencoder}} {
		for k, v := range m.params {
			args = append(args, "--set", m.name+"."+k+"="+v)
		}
	}
	f.cli(t, args...)
	if b, _ := os.ReadFile(again); !bytes.Equal(b, withCN) {
		t.Error("refinersd generate --recipe with a ControlNet wrote other bytes than the daemon")
	}
	bad := append(append([]string{}, args...), "--control", filepath.Join(demo, "controlnet.safetensors")+":"+filepath.Join(tinySD, "init.png"))
	if msg, err := exec.Command(f.bin, bad...).CombinedOutput(); err == nil || !strings.Contains(string(msg), "--recipe has 1 ControlNets, 2 --control flags given") {
		t.Errorf("--recipe with two --control flags for one ControlNet: %v %s", err, msg)
	}

	other := base64.StdEncoding.EncodeToString(plain)
	for _, c := range []struct {
		name string
		req  map[string]any
		code int
		want string
	}{
		{"no adapter", map[string]any{"image": cond}, 400, "controlnets[0].adapter: missing"},
		{"no image", map[string]any{"adapter": "demo-controlnet"}, 400, "controlnets[0].image: missing"},
		{"bad image", map[string]any{"adapter": "demo-controlnet", "image": "aGVsbG8="}, 400, "controlnets[0].image: not a PNG or JPEG"},
		{"preprocess", map[string]any{"adapter": "demo-controlnet", "image": cond, "preprocess": "depth"}, 400, `controlnets[0].preprocess "depth"`},
		{"scale", map[string]any{"adapter": "demo-controlnet", "image": cond, "scale": -1}, 400, "controlnets[0].scale -1"},
		{"range", map[string]any{"adapter": "demo-controlnet", "image": cond, "start": 0.6, "end": 0.5}, 400, "controlnets[0].start 0.6, end 0.5"},
		{"thresholds without canny", map[string]any{"adapter": "demo-controlnet", "image": cond, "low": 10}, 400, "controlnets[0].low/high"},
		{"thresholds", map[string]any{"adapter": "demo-controlnet", "image": cond, "preprocess": "canny", "low": 200, "high": 100}, 400, "controlnets[0].low 200, high 100"},
		{"scale in params", map[string]any{"adapter": "demo-controlnet", "image": cond, "params": map[string]any{"scale": 2}}, 400, "controlnets[0].params: give the scale"},
		{"unknown adapter", map[string]any{"adapter": "nope", "image": cond}, 404, "controlnets[0].adapter"},
		{"plugin", map[string]any{"plugin": "lora", "adapter": "demo-controlnet", "image": cond}, 400, `controlnets[0].plugin "lora" is not installed`},
	} {
		code, b := post(map[string]any{"prompt": "x", "steps": 2, "controlnets": []map[string]any{c.req}})
		var e struct{ Error struct{ Message string } }
		json.Unmarshal(b, &e)
		if code != c.code || !strings.Contains(e.Error.Message, c.want) {
			t.Errorf("%s: %d %s, want %d with %q", c.name, code, b, c.code, c.want)
		}
	}
	for _, c := range []struct {
		name string
		req  map[string]any
		want string
	}{
		{"without the condition", map[string]any{"recipe": base64.StdEncoding.EncodeToString(withCN)}, "controlnets[0].image: missing"},
		{"another condition", map[string]any{"recipe": base64.StdEncoding.EncodeToString(withCN), "controlnets": []map[string]any{{"image": other}}}, "controlnets[0].image is not the recipe's"},
		{"more than the image", map[string]any{"recipe": base64.StdEncoding.EncodeToString(withCN), "controlnets": []map[string]any{{"image": cond, "scale": 1}}}, "give only its image"},
	} {
		code, b := post(c.req)
		var e struct{ Error struct{ Message string } }
		json.Unmarshal(b, &e)
		if code != 400 || !strings.Contains(e.Error.Message, c.want) {
			t.Errorf("recipe %s: %d %s, want 400 with %q", c.name, code, b, c.want)
		}
	}
}
