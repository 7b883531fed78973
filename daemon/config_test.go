package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigLayersAndValidation(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "refinersd.yaml")
	os.WriteFile(file, []byte("addr: 127.0.0.1:9000\nqueue_size: 5\nkeep_alive: 2m\nstore: /s\nplugins_dir: /p\n"), 0o644)
	c := Defaults()
	if err := c.LoadFile(file); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"REFINERSD_QUEUE_SIZE": "7", "REFINERSD_KEEP_ALIVE": "30s"}
	if err := c.LoadEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if c.Addr != "127.0.0.1:9000" || c.QueueSize != 7 || c.KeepAlive != 30*time.Second || c.MaxBody != Defaults().MaxBody {
		t.Errorf("layered config: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}

	os.WriteFile(file, []byte("adress: 0.0.0.0:1\n"), 0o644)
	if err := c.LoadFile(file); err == nil || !strings.Contains(err.Error(), "field adress not found") {
		t.Errorf("unknown key: %v", err)
	}
	if err := c.LoadEnv(func(k string) string { return map[string]string{"REFINERSD_MAX_BODY": "lots"}[k] }); err == nil || !strings.Contains(err.Error(), "REFINERSD_MAX_BODY") {
		t.Errorf("bad env: %v", err)
	}
	for addr, wantErr := range map[string]string{
		"127.0.0.1:1": "", "localhost:1": "", "[::1]:1": "",
		"0.0.0.0:1": "set a token", ":1": "set a token", "10.0.0.2:1": "set a token", "[::]:1": "set a token", "nonsense": "missing port",
	} {
		c := Defaults()
		c.Store, c.PluginsDir, c.Addr = "/s", "/p", addr
		err := c.Validate()
		if (wantErr == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), wantErr) {
			t.Errorf("addr %s without a token: %v, want %q", addr, err, wantErr)
		}
		c.Token = "0123456789abcdef"
		if err := c.Validate(); err != nil && wantErr != "missing port" {
			t.Errorf("addr %s with a token: %v", addr, err)
		}
	}
}

func TestJSONTensorsRoundTrip(t *testing.T) {
	for _, c := range []struct {
		dtype string
		data  []float64
	}{
		{"float32", []float64{1, -2.5, 1e-30, 3.4e38}},
		{"bfloat16", []float64{1, -2.5, 0.0078125, 1.2676506002282294e30}},
		{"float16", []float64{1, -2.5, 65504, 5.960464477539063e-08}},
		{"int64", []float64{0, -7, 1 << 52}},
		{"bool", []float64{0, 1, 1}},
	} {
		jt := &JSONTensor{DType: c.dtype, Shape: []int64{int64(len(c.data))}, Data: c.data}
		raw, err := decodeTensor("input.0", jt)
		if err != nil {
			t.Fatalf("%s: %v", c.dtype, err)
		}
		back := encodeTensor(raw, false)
		for i, v := range c.data {
			if c.dtype != "float32" && back.Data[i] != v || c.dtype == "float32" && float32(back.Data[i]) != float32(v) {
				t.Errorf("%s[%d]: %v came back as %v", c.dtype, i, v, back.Data[i])
			}
		}
		b64, err := decodeTensor("input.0", &JSONTensor{DType: c.dtype, Shape: jt.Shape, DataBase64: encodeTensor(raw, true).DataBase64})
		if err != nil || string(b64.Data) != string(raw.Data) {
			t.Errorf("%s: base64 round trip: %v", c.dtype, err)
		}
	}
	for name, jt := range map[string]JSONTensor{
		"too few":       {DType: "float32", Shape: []int64{2, 2}, Data: []float64{1}},
		"negative dim":  {DType: "float32", Shape: []int64{-1}},
		"bad base64":    {DType: "float32", Shape: []int64{1}, DataBase64: "!!"},
		"short base64":  {DType: "float32", Shape: []int64{2}, DataBase64: "AAAAAA=="},
		"fraction int":  {DType: "int64", Shape: []int64{1}, Data: []float64{0.5}},
		"bool 2":        {DType: "bool", Shape: []int64{1}, Data: []float64{2}},
		"huge":          {DType: "float32", Shape: []int64{1 << 20, 1 << 20}},
		"unknown dtype": {DType: "complex64", Shape: []int64{1}, Data: []float64{1}},
	} {
		if _, err := decodeTensor("input.0", &jt); err == nil || !strings.Contains(err.Error(), "input.0") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestConfigRefusesNegativeAndZeroDurations(t *testing.T) {
	for _, c := range []struct {
		yaml, want string // want "": valid
	}{
		{"keep_alive: 0s", ""}, // never unload
		{"keep_alive: -5m", "keep_alive -5m0s: want 0 (never) or more"},
		{"shutdown_timeout: -1s", "shutdown_timeout -1s: want more than 0"},
		{"shutdown_timeout: 0s", "shutdown_timeout 0s: want more than 0"},
		{"plugin_timeout: 0s", "plugin_timeout 0s: want more than 0"},
		{"job_ttl: 0s", "job_ttl 0s: want more than 0"},
		{"job_ttl: -1h", "job_ttl -1h0m0s: want more than 0"},
		{"idle_timeout: 0s", "idle_timeout 0s: want more than 0"},
		{"body_timeout: -1s", "body_timeout -1s: want more than 0"},
	} {
		file := filepath.Join(t.TempDir(), "refinersd.yaml")
		os.WriteFile(file, []byte("store: /s\nplugins_dir: /p\n"+c.yaml+"\n"), 0o644)
		cfg := Defaults()
		err := cfg.LoadFile(file)
		if err == nil {
			err = cfg.Validate()
		}
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.yaml, err, c.want)
		}
	}
}

// TestPipelinesConfig: the pipelines section is read from YAML, gets its
// limits and defaults, and each mistake is refused with its key.
func TestPipelinesConfig(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"unet", "text_encoder", "autoencoder"} {
		os.WriteFile(filepath.Join(dir, f+".safetensors"), []byte("x"), 0o644)
	}
	file := filepath.Join(dir, "refinersd.yaml")
	os.WriteFile(file, []byte(`store: /s
plugins_dir: /p
pipelines:
  tiny:
    weights: `+dir+`
    set: {unet: {channels_1: "4"}}
    width: 64
    height: 48
    steps: 4
    max_batch: 2
  fromstore:
    model: sd15
    dtype: bfloat16
`), 0o644)
	c := Defaults()
	if err := c.LoadFile(file); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("valid pipelines: %v", err)
	}
	tiny, st := c.Pipelines["tiny"], c.Pipelines["fromstore"]
	if tiny.Width != 64 || tiny.Height != 48 || tiny.Steps != 4 || tiny.MaxBatch != 2 || tiny.MaxWidth != 1024 || tiny.MaxSteps != 150 || tiny.Set["unet"]["channels_1"] != "4" {
		t.Errorf("tiny: %+v", tiny)
	}
	if st.Width != 512 || st.Height != 512 || st.Steps != 30 || st.MaxBatch != 4 {
		t.Errorf("store pipeline defaults: %+v", st)
	}
	files, err := tiny.files("tiny")
	if err != nil || files.UNet != filepath.Join(dir, "unet.safetensors") || files.Autoencoder != filepath.Join(dir, "autoencoder.safetensors") {
		t.Errorf("files %+v, %v", files, err)
	}

	for _, c := range []struct {
		name string
		p    PipelineConfig
		want string
	}{
		{"no weights", PipelineConfig{}, "pipelines.x: no weights"},
		{"two sources", PipelineConfig{Model: "m", Weights: dir}, "model (the store) or weights"},
		{"some files", PipelineConfig{UNet: "u"}, "no weights"},
		{"missing folder", PipelineConfig{Weights: filepath.Join(dir, "nope")}, "pipelines.x: unet weights"},
		{"bad set", PipelineConfig{Weights: dir, Set: map[string]map[string]string{"vae": {}}}, `pipelines.x.set: unknown model "vae"`},
		{"bad device", PipelineConfig{Weights: dir, Device: "tpu"}, "pipelines.x.device"},
		{"bad dtype", PipelineConfig{Weights: dir, DType: "int64"}, "pipelines.x.dtype int64"},
		{"float16 on the CPU", PipelineConfig{Weights: dir, DType: "float16"}, "pipelines.x.dtype float16 on cpu: float16 has no CPU kernels"},
		{"bad store name", PipelineConfig{Model: "../up"}, "pipelines.x.model"},
		{"negative limit", PipelineConfig{Weights: dir, MaxSteps: -1}, "pipelines.x.max_steps -1"},
		{"default over limit", PipelineConfig{Weights: dir, Width: 512, MaxWidth: 256}, "outside the limits"},
		{"bad default size", PipelineConfig{Weights: dir, Width: 60}, "width 60 is not a positive multiple of 8"},
	} {
		cfg := Defaults()
		cfg.Store, cfg.PluginsDir = "/s", "/p"
		cfg.Pipelines = map[string]PipelineConfig{"x": c.p}
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", c.name, err, c.want)
		}
	}
	cfg := Defaults()
	cfg.Store, cfg.PluginsDir = "/s", "/p"
	cfg.Pipelines = map[string]PipelineConfig{"Bad Name": {Weights: dir}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "pipelines:") {
		t.Errorf("bad pipeline name: %v", err)
	}
}
