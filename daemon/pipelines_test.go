package daemon

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/refiners-go/refiners/core/weights"
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
