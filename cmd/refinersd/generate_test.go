package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

// The tiny Stable Diffusion of the pipeline conformance cases.
const tinySD = "../../conformance/testdata/pipeline"

// tinyArgs are the generate flags for the tiny models: weight files and
// their spec sizes.
func tinyArgs(t *testing.T, inpainting bool) []string {
	t.Helper()
	f, err := weights.Open(filepath.Join(tinySD, "txt2img_dpm.case.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var files map[string]string
	var overrides map[string]map[string]string
	if err := json.Unmarshal([]byte(f.Metadata()["weights"]), &files); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(f.Metadata()["overrides"]), &overrides); err != nil {
		t.Fatal(err)
	}
	unet := files["unet"]
	if inpainting {
		unet = files["unet_inpainting"]
	}
	args := []string{"generate", "--unet", filepath.Join(tinySD, unet), "--text-encoder", filepath.Join(tinySD, files["text_encoder"]),
		"--autoencoder", filepath.Join(tinySD, files["autoencoder"]), "--width", "64", "--height", "48", "--steps", "3"}
	for _, model := range []string{"unet", "text_encoder", "autoencoder"} {
		var keys []string
		for k := range overrides[model] {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			args = append(args, "--set", fmt.Sprintf("%s.%s=%s", model, k, overrides[model][k]))
		}
	}
	return args
}

func buildRefinersd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "refinersd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// TestGenerate drives the real binary with tiny random weights: it writes
// a PNG of the asked size, the same seed gives the same bytes, a batch
// writes one file per seed, progress goes to stderr one line per step
// when stderr is not a terminal, and a LoRA planned by the real plugin
// changes the image.
func TestGenerate(t *testing.T) {
	bin := buildRefinersd(t)
	dir := t.TempDir()
	run := func(args ...string) (string, string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("refinersd %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
		}
		return stdout.String(), stderr.String()
	}
	base := append(tinyArgs(t, false), "--prompt", "a lighthouse at dusk", "--seed", "42")
	read := func(path string) []byte {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	a, b := filepath.Join(dir, "a.png"), filepath.Join(dir, "b.png")
	stdout, stderr := run(append(base, "--output", a)...)
	run(append(base, "--output", b, "--quiet")...)
	img, err := png.Decode(bytes.NewReader(read(a)))
	if err != nil {
		t.Fatal(err)
	}
	if got := img.Bounds(); got != image.Rect(0, 0, 64, 48) {
		t.Errorf("image bounds %v, want 64x48", got)
	}
	if !bytes.Equal(read(a), read(b)) {
		t.Error("the same seed wrote different files")
	}
	if !strings.Contains(stdout, a+" (seed 42)") {
		t.Errorf("stdout %q does not name the file and seed", stdout)
	}
	for i := 1; i <= 3; i++ {
		if !strings.Contains(stderr, fmt.Sprintf("step %d/3, ", i)) {
			t.Errorf("stderr has no progress line for step %d:\n%s", i, stderr)
		}
	}
	if strings.Contains(stderr, "\r") {
		t.Error("a bar was drawn on a pipe")
	}

	// A batch of two: the second image is seed 43's.
	batch := filepath.Join(dir, "batch.png")
	stdout, _ = run(append(base, "--output", batch, "--batch", "2", "--quiet")...)
	one := filepath.Join(dir, "one.png")
	run(append(tinyArgs(t, false), "--prompt", "a lighthouse at dusk", "--seed", "43", "--output", one, "--quiet")...)
	if !strings.Contains(stdout, "batch-2.png (seed 43)") {
		t.Errorf("batch stdout %q", stdout)
	}
	if !bytes.Equal(pngPixels(t, read(filepath.Join(dir, "batch-1.png"))), pngPixels(t, read(a))) {
		t.Error("image 1 of the batch is not seed 42's")
	}
	if _, err := os.Stat(filepath.Join(dir, "batch-2.png")); err != nil {
		t.Error(err)
	}

	// Each PNG carries its recipe; --recipe writes the same bytes again
	// (for an image of a batch too).
	rec, err := pipeline.ReadRecipe(read(a))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Prompt != "a lighthouse at dusk" || rec.Seed != 42 || rec.Steps != 3 || rec.Width != 64 || rec.Batch != 1 || !strings.HasPrefix(rec.Weights.UNet, "sha256:") {
		t.Errorf("recipe %+v", rec)
	}
	for _, src := range []string{a, filepath.Join(dir, "batch-2.png")} {
		again := filepath.Join(dir, "again.png")
		stdout, _ := run(append(withoutSize(tinyArgs(t, false)), "--recipe", src, "--output", again, "--quiet")...)
		if !bytes.Equal(read(again), read(src)) {
			t.Errorf("--recipe %s wrote other bytes", src)
		}
		if strings.Count(stdout, ".png") != 1 {
			t.Errorf("--recipe wrote more than the recipe's image: %q", stdout)
		}
	}

	// Inpainting and image to image write PNGs too.
	inpainted := filepath.Join(dir, "inpainted.png")
	run(append(tinyArgs(t, true), "--prompt", "a boat", "--seed", "1", "--init-image", filepath.Join(tinySD, "init.png"),
		"--mask", filepath.Join(tinySD, "mask.png"), "--output", inpainted, "--quiet")...)
	img2img := filepath.Join(dir, "img2img.png")
	run(append(tinyArgs(t, false), "--prompt", "a boat", "--seed", "1", "--init-image", filepath.Join(tinySD, "init.png"),
		"--strength", "0.7", "--solver", "ddim", "--output", img2img, "--quiet")...)
	for _, p := range []string{inpainted, img2img} {
		if _, err := png.Decode(bytes.NewReader(read(p))); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}

	// A LoRA through the installed plugin.
	plug := filepath.Join(dir, "lora")
	if out, err := exec.Command("go", "build", "-o", plug, "../../plugins/lora").CombinedOutput(); err != nil {
		t.Fatalf("build the LoRA plugin: %v\n%s", err, out)
	}
	plugins := filepath.Join(dir, "plugins")
	run("plugins", "install", plug, "--dir", plugins)
	lora := filepath.Join(dir, "lora.png")
	stdout, _ = run(append(base, "--output", lora, "--quiet", "--plugins-dir", plugins,
		"--adapter", "lora:"+filepath.Join(tinySD, "lora.safetensors")+`:{"scale": 0.8}`)...)
	if !strings.Contains(stdout, "format refiners") || !strings.Contains(stdout, "of 370 keys matched") {
		t.Errorf("no adapter report: %q", stdout)
	}
	if bytes.Equal(read(lora), read(a)) {
		t.Error("the LoRA did not change the image")
	}
}

// TestGenerateErrors: each bad input fails with a named error and writes
// nothing.
func TestGenerateErrors(t *testing.T) {
	bin := buildRefinersd(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "out.png")
	small := filepath.Join(dir, "small.png")
	f, err := os.Create(small)
	if err != nil {
		t.Fatal(err)
	}
	png.Encode(f, image.NewGray(image.Rect(0, 0, 32, 48)))
	f.Close()
	notImage := filepath.Join(dir, "notes.png")
	os.WriteFile(notImage, []byte("not an image"), 0o644)
	recipes := map[string]string{} // PNGs with recipes, outside dir
	recipeDir := t.TempDir()
	plainPNG, err := pipeline.NewRGB(64, 48).EncodePNG()
	if err != nil {
		t.Fatal(err)
	}
	base := pipeline.Recipe{Version: 1, Prompt: "p", Seed: 1, Steps: 3, Guidance: 7.5, Solver: "dpm", Width: 64, Height: 48, Batch: 1}
	for name, edit := range map[string]func(*pipeline.Recipe){
		"plain":   func(*pipeline.Recipe) {},
		"img2img": func(r *pipeline.Recipe) { r.InitImage, r.Strength = pipeline.PixelDigest([]byte("some pixels")), 0.5 },
		"lora": func(r *pipeline.Recipe) {
			r.Adapters = []pipeline.RecipeAdapter{{Plugin: "lora", File: "style", Digest: "sha256:" + strings.Repeat("ab", 32)}}
		},
		"newer": func(r *pipeline.Recipe) { r.Version = 9 },
	} {
		r := base
		edit(&r)
		b, err := r.Embed(plainPNG)
		if err != nil {
			t.Fatal(err)
		}
		recipes[name] = filepath.Join(recipeDir, name+".png")
		os.WriteFile(recipes[name], b, 0o644)
	}

	tiny, inpaint := tinyArgs(t, false), tinyArgs(t, true)
	cnA := filepath.Join(tinySD, "controlnet_a.safetensors")
	with := func(base []string, extra ...string) []string {
		return append(append(append([]string{}, base...), "--prompt", "a cat", "--seed", "1", "--output", out), extra...)
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"width", with(tiny, "--width", "500"), "width 500 is not a positive multiple of 8 (the autoencoder works on 8×8 blocks): try 496 or 504"},
		{"height", with(tiny, "--height", "4"), "height 4 is not a positive multiple of 8"},
		{"missing weights", with(tiny, "--unet", filepath.Join(dir, "nope.safetensors")), "--unet " + filepath.Join(dir, "nope.safetensors") + ": no such file"},
		{"no weights", []string{"generate", "--prompt", "x", "--output", out}, "--unet is required (or --weights DIR, or --model NAME)"},
		{"weights folder", with(tiny, "--weights", dir, "--unet", ""), "--unet " + filepath.Join(dir, "unet.safetensors") + ": no such file"},
		{"no prompt", append(append([]string{}, tiny...), "--output", out), "--prompt is required"},
		{"no output", append(append([]string{}, tiny...), "--prompt", "x"), "--output is required"},
		{"not png", with(tiny, "--output", filepath.Join(dir, "out.jpg")), "only PNG is written"},
		{"output dir", with(tiny, "--output", filepath.Join(dir, "missing", "out.png")), "the directory " + filepath.Join(dir, "missing") + " does not exist"},
		{"missing init image", with(tiny, "--init-image", filepath.Join(dir, "nope.png")), "--init-image " + filepath.Join(dir, "nope.png") + ": no such file"},
		{"not an image", with(tiny, "--init-image", notImage), "not a PNG or JPEG image"},
		{"mask size", with(inpaint, "--init-image", filepath.Join(tinySD, "init.png"), "--mask", small), "the mask is 32x48, the image to generate 64x48"},
		{"mask without image", with(inpaint, "--mask", small), "--mask needs --init-image"},
		{"mask on a txt2img U-Net", with(tiny, "--init-image", filepath.Join(tinySD, "init.png"), "--mask", filepath.Join(tinySD, "mask.png")), "needs an inpainting U-Net"},
		{"strength", with(tiny, "--init-image", filepath.Join(tinySD, "init.png"), "--strength", "2"), "strength 2: want a value in (0, 1]"},
		{"solver", with(tiny, "--solver", "heun"), `unknown solver "heun"`},
		{"steps", with(tiny, "--steps", "0"), "--steps 0: want 1 to 1000"},
		{"guidance", with(tiny, "--guidance", "0"), "--guidance 0 would ignore the prompt"},
		{"seed", with(tiny, "--seed", "-5"), "--seed -5: want a seed ≥ 0"},
		{"dtype", with(tiny, "--dtype", "int8"), "int8"},
		{"bad set", with(tiny, "--set", "vae.channels_1=4"), "--set wants MODEL.name=value"},
		{"wrong sizes", with(tiny, "--set", "unet.channels_1=8"), "load"},
		{"plugin missing", with(tiny, "--adapter", "nope:"+filepath.Join(tinySD, "lora.safetensors"), "--plugins-dir", t.TempDir()), `plugin "nope" is not installed`},
		{"recipe and prompt", with(tiny, "--recipe", recipes["plain"]), "--recipe gives the whole request; leave out --height, --prompt, --seed, --steps, --width"},
		{"recipe missing", append(withoutSize(tiny), "--recipe", filepath.Join(dir, "nope.png"), "--output", out), "--recipe " + filepath.Join(dir, "nope.png") + ": no such file"},
		{"no recipe", append(withoutSize(tiny), "--recipe", small, "--output", out), "has no refiners-recipe text chunk"},
		{"recipe without its image", append(withoutSize(tiny), "--recipe", recipes["img2img"], "--output", out), "the recipe was made with an init_image"},
		{"recipe with another image", append(withoutSize(tiny), "--recipe", recipes["img2img"], "--init-image", filepath.Join(tinySD, "init_other_size.png"), "--output", out), "is not the recipe's"},
		{"recipe adapter not stored", append(withoutSize(tiny), "--recipe", recipes["lora"], "--store", t.TempDir(), "--output", out), "is not in the store"},
		{"recipe adapter differs", append(withoutSize(tiny), "--recipe", recipes["lora"], "--adapter", "lora:"+small, "--output", out), "the recipe's adapter 1 sha256:"},
		{"recipe newer", append(withoutSize(tiny), "--recipe", recipes["newer"], "--output", out), "version 9 is newer"},
		{"control syntax", with(tiny, "--control", "cn.safetensors"), "want a ControlNet file and a condition image"},
		{"control file missing", with(tiny, "--control", filepath.Join(dir, "nope.safetensors")+":"+filepath.Join(tinySD, "control.png")), "--control " + filepath.Join(dir, "nope.safetensors") + ": no such file"},
		{"control condition missing", with(tiny, "--control", cnA+":"+filepath.Join(dir, "nope.png")), "--control " + filepath.Join(dir, "nope.png") + ": no such file"},
		{"control condition not an image", with(tiny, "--control", cnA+":"+notImage), "not a PNG or JPEG image"},
		{"control range", with(tiny, "--control", cnA+":"+filepath.Join(tinySD, "control.png")+":start=0.6,end=0.5"), "start 0.6, end 0.5: want 0 ≤ start < end ≤ 1"},
		{"control plugin missing", with(tiny, "--control", cnA+":"+filepath.Join(tinySD, "control.png"), "--plugins-dir", t.TempDir()), `plugin controlnet: plugin "controlnet" is not installed`},
	} {
		cmd := exec.Command(bin, c.args...)
		msg, err := cmd.CombinedOutput()
		if err == nil {
			t.Errorf("%s: succeeded:\n%s", c.name, msg)
			continue
		}
		if !strings.Contains(string(msg), c.want) {
			t.Errorf("%s: error does not say %q:\n%s", c.name, c.want, msg)
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.Name() != "small.png" && e.Name() != "notes.png" {
				t.Errorf("%s: left %s behind", c.name, e.Name())
				os.RemoveAll(filepath.Join(dir, e.Name()))
			}
		}
	}

	// A prompt over the limit is a warning, with the count of tokens cut.
	cmd := exec.CommandContext(context.Background(), bin, with(tiny, "--steps", "1", "--quiet", "--prompt", strings.Repeat("a red cube ", 30))...)
	msg, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("long prompt: %v\n%s", err, msg)
	}
	if !strings.Contains(string(msg), "warning: the prompt is 15 tokens over the limit of 75: they were cut") {
		t.Errorf("no truncation warning:\n%s", msg)
	}
}

// TestGenerateFromStore: --model NAME takes the weight files and their
// spec parameters from the store (models NAME-unet, NAME-text_encoder,
// NAME-vae_encoder, NAME-vae_decoder, as `models add --from` names them)
// and gives the same image as the files themselves.
func TestGenerateFromStore(t *testing.T) {
	bin := buildRefinersd(t)
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "store")
	args := tinyArgs(t, false)
	value := func(flag string) string {
		for i, a := range args {
			if a == flag {
				return args[i+1]
			}
		}
		t.Fatalf("no %s", flag)
		return ""
	}
	refinersd := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("refinersd %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, m := range []struct{ name, model, spec, weights, prefix string }{
		{"tiny-unet", "unet", "../../specs/sd15_unet.yaml", value("--unet"), ""},
		{"tiny-text_encoder", "text_encoder", "../../specs/clip_text.yaml", value("--text-encoder"), ""},
		{"tiny-vae_encoder", "autoencoder", "../../specs/sd15_vae_encoder.yaml", value("--autoencoder"), "Encoder."},
		{"tiny-vae_decoder", "autoencoder", "../../specs/sd15_vae_decoder.yaml", value("--autoencoder"), "Decoder."},
	} {
		add := []string{"models", "add", m.name, "--store", storeDir, "--spec", m.spec, "--weights", m.weights, "--prefix", m.prefix}
		for i, a := range args {
			if v, ok := strings.CutPrefix(a, m.model+"."); ok && args[i-1] == "--set" {
				add = append(add, "--set", v)
			}
		}
		refinersd(add...)
	}
	fromFiles, fromStore := filepath.Join(dir, "files.png"), filepath.Join(dir, "store.png")
	refinersd(append(args, "--prompt", "a red kite", "--seed", "5", "--quiet", "--output", fromFiles)...)
	refinersd("generate", "--model", "tiny", "--store", storeDir, "--width", "64", "--height", "48", "--steps", "3",
		"--prompt", "a red kite", "--seed", "5", "--quiet", "--output", fromStore)
	a, _ := os.ReadFile(fromFiles)
	b, _ := os.ReadFile(fromStore)
	if len(a) == 0 || !bytes.Equal(pngPixels(t, a), pngPixels(t, b)) {
		t.Error("--model gave another image than the weight files")
	}
	// The same weights: the same digests in both recipes (the store's
	// blobs are the files); the store's name labels the model.
	ra, err := pipeline.ReadRecipe(a)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := pipeline.ReadRecipe(b)
	if err != nil {
		t.Fatal(err)
	}
	if ra.Weights != rb.Weights || rb.Model != "tiny" || ra.Model != "" {
		t.Errorf("recipes: files %+v, store %+v", ra, rb)
	}
	cmd := exec.Command(bin, "generate", "--model", "other", "--store", storeDir, "--prompt", "x", "--output", filepath.Join(dir, "x.png"))
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "--model other") {
		t.Errorf("unknown model: %v\n%s", err, out)
	}
}

func TestProgressBar(t *testing.T) {
	var plain, term bytes.Buffer
	p := pipeline.Progress{Step: 2, Steps: 4, Elapsed: 4 * time.Second}
	newProgressBar(&plain, false, false).update(p)
	bar := newProgressBar(&term, true, false)
	bar.update(p)
	bar.done()
	if got := plain.String(); got != "step 2/4, 0.50 it/s, ETA 4s\n" {
		t.Errorf("plain line %q", got)
	}
	if got := term.String(); got != "\r[===============               ] step 2/4, 0.50 it/s, ETA 4s\x1b[K\n" {
		t.Errorf("terminal bar %q", got)
	}
	var quiet bytes.Buffer
	newProgressBar(&quiet, true, true).update(p)
	if quiet.Len() != 0 {
		t.Errorf("quiet bar wrote %q", quiet.String())
	}
}

func TestOutputPaths(t *testing.T) {
	if got := outputPaths("out/x.png", 1); len(got) != 1 || got[0] != "out/x.png" {
		t.Errorf("%v", got)
	}
	if got := outputPaths("out/x.png", 3); strings.Join(got, " ") != "out/x-1.png out/x-2.png out/x-3.png" {
		t.Errorf("%v", got)
	}
}

// pngPixels decodes a PNG to its RGB bytes (the recipe chunk aside).
func pngPixels(t *testing.T, b []byte) []byte {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return pipeline.ToRGB(img).Pix
}

// withoutSize drops tinyArgs' --width, --height and --steps (a recipe
// gives them).
func withoutSize(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == "--width" || args[i] == "--height" || args[i] == "--steps" {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// TestControlFlag: --control's syntax, options and refusals.
func TestControlFlag(t *testing.T) {
	for _, c := range []struct {
		flag string
		want control // params nil: none
		err  string
	}{
		{"cn.safetensors:edges.png", control{plugin: "controlnet", file: "cn.safetensors", condition: "edges.png"}, ""},
		{"cn.safetensors:edges.png:scale=0.5,start=0.1,end=0.6", control{plugin: "controlnet", file: "cn.safetensors", condition: "edges.png", scale: 0.5, start: 0.1, end: 0.6}, ""},
		{"canny:cn.safetensors:photo.jpg", control{plugin: "controlnet", preprocess: "canny", file: "cn.safetensors", condition: "photo.jpg"}, ""},
		{"canny:cn.safetensors:photo.jpg:low=50,high=150", control{plugin: "controlnet", preprocess: "canny", file: "cn.safetensors", condition: "photo.jpg", low: 50, high: 150}, ""},
		{"canny:cn.safetensors:photo.jpg:low=50", control{plugin: "controlnet", preprocess: "canny", file: "cn.safetensors", condition: "photo.jpg", low: 50, high: 200}, ""},
		{"canny:cn.safetensors:photo.jpg:high=300", control{plugin: "controlnet", preprocess: "canny", file: "cn.safetensors", condition: "photo.jpg", low: 100, high: 300}, ""},
		{"cn.safetensors:e.png:plugin=mycn,name=edges,num_heads=2", control{plugin: "mycn", file: "cn.safetensors", condition: "e.png",
			params: map[string]any{"name": "edges", "num_heads": 2.0}}, ""},
		{"cn.safetensors", control{}, "want a ControlNet file and a condition image"},
		{"canny:cn.safetensors", control{}, "want a ControlNet file and a condition image"},
		{"a:b:c:d", control{}, "want a ControlNet file and a condition image"},
		{"cn.safetensors:e.png:scale", control{}, `option "scale" is not KEY=VALUE`},
		{"cn.safetensors:e.png:scale=big", control{}, "scale=big is not a number"},
		{"cn.safetensors:e.png:scale=0", control{}, "want a positive scale"},
		{"cn.safetensors:e.png:end=0", control{}, "end 0"},
		{"cn.safetensors:e.png:low=10", control{}, "low is canny's threshold"},
		{"cn.safetensors:e.png:name=a,name=b", control{}, "option name given twice"},
	} {
		var f controlFlags
		err := f.Set(c.flag)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: got %v, want an error containing %q", c.flag, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.flag, err)
			continue
		}
		got := f[0]
		if c.want.params == nil {
			c.want.params = map[string]any{}
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s: %+v, want %+v", c.flag, got, c.want)
		}
	}
	// The request: params as JSON, the rest as the pipeline's fields.
	var f controlFlags
	if err := f.Set("canny:cn.safetensors:p.png:low=1,high=2,scale=0.5,name=x"); err != nil {
		t.Fatal(err)
	}
	cond := pipeline.NewRGB(8, 8)
	req, err := f[0].request(cond)
	if err != nil {
		t.Fatal(err)
	}
	want := pipeline.Control{Plugin: "controlnet", File: "cn.safetensors", Params: `{"name":"x"}`, Condition: cond, Preprocess: "canny",
		CannyLow: 1, CannyHigh: 2, Scale: 0.5}
	if fmt.Sprint(req) != fmt.Sprint(want) {
		t.Errorf("request %+v, want %+v", req, want)
	}
}

// TestGenerateControl drives the real binary with ControlNets of the tiny
// pipeline (conformance/testdata/pipeline) through the installed plugin:
// each changes the image, the report names each one's steps and keys, and
// the same flags give the same bytes.
func TestGenerateControl(t *testing.T) {
	bin := buildRefinersd(t)
	dir := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("refinersd %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	plug := filepath.Join(dir, "controlnet")
	if out, err := exec.Command("go", "build", "-o", plug, "../../plugins/controlnet").CombinedOutput(); err != nil {
		t.Fatalf("build the ControlNet plugin: %v\n%s", err, out)
	}
	plugins := filepath.Join(dir, "plugins")
	run("plugins", "install", plug, "--dir", plugins)
	base := append(tinyArgs(t, false), "--prompt", "a lighthouse at dusk", "--seed", "42", "--steps", "4", "--quiet", "--plugins-dir", plugins)
	read := func(path string) []byte {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	plain, edges, canny, again := filepath.Join(dir, "plain.png"), filepath.Join(dir, "edges.png"), filepath.Join(dir, "canny.png"), filepath.Join(dir, "again.png")
	run(append(base, "--output", plain)...)
	cnA, cnB := filepath.Join(tinySD, "controlnet_a.safetensors"), filepath.Join(tinySD, "controlnet_b.safetensors")
	out := run(append(base, "--output", edges, "--control", cnA+":"+filepath.Join(tinySD, "control.png")+":scale=0.8")...)
	if !strings.Contains(out, "control "+cnA+" (controlnet, name control0, format refiners): scale 0.8 on steps 1-4 of 4; 340 of 340 keys matched") {
		t.Errorf("no control report:\n%s", out)
	}
	flags := []string{"--output", canny, "--control", "canny:" + cnA + ":" + filepath.Join(tinySD, "photo.png") + ":low=50,high=150",
		"--control", cnB + ":" + filepath.Join(tinySD, "control.png") + ":scale=1.3,end=0.5"}
	out = run(append(base, flags...)...)
	if !strings.Contains(out, "name control1, format refiners): scale 1.3 on steps 1-2 of 4") {
		t.Errorf("no report of the second control:\n%s", out)
	}
	flags[1] = again
	run(append(base, flags...)...)
	if bytes.Equal(read(edges), read(plain)) || bytes.Equal(read(canny), read(plain)) || bytes.Equal(read(canny), read(edges)) {
		t.Error("a ControlNet did not change the image")
	}
	if !bytes.Equal(read(canny), read(again)) {
		t.Error("the same flags gave different images")
	}
}
