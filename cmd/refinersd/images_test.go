package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/png"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/daemon"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

// imagesFixture is `refinersd serve` with two pipelines on the tiny SD 1.5
// of the pipeline conformance cases (tiny: text to image; inpaint: an
// inpainting U-Net), the LoRA plugin installed and the cases' LoRA in the
// store as tiny-lora.
type imagesFixture struct {
	*daemonFixture
	srv *server
}

// tinyFiles reads the tiny models' file names and spec overrides from a
// pipeline case's metadata.
func tinyFiles(t *testing.T) (map[string]string, map[string]map[string]string) {
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
	return files, overrides
}

func newImagesFixture(t *testing.T) *imagesFixture {
	t.Helper()
	dir := t.TempDir()
	f := &daemonFixture{dir: dir, bin: filepath.Join(dir, "refinersd"), store: filepath.Join(dir, "store"), plugins: filepath.Join(dir, "plugins")}
	buildBinaries(t, dir, map[string]string{"refinersd": ".", "lora": "../../plugins/lora"})
	f.cli(t, "plugins", "install", filepath.Join(dir, "lora"), "--dir", f.plugins)
	f.cli(t, "adapters", "add", "tiny-lora", filepath.Join(tinySD, "lora.safetensors"), "--store", f.store)
	files, overrides := tinyFiles(t)
	abs := func(name string) string {
		p, err := filepath.Abs(filepath.Join(tinySD, name))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	set, _ := json.Marshal(overrides) // YAML reads JSON
	cfg := fmt.Sprintf(`pipelines:
  tiny:
    unet: %s
    text_encoder: %s
    autoencoder: %s
    set: %s
    width: 64
    height: 48
    steps: 3
    max_width: 128
    max_steps: 40
    max_batch: 2
    preload: true
  inpaint:
    unet: %s
    text_encoder: %s
    autoencoder: %s
    set: %s
    width: 64
    height: 48
    steps: 3
`, abs(files["unet"]), abs(files["text_encoder"]), abs(files["autoencoder"]), set,
		abs(files["unet_inpainting"]), abs(files["text_encoder"]), abs(files["autoencoder"]), set)
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return &imagesFixture{daemonFixture: f, srv: f.serve(t, nil, "--config", cfgPath, "--addr", "127.0.0.1:0")}
}

// post sends a JSON image request.
func (f *imagesFixture) post(t *testing.T, path string, req any, header ...string) (int, http.Header, []byte) {
	t.Helper()
	if m, ok := req.(map[string]any); ok {
		if _, named := m["model"]; !named {
			m["model"] = "tiny" // two pipelines: a request names one
		}
	}
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return f.srv.do(t, "POST", path, "application/json", bytes.NewReader(b), header...)
}

// recipeOf reads a PNG's recipe, failing the test if it has none.
func recipeOf(t *testing.T, b []byte) *pipeline.Recipe {
	t.Helper()
	rec, err := pipeline.ReadRecipe(b)
	if err != nil {
		t.Fatalf("recipe: %v", err)
	}
	return rec
}

// pixels decodes a PNG to its RGB bytes.
func pixels(t *testing.T, b []byte) *pipeline.RGB {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	return pipeline.ToRGB(img)
}

type imageResponse struct {
	ID     string
	Model  string
	Images []struct {
		PNGBase64 string `json:"png_base64"`
		Seed      uint64
	}
	Recipe   *pipeline.Recipe
	Warnings []string
	Adapters []struct {
		Plugin, File, Digest, Format string
		LayersAdapted                int `json:"layers_adapted"`
		Reused                       bool
	}
	Seconds float64
}

func decodeImages(t *testing.T, b []byte) (imageResponse, [][]byte) {
	t.Helper()
	var r imageResponse
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("answer %.300s: %v", b, err)
	}
	var pngs [][]byte
	for _, img := range r.Images {
		p, err := base64.StdEncoding.DecodeString(img.PNGBase64)
		if err != nil {
			t.Fatal(err)
		}
		pngs = append(pngs, p)
	}
	return r, pngs
}

// TestServeImages drives `refinersd serve`'s image endpoints end to end:
// PNG and JSON answers with recipes (the pixels `refinersd generate`
// makes), step events with previews, cancellation, LoRAs per request
// (grouped), inpainting from multipart, 400s naming the field, recipe
// round trips through the daemon and the CLI (the same PNG bytes), and the
// metrics.
func TestServeImages(t *testing.T) {
	f := newImagesFixture(t)
	s := f.srv
	seed := func(n int64) *int64 { return &n }

	// The pipelines, with the tiny one preloaded.
	code, _, b := s.do(t, "GET", "/v1/pipelines", "", nil)
	var list struct {
		Pipelines []struct {
			Name         string
			Width, Steps int
			Inpainting   *bool
			State        struct{ Loaded bool }
		}
	}
	json.Unmarshal(b, &list)
	if code != 200 || len(list.Pipelines) != 2 || list.Pipelines[1].Name != "tiny" || list.Pipelines[1].Width != 64 || list.Pipelines[1].Steps != 3 {
		t.Fatalf("pipelines: %d %s", code, b)
	}

	// Text to image, as PNG bytes: the pixels of `refinersd generate`.
	code, h, direct := f.post(t, "/v1/images", map[string]any{"model": "tiny", "prompt": "a lighthouse at dusk", "seed": 42}, "Accept", "image/png")
	if code != 200 || h.Get("Content-Type") != "image/png" {
		t.Fatalf("POST /v1/images (image/png): %d %s %.300s", code, h.Get("Content-Type"), direct)
	}
	if got, want := h.Get(daemon.AdapterSetHeader), daemon.AdapterSetDigest("pipeline/tiny", nil, false); got != want {
		t.Errorf("routing header %q, want %q", got, want)
	}
	rec := recipeOf(t, direct)
	if rec.Prompt != "a lighthouse at dusk" || rec.Seed != 42 || rec.Steps != 3 || rec.Width != 64 || rec.Height != 48 || rec.Model != "tiny" ||
		!strings.HasPrefix(rec.Weights.UNet, "sha256:") || rec.Solver != "dpm" || rec.Guidance != 7.5 {
		t.Errorf("recipe %+v", rec)
	}
	cliPNG := filepath.Join(f.dir, "cli.png")
	f.cli(t, append(tinyArgs(t, false), "--prompt", "a lighthouse at dusk", "--seed", "42", "--output", cliPNG, "--quiet")...)
	cli, err := os.ReadFile(cliPNG)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pixels(t, direct).Pix, pixels(t, cli).Pix) {
		t.Error("the daemon's image is not the pixels of refinersd generate's")
	}

	// JSON, a batch of two: seeds 7 and 8, each PNG with its own index.
	code, _, b = f.post(t, "/v1/images", map[string]any{"prompt": "a boat", "seed": 7, "batch": 2, "model": "tiny"})
	if code != 200 {
		t.Fatalf("batch: %d %s", code, b)
	}
	resp, pngs := decodeImages(t, b)
	if len(pngs) != 2 || resp.Images[0].Seed != 7 || resp.Images[1].Seed != 8 || resp.Recipe == nil || resp.Recipe.Batch != 2 || resp.Warnings == nil {
		t.Fatalf("batch answer: %.500s", b)
	}
	if r0, r1 := recipeOf(t, pngs[0]), recipeOf(t, pngs[1]); r0.Index != 0 || r1.Index != 1 || r1.Seed != 7 {
		t.Errorf("batch recipes: %+v %+v", r0, r1)
	}
	batchImage1 := pngs[1]

	// A job: step events with previews, then the result.
	code, h, b = f.post(t, "/v1/images/jobs", map[string]any{"prompt": "a boat", "seed": seed(3), "steps": 4, "preview": true})
	var st struct{ ID, State string }
	json.Unmarshal(b, &st)
	if code != 202 || st.ID == "" || h.Get("Location") != "/v1/jobs/"+st.ID {
		t.Fatalf("POST /v1/images/jobs: %d %s", code, b)
	}
	events := f.events(t, st.ID)
	var steps []int
	for _, e := range events {
		if e.Type == "step" {
			steps = append(steps, e.Step)
			if e.Steps != 4 {
				t.Errorf("step event %+v: steps %d, want 4", e, e.Steps)
			}
			p, err := base64.StdEncoding.DecodeString(e.PreviewPNG)
			if err != nil {
				t.Fatalf("step %d: preview: %v", e.Step, err)
			}
			if img := pixels(t, p); img.Width != 8 || img.Height != 6 {
				t.Errorf("step %d: preview %dx%d, want 8x6 (the latents' size)", e.Step, img.Width, img.Height)
			}
		}
	}
	if fmt.Sprint(steps) != "[1 2 3 4]" || events[len(events)-1].Type != "done" {
		t.Errorf("events: steps %v, last %+v", steps, events[len(events)-1])
	}
	for _, e := range f.events(t, st.ID) { // replayed after the end
		if e.PreviewPNG != "" {
			t.Errorf("event %d keeps its preview after the job ended", e.Seq)
		}
	}
	code, h, b = s.do(t, "GET", "/v1/jobs/"+st.ID+"/result", "", nil, "Accept", "image/png")
	if code != 200 || h.Get("Content-Type") != "image/png" || recipeOf(t, b).Steps != 4 {
		t.Errorf("job result as PNG: %d %s", code, h.Get("Content-Type"))
	}
	code, _, b = s.do(t, "GET", "/v1/jobs/"+st.ID+"/result", "", nil)
	if resp, pngs := decodeImages(t, b); code != 200 || resp.ID != st.ID || len(pngs) != 1 {
		t.Errorf("job result as JSON: %d %.300s", code, b)
	}

	// Cancel a long job after its first step: it stops before the next.
	code, _, b = f.post(t, "/v1/images/jobs", map[string]any{"prompt": "a boat", "steps": 40})
	json.Unmarshal(b, &st)
	if code != 202 {
		t.Fatalf("long job: %d %s", code, b)
	}
	f.waitStep(t, st.ID)
	if code, _, b := s.do(t, "DELETE", "/v1/jobs/"+st.ID, "", nil); code != 202 {
		t.Fatalf("cancel: %d %s", code, b)
	}
	events = f.events(t, st.ID)
	last, n := events[len(events)-1], 0
	for _, e := range events {
		if e.Type == "step" {
			n++
		}
	}
	if last.Type != "canceled" || n >= 40 {
		t.Errorf("canceled job: %d steps, last event %+v", n, last)
	}
	if code, _, _ := s.do(t, "GET", "/v1/jobs/"+st.ID+"/result", "", nil); code != http.StatusConflict {
		t.Errorf("result of a canceled job: %d", code)
	}

	// A LoRA per request: another image, the report, and the same set
	// reused by the next job.
	lora := map[string]any{"prompt": "a lighthouse at dusk", "seed": 42, "adapters": []map[string]any{{"plugin": "lora", "file": "tiny-lora", "scale": 1.5}}}
	code, _, b = f.post(t, "/v1/images", lora)
	resp, pngs = decodeImages(t, b)
	if code != 200 || len(resp.Adapters) != 1 || resp.Adapters[0].Format != "refiners" || resp.Adapters[0].LayersAdapted != 185 {
		t.Fatalf("LoRA: %d %.600s", code, b)
	}
	if bytes.Equal(pixels(t, pngs[0]).Pix, pixels(t, direct).Pix) {
		t.Error("the LoRA did not change the image")
	}
	loraPNG := pngs[0]
	if r := recipeOf(t, loraPNG); len(r.Adapters) != 1 || r.Adapters[0].File != "tiny-lora" || r.Adapters[0].Digest != resp.Adapters[0].Digest || string(r.Adapters[0].Params) != `{"scale":1.5}` {
		t.Errorf("LoRA recipe: %+v", r.Adapters)
	}
	code, _, b = f.post(t, "/v1/images", lora)
	if resp, _ := decodeImages(t, b); code != 200 || len(resp.Adapters) != 1 || !resp.Adapters[0].Reused {
		t.Errorf("same LoRA again: not reused: %.400s", b)
	}

	// Recipes: the daemon and the CLI regenerate the same bytes.
	for _, c := range []struct {
		name string
		png  []byte
	}{{"txt2img", direct}, {"image 2 of a batch", batchImage1}, {"LoRA", loraPNG}} {
		code, _, b := f.post(t, "/v1/images", map[string]any{"recipe": base64.StdEncoding.EncodeToString(c.png)}, "Accept", "image/png")
		if code != 200 || !bytes.Equal(b, c.png) {
			t.Errorf("%s: recipe through the daemon: %d, same bytes %v", c.name, code, bytes.Equal(b, c.png))
		}
		in, out := filepath.Join(f.dir, "in.png"), filepath.Join(f.dir, "again.png")
		os.WriteFile(in, c.png, 0o644)
		f.cli(t, append(withoutSize(tinyArgs(t, false)), "--recipe", in, "--output", out, "--quiet", "--store", f.store, "--plugins-dir", f.plugins)...)
		if again, _ := os.ReadFile(out); !bytes.Equal(again, c.png) {
			t.Errorf("%s: refinersd generate --recipe wrote other bytes", c.name)
		}
	}

	// Inpainting from multipart parts, and its recipe, which needs the
	// same images again.
	initPNG, _ := os.ReadFile(filepath.Join(tinySD, "init.png"))
	maskPNG, _ := os.ReadFile(filepath.Join(tinySD, "mask.png"))
	ct, body := multipartImages(t, map[string]any{"model": "inpaint", "prompt": "a boat", "seed": 1}, map[string][]byte{"init_image": initPNG, "mask": maskPNG})
	code, _, inpainted := s.do(t, "POST", "/v1/images", ct, body, "Accept", "image/png")
	if code != 200 {
		t.Fatalf("inpainting: %d %s", code, inpainted)
	}
	if r := recipeOf(t, inpainted); r.Mask == "" || r.InitImage == "" || r.Strength != 1 || r.Model != "inpaint" {
		t.Errorf("inpainting recipe %+v", r)
	}
	ct, body = multipartImages(t, map[string]any{}, map[string][]byte{"recipe": inpainted, "init_image": initPNG, "mask": maskPNG})
	if code, _, b := s.do(t, "POST", "/v1/images", ct, body, "Accept", "image/png"); code != 200 || !bytes.Equal(b, inpainted) {
		t.Errorf("inpainting recipe: %d, same bytes %v", code, bytes.Equal(b, inpainted))
	}

	// Bad input: 400 (404 for names) with the field in the message.
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	for _, c := range []struct {
		name string
		req  any
		code int
		want string
	}{
		{"width", map[string]any{"prompt": "x", "width": 60}, 400, "width 60 is not a positive multiple of 8"},
		{"width limit", map[string]any{"prompt": "x", "width": 256}, 400, "width 256: over pipeline tiny's limit of 128 (max_width)"},
		{"steps limit", map[string]any{"prompt": "x", "steps": 500}, 400, "steps 500: over pipeline tiny's limit of 40 (max_steps)"},
		{"batch limit", map[string]any{"prompt": "x", "batch": 3}, 400, "batch 3: over pipeline tiny's limit of 2"},
		{"negative steps", map[string]any{"prompt": "x", "steps": -2}, 400, "steps -2"},
		{"unknown field", map[string]any{"prompt": "x", "sed": 5}, 400, `unknown field "sed"`},
		{"wrong type", map[string]any{"prompt": "x", "steps": "many"}, 400, "steps"},
		{"seed", map[string]any{"prompt": "x", "seed": -5}, 400, "seed -5"},
		{"solver", map[string]any{"prompt": "x", "solver": "heun"}, 400, `unknown solver "heun"`},
		{"strength alone", map[string]any{"prompt": "x", "strength": 0.5}, 400, "strength 0.5 without an init image"},
		{"init not base64", map[string]any{"prompt": "x", "init_image": "%%%"}, 400, "init_image: not base64"},
		{"init not an image", map[string]any{"prompt": "x", "init_image": b64([]byte("hello"))}, 400, "init_image: not a PNG or JPEG"},
		{"mask on a text-to-image U-Net", map[string]any{"prompt": "x", "init_image": b64(initPNG), "mask": b64(maskPNG)}, 400, "needs an inpainting U-Net"},
		{"unknown model", map[string]any{"model": "sdxl", "prompt": "x"}, 404, `model "sdxl": no such pipeline`},
		{"bad model name", map[string]any{"model": "../x", "prompt": "x"}, 400, "model"},
		{"no model", map[string]any{"model": "", "prompt": "x"}, 400, "model: missing (a pipeline: inpaint, tiny)"},
		{"unknown plugin", map[string]any{"prompt": "x", "adapters": []map[string]any{{"plugin": "lorra", "file": "tiny-lora"}}}, 400, `adapters[0].plugin "lorra" is not installed`},
		{"unknown adapter", map[string]any{"prompt": "x", "adapters": []map[string]any{{"plugin": "lora", "file": "nope"}}}, 404, "adapters[0].file"},
		{"operation", map[string]any{"prompt": "x", "adapters": []map[string]any{{"plugin": "lora", "file": "tiny-lora", "operation": "apply"}}}, 400, "adapters[0].operation"},
		{"recipe and prompt", map[string]any{"prompt": "x", "recipe": b64(direct)}, 400, "leave out prompt"},
		{"recipe without one", map[string]any{"recipe": b64(initPNG)}, 400, "has no refiners-recipe text chunk"},
		{"recipe without its images", map[string]any{"recipe": b64(inpainted)}, 400, "was made with an init_image"},
	} {
		code, _, b := f.post(t, "/v1/images", c.req)
		var e struct{ Error struct{ Message string } }
		json.Unmarshal(b, &e)
		if code != c.code || !strings.Contains(e.Error.Message, c.want) {
			t.Errorf("%s: %d %s, want %d with %q", c.name, code, b, c.code, c.want)
		}
	}
	ct, body = multipartImages(t, map[string]any{"model": "tiny", "prompt": "x", "init_image": b64(initPNG)}, map[string][]byte{"init_image": initPNG})
	if code, _, b := s.do(t, "POST", "/v1/images", ct, body); code != 400 || !strings.Contains(string(b), "init_image: given both") {
		t.Errorf("init_image twice: %d %s", code, b)
	}

	// Metrics: per-step time and queue wait.
	_, _, b = s.do(t, "GET", "/metrics", "", nil)
	for _, m := range []string{`refinersd_image_step_seconds_count{pipeline="tiny"}`, `refinersd_image_step_seconds_count{pipeline="inpaint"}`, "refinersd_queue_wait_seconds_count"} {
		if !strings.Contains(string(b), m) {
			t.Errorf("metrics: no %s", m)
		}
	}
}

// multipartImages is an image request with files as parts.
func multipartImages(t *testing.T, request any, files map[string][]byte) (string, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	rj, _ := json.Marshal(request)
	mw.WriteField("request", string(rj))
	for name, b := range files {
		part, err := mw.CreateFormFile(name, name+".png")
		if err != nil {
			t.Fatal(err)
		}
		part.Write(b)
	}
	mw.Close()
	return mw.FormDataContentType(), &buf
}

type imageEvent struct {
	Seq        int
	Type       string
	Step       int
	Steps      int
	PreviewPNG string `json:"preview_png_base64"`
}

// events reads a job's event stream (NDJSON) to its end.
func (f *imagesFixture) events(t *testing.T, id string) []imageEvent {
	t.Helper()
	req, _ := http.NewRequest("GET", f.srv.url+"/v1/jobs/"+id+"/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []imageEvent
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e imageEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("event %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		t.Fatal("no events")
	}
	return out
}

// waitStep waits for a job's first step event.
func (f *imagesFixture) waitStep(t *testing.T, id string) {
	t.Helper()
	req, _ := http.NewRequest("GET", f.srv.url+"/v1/jobs/"+id+"/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), `"type":"step"`) {
			return
		}
	}
	t.Fatal("the job ended without a step")
}
