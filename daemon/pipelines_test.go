package daemon

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
	"github.com/refiners-go/refiners/specs"
)

// tinyPipeline is the tiny SD 1.5 of the pipeline conformance cases as a
// pipeline configuration.
func tinyPipeline(t *testing.T) PipelineConfig {
	t.Helper()
	dir := "../conformance/testdata/pipeline"
	f, err := weights.Open(filepath.Join(dir, "txt2img_dpm.case.safetensors"))
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
	return PipelineConfig{UNet: filepath.Join(dir, files["unet"]), TextEncoder: filepath.Join(dir, files["text_encoder"]),
		Autoencoder: filepath.Join(dir, files["autoencoder"]), Set: overrides, Width: 64, Height: 48, Steps: 2}
}

// TestPipelinePreload: a preloaded pipeline gates /readyz until it is
// loaded and stays loaded past keep_alive; one that is not preloaded
// loads on demand and is unloaded when idle.
func TestPipelinePreload(t *testing.T) {
	kept, lazy := tinyPipeline(t), tinyPipeline(t)
	kept.Preload = true
	td := newTestDaemon(t, func(c *Config) {
		c.KeepAlive = 50 * time.Millisecond
		c.Pipelines = map[string]PipelineConfig{"kept": kept, "lazy": lazy}
	})
	code := 0
	for deadline := time.Now().Add(60 * time.Second); code != 200 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var b []byte
		code, b = td.do(t, "GET", "/readyz", "", nil)
		if code != 200 && !strings.Contains(string(b), "pipeline/kept") {
			t.Fatalf("/readyz while the pipeline loads: %d %s", code, b)
		}
	}
	if code != 200 {
		t.Fatal("/readyz never became ready")
	}
	state := func(name string) ModelState {
		_, b := td.do(t, "GET", "/v1/pipelines", "", nil)
		var list struct{ Pipelines []PipelineInfo }
		json.Unmarshal(b, &list)
		for _, p := range list.Pipelines {
			if p.Name == name {
				return p.State
			}
		}
		t.Fatalf("no pipeline %s in %s", name, b)
		return ModelState{}
	}
	if code, b := td.do(t, "POST", "/v1/pipelines/lazy/load", "", nil); code != 200 {
		t.Fatalf("load lazy: %d %s", code, b)
	}
	time.Sleep(300 * time.Millisecond) // many keep-alives
	if !state("kept").Loaded {
		t.Error("the preloaded pipeline was unloaded after keep_alive")
	}
	if state("lazy").Loaded {
		t.Error("the pipeline loaded on demand stayed after keep_alive")
	}
	if code, b := td.do(t, "POST", "/v1/pipelines/nope/load", "", nil); code != http.StatusNotFound || !strings.Contains(string(b), "no such pipeline") {
		t.Errorf("load an unknown pipeline: %d %s", code, b)
	}
	if code, b := td.do(t, "POST", "/v1/pipelines/lazy/unload", "", nil); code != http.StatusNotFound {
		t.Errorf("unload a pipeline that is not loaded: %d %s", code, b)
	}
}

// TestImagesAuthAndLimits: the image routes sit behind the token, the
// body limit and the media-type check like every run route, before any
// pipeline loads.
func TestImagesAuthAndLimits(t *testing.T) {
	const token = "0123456789abcdef-token"
	td := newTestDaemon(t, func(c *Config) {
		c.Token, c.MaxBody = token, 4096
		c.Pipelines = map[string]PipelineConfig{"tiny": tinyPipeline(t)}
	})
	send := func(method, path, auth, ct, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, td.srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := resp.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		return resp.StatusCode, b.String()
	}
	for _, c := range []struct {
		name, method, path, auth, ct, body string
		code                               int
		want                               string
	}{
		{"images without token", "POST", "/v1/images", "", "application/json", `{"prompt":"x"}`, 401, "bearer token"},
		{"jobs without token", "POST", "/v1/images/jobs", "wrong-token-of-some-length", "application/json", `{"prompt":"x"}`, 401, "bearer token"},
		{"pipelines without token", "GET", "/v1/pipelines", "", "", "", 401, "bearer token"},
		{"too large", "POST", "/v1/images", token, "application/json", `{"prompt":"` + strings.Repeat("x", 5000) + `"}`, 413, "larger than 4096 bytes"},
		{"media type", "POST", "/v1/images", token, "text/plain", `{"prompt":"x"}`, 415, `Content-Type "text/plain"`},
		{"two objects", "POST", "/v1/images", token, "application/json", `{"prompt":"x"}{}`, 400, "send one JSON object"},
		{"key twice", "POST", "/v1/images", token, "application/json", `{"prompt":"x","prompt":"y"}`, 400, "given twice"},
		{"multipart without request", "POST", "/v1/images", token, "multipart/form-data; boundary=b", "--b--\r\n", 400, `no "request" part`},
		{"dot segments", "POST", "/v1/pipelines/..%2f..%2fx/load", token, "", "", 400, "dot segments"},
		{"bad pipeline name", "POST", "/v1/pipelines/Tiny/load", token, "", "", 400, "model"},
	} {
		code, b := send(c.method, c.path, c.auth, c.ct, c.body)
		var e struct{ Error struct{ Message string } }
		json.Unmarshal([]byte(b), &e)
		if code != c.code || !strings.Contains(e.Error.Message, c.want) {
			t.Errorf("%s: %d %s, want %d with %q", c.name, code, b, c.code, c.want)
		}
	}
	// Nothing above loaded the pipeline.
	if _, b := send("GET", "/v1/pipelines", token, "", ""); !strings.Contains(b, `"loaded": false`) {
		t.Errorf("pipelines after refused requests: %s", b)
	}
}

// TestPipelineFromStore: model: NAME takes the four store models
// `refinersd models add NAME --from SRC` registers (the autoencoder's
// halves under Encoder. and Decoder. of one file), with the store's
// overrides and digests; a model under another prefix is refused by name.
func TestPipelineFromStore(t *testing.T) {
	files := tinyPipeline(t)
	td := newTestDaemon(t, func(c *Config) {
		c.Pipelines = map[string]PipelineConfig{"fromstore": {Model: "tiny", Width: 64, Height: 48, Steps: 2}, "bad": {Model: "odd"}}
	})
	for _, name := range []string{"tiny", "odd"} {
		for _, m := range []struct {
			suffix, spec, weights, prefix string
			overrides                     map[string]string
		}{
			{"-unet", "sd15_unet.yaml", files.UNet, "", files.Set["unet"]},
			{"-text_encoder", "clip_text.yaml", files.TextEncoder, "", files.Set["text_encoder"]},
			{"-vae_encoder", "sd15_vae_encoder.yaml", files.Autoencoder, "Encoder.", files.Set["autoencoder"]},
			{"-vae_decoder", "sd15_vae_decoder.yaml", files.Autoencoder, "Decoder.", files.Set["autoencoder"]},
		} {
			spec, weights, prefix, overrides := m.spec, m.weights, m.prefix, m.overrides
			if name == "odd" && m.suffix == "-unet" { // a misregistered U-Net: the autoencoder's encoder half
				spec, weights, prefix, overrides = "sd15_vae_encoder.yaml", files.Autoencoder, "Encoder.", files.Set["autoencoder"]
			}
			if _, err := td.d.store.AddModelFS(name+m.suffix, specs.FS, spec, weights, overrides, prefix); err != nil {
				t.Fatal(err)
			}
		}
	}
	code, b := td.do(t, "POST", "/v1/pipelines/fromstore/load", "", nil)
	var info PipelineInfo
	json.Unmarshal(b, &info)
	want, err := pipeline.FileDigests(pipeline.Config{UNet: files.UNet, TextEncoder: files.TextEncoder, Autoencoder: files.Autoencoder})
	if err != nil {
		t.Fatal(err)
	}
	if code != 200 || !info.State.Loaded || info.Weights == nil || *info.Weights != want {
		t.Errorf("load from the store: %d %s; want digests %+v", code, b, want)
	}
	code, b = td.do(t, "POST", "/v1/pipelines/bad/load", "", nil)
	if code != 500 || !strings.Contains(string(b), `store model odd-unet has key prefix \"Encoder.\"; the pipeline reads it under \"\"`) {
		t.Errorf("load with a wrong prefix: %d %s", code, b)
	}
}
