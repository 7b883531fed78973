package convert

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nlpodyssey/safetensors"

	"github.com/refiners-go/refiners/core/weights"
)

// The sources are the conformance cases' (conformance/generate_convert.py):
// tiny SD 1.5 models in every layout. The numbers of the converted models
// are checked there (TestConvert); here, what is found, refused and written.
const data = "../conformance/testdata/convert"

func src(name string) string { return filepath.Join(data, name) }

// tinyParams are what a config.json would give for the tiny models; single
// files have none.
var tinyParams = map[string]string{"unet.num_heads": "2", "unet.num_groups": "2",
	"text_encoder.num_attention_heads": "2", "autoencoder.num_groups": "2"}

func detect(t *testing.T, path string, o Options) (*Source, *Detection, error) {
	t.Helper()
	s, err := Open(path, o)
	if err != nil {
		return nil, nil, err
	}
	t.Cleanup(func() { s.Close() })
	d, err := Detect(s, o)
	return s, d, err
}

func TestDetect(t *testing.T) {
	type want struct{ component, layout, prefix, dtype string }
	for _, tc := range []struct {
		source string
		o      Options
		kind   string
		found  []want
		params map[string]string // a few of the inferred spec parameters
		leaves []string          // substrings of the reported leaves
		ignore int               // keys ignored by layout rules
	}{
		{"pipeline", Options{}, "diffusers pipeline", []want{
			{"text_encoder", "diffusers", "", "F32"}, {"unet", "diffusers", "", "F32"}, {"autoencoder", "diffusers", "", "F32"},
		}, nil, nil, 0},
		{"sd15.safetensors", Options{}, "safetensors file", []want{
			{"unet", "original", "model.diffusion_model.", "F32"},
			{"autoencoder", "original", "first_stage_model.", "F32"},
			{"text_encoder", "original", "cond_stage_model.transformer.", "F32"},
		}, map[string]string{"in_channels": "4", "channels_3": "12", "num_heads": "8", "num_groups": "32"}, nil, 12},
		{"sd15.ckpt", Options{Params: tinyParams}, "torch zip file", []want{
			{"unet", "original", "model.diffusion_model.", "F16"},
			{"autoencoder", "original", "first_stage_model.", "F16"},
			{"text_encoder", "original", "cond_stage_model.transformer.", "F16"},
		}, map[string]string{"num_heads": "2", "num_groups": "2"},
			[]string{"global_step = 1234", "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint object"}, 12 + 1 + 686 + 2},
		{"sd15.ckpt", Options{EMA: true, Params: tinyParams}, "torch zip file", []want{
			{"unet", "original", "model.diffusion_model.", "F16"},
			{"autoencoder", "original", "first_stage_model.", "F16"},
			{"text_encoder", "original", "cond_stage_model.transformer.", "F16"},
		}, nil, nil, 12 + 1 + 686 + 2},
		{"inpainting_unet", Options{}, "diffusers component folder", []want{
			{"unet", "diffusers", "", "BF16"},
		}, map[string]string{"in_channels": "9", "num_heads": "2", "num_groups": "2"}, nil, 0},
		{"controlnet", Options{}, "diffusers component folder", []want{{"controlnet", "diffusers", "", "F32"}}, nil, nil, 0},
		{"control_sd15.pth", Options{}, "torch zip file", []want{{"controlnet", "original", "", "F32"}}, nil, nil, 0},
	} {
		t.Run(tc.source, func(t *testing.T) {
			s, d, err := detect(t, src(tc.source), tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if s.Kind != tc.kind {
				t.Errorf("kind %q, want %q", s.Kind, tc.kind)
			}
			byComp := map[string]*Found{}
			for _, f := range d.Found {
				byComp[f.Component()] = f
			}
			if len(d.Found) != len(tc.found) {
				t.Fatalf("found %s, want %d components", d.components(), len(tc.found))
			}
			if tc.source == "pipeline" && (len(s.Skipped) != 4 || !strings.HasPrefix(s.Skipped[1], "safety_checker/ (stable_diffusion StableDiffusionSafetyChecker)")) {
				// feature_extractor, safety_checker, scheduler, tokenizer
				t.Errorf("skipped %v", s.Skipped)
			}
			for _, w := range tc.found {
				f := byComp[w.component]
				if f == nil {
					t.Fatalf("no %s", w.component)
				}
				if f.Layout.Name != w.layout || f.Prefix != w.prefix || f.DType != w.dtype {
					t.Errorf("%s: %s layout, prefix %q, %s; want %s, %q, %s", w.component, f.Layout.Name, f.Prefix, f.DType, w.layout, w.prefix, w.dtype)
				}
				if tc.o.EMA && w.component == "unet" && (!f.EMA || !strings.HasPrefix(f.Sources[0].key, "model_ema.")) {
					t.Errorf("EMA asked, sources %s...", f.Sources[0].key)
				}
			}
			if f := d.Found[0]; tc.params != nil {
				for k, v := range tc.params {
					if f.Params[k] != v {
						t.Errorf("%s: %s=%s, want %s", f.Component(), k, f.Params[k], v)
					}
				}
			}
			var leaves []string
			for _, p := range s.Parts {
				leaves = append(leaves, p.Leaves...)
			}
			for _, l := range tc.leaves {
				if !slices.ContainsFunc(leaves, func(x string) bool { return strings.Contains(x, l) }) {
					t.Errorf("leaves %v lack %q", leaves, l)
				}
			}
			if len(d.Ignored) != tc.ignore || len(d.Unused) != 0 {
				t.Errorf("ignored %d (want %d): %s; unused %v", len(d.Ignored), tc.ignore, firstN(d.Ignored, 3), d.Unused)
			}
		})
	}
}

// writeVariant writes a copy of a safetensors source with keys removed or
// added.
func writeVariant(t *testing.T, from string, drop []string, add map[string][]float32) string {
	t.Helper()
	raw, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	st, err := safetensors.Deserialize(raw)
	if err != nil {
		t.Fatal(err)
	}
	views := map[string]safetensors.View{}
	for _, k := range st.Names() {
		if !slices.Contains(drop, k) {
			v, _ := st.Tensor(k)
			views[k] = v
		}
	}
	for k, vals := range add {
		b := make([]byte, 4*len(vals))
		v, _ := safetensors.NewTensorView(safetensors.F32, []uint64{uint64(len(vals))}, b)
		views[k] = v
	}
	var buf bytes.Buffer
	if err := safetensors.SerializeToWriter(views, nil, &buf); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "variant.safetensors")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRefusals: what the converter will not do, and what it says.
func TestRefusals(t *testing.T) {
	extra := writeVariant(t, src("sd15.safetensors"), nil, map[string][]float32{"lora_unet_down.alpha": {1}})
	missing := writeVariant(t, src("sd15.safetensors"), []string{"model.diffusion_model.input_blocks.1.1.proj_in.weight"}, nil)
	// Refiners' own keys are no source layout.
	unknown := writeVariant(t, src("controlnet_refiners.safetensors"), nil, map[string][]float32{"a.b": {1}})
	for _, tc := range []struct {
		name   string
		source string
		o      Options
		want   []string
	}{
		{"unused key", extra, Options{}, []string{"1 tensors are used by no component: lora_unet_down.alpha", "--lenient"}},
		{"missing tensor", missing, Options{}, []string{"looks like a unet (original layout, model.diffusion_model.*)",
			"1 of its 686 tensors are missing: model.diffusion_model.input_blocks.1.1.proj_in.weight"}},
		{"unknown layout", unknown, Options{}, []string{"no known layout matches its", "first unmatched keys: "}},
		{"absent component", src("sd15.safetensors"), Options{Component: "controlnet"}, []string{"holds no controlnet (found: unet, autoencoder, text_encoder)"}},
		{"unknown component", src("sd15.safetensors"), Options{Component: "vae"}, []string{`unknown component "vae"`}},
		{"no EMA", src("sd15.safetensors"), Options{EMA: true}, []string{"--ema, but its unet has no EMA weights (model_ema.*)"}},
		{"bad param", src("sd15.safetensors"), Options{Params: map[string]string{"unet.heads": "2"}}, []string{"--param unet.heads: unet has no parameter heads"}},
		{"hostile pickle", "../torchfile/testdata/hostile_system.pt", Options{}, []string{"refused posix.system", "nothing in the file was run"}},
		{"not a weights file", "convert.go", Options{}, []string{"not a PyTorch file"}},
		{"folder without weights", "testdata", Options{}, []string{"no weights (looked for diffusion_pytorch_model.safetensors"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := detect(t, tc.source, tc.o)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	// Lenient: the foreign key is reported, not fatal.
	_, d, err := detect(t, extra, Options{Lenient: true})
	if err != nil || !slices.Equal(d.Unused, []string{"lora_unet_down.alpha"}) || len(d.Found) != 3 {
		t.Errorf("lenient: %v, unused %v", err, d.Unused)
	}
}

// TestTruncatedSources: a cut file is refused when opened, with an error
// naming it, and nothing is written.
func TestTruncatedSources(t *testing.T) {
	for _, name := range []string{"sd15.safetensors", "sd15.ckpt", "control_sd15.pth", "pipeline/text_encoder/pytorch_model.bin"} {
		raw, err := os.ReadFile(src(name))
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		for _, n := range []int{len(raw) / 2, len(raw) - 100, len(raw) - 1} {
			p := filepath.Join(dir, filepath.Base(name))
			if err := os.WriteFile(p, raw[:n], 0o644); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "out")
			_, _, err := detect(t, p, Options{Params: tinyParams})
			if err == nil || !strings.Contains(err.Error(), p) {
				t.Errorf("%s cut to %d of %d bytes: %v", name, n, len(raw), err)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("%s: output written", name)
			}
		}
	}
}

// convertTo converts a source into dir and returns the written files.
func convertTo(t *testing.T, source, dir string, o Options) map[string]string {
	t.Helper()
	_, d, err := detect(t, source, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	paths, err := OutputPaths(d, dir)
	if err != nil {
		t.Fatal(err)
	}
	written, err := Convert(context.Background(), d, paths, o)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, w := range written {
		out[w.Component] = w.Path
	}
	return out
}

func sameTensors(t *testing.T, a, b string) {
	t.Helper()
	fa, err := weights.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := weights.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	if !slices.Equal(fa.Keys(), fb.Keys()) {
		t.Fatalf("%s and %s hold different keys", a, b)
	}
	for _, k := range fa.Keys() {
		ia, _ := fa.Info(k)
		ib, _ := fb.Info(k)
		x, _ := fa.Bytes(k)
		y, _ := fb.Bytes(k)
		if ia.DType != ib.DType || !slices.Equal(ia.Shape, ib.Shape) || !bytes.Equal(x, y) {
			t.Fatalf("%s: %s %v vs %s %v, or values differ", k, ia.DType, ia.Shape, ib.DType, ib.Shape)
		}
	}
}

// TestLayoutsAgree: the same weights in every layout and dtype convert to
// the same file (the weights are float16-exact, so float32 <-> float16 is
// lossless; reshaped VAE attention included).
func TestLayoutsAgree(t *testing.T) {
	dir := t.TempDir()
	pipe := convertTo(t, src("pipeline"), filepath.Join(dir, "pipe"), Options{})
	single := convertTo(t, src("sd15.safetensors"), filepath.Join(dir, "single"), Options{Params: tinyParams})
	ckpt32 := convertTo(t, src("sd15.ckpt"), filepath.Join(dir, "ckpt32"), Options{Params: tinyParams, DType: "float32"})
	ckpt16 := convertTo(t, src("sd15.ckpt"), filepath.Join(dir, "ckpt16"), Options{Params: tinyParams})
	single16 := convertTo(t, src("sd15.safetensors"), filepath.Join(dir, "single16"), Options{Params: tinyParams, DType: "float16"})
	for _, comp := range []string{"unet", "text_encoder", "autoencoder"} {
		sameTensors(t, pipe[comp], single[comp])
		sameTensors(t, pipe[comp], ckpt32[comp])
		sameTensors(t, ckpt16[comp], single16[comp])
	}
	f, err := weights.Open(ckpt16["unet"])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	meta := f.Metadata()
	var params map[string]string
	json.Unmarshal([]byte(meta["spec_params"]), &params)
	if meta["dtype"] != "float16" || meta["layout"] != "original" || meta["refiners_root"] != "SD1UNet" || params["num_heads"] != "2" {
		t.Errorf("metadata %v", meta)
	}
	info, _ := f.Info("DownBlocks.Chain_1.Conv2d.weight")
	if info.DType.String() != "float16" {
		t.Errorf("default dtype of a float16 source: %s", info.DType)
	}
}

// TestNothingWrittenOnFailure: when one output cannot be written, no
// output is in place, and no temporary file is left.
func TestNothingWrittenOnFailure(t *testing.T) {
	_, d, err := detect(t, src("sd15.safetensors"), Options{Params: tinyParams})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	paths := map[*Found]string{}
	for _, f := range d.Found {
		paths[f] = filepath.Join(dir, f.Component()+".safetensors")
		if f.Component() == "text_encoder" {
			paths[f] = filepath.Join(dir, "no", "such", "dir", "x.safetensors")
		}
	}
	if _, err := Convert(context.Background(), d, paths, Options{}); err == nil {
		t.Fatal("no error")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left %d files in the output folder", len(entries))
	}
}

// TestSpecCheck: parameters the tensors contradict stop the conversion
// before anything is written.
func TestSpecCheck(t *testing.T) {
	o := Options{Component: "unet", Params: map[string]string{"unet.num_heads": "3", "unet.num_groups": "2"}}
	_, d, err := detect(t, src("sd15.safetensors"), o)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "unet.safetensors")
	paths, _ := OutputPaths(d, out)
	_, err = Convert(context.Background(), d, paths, o)
	if err == nil || !strings.Contains(err.Error(), "sd15_unet.yaml") {
		t.Errorf("error %v, want the spec named", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("output written")
	}
}

func TestOutputPaths(t *testing.T) {
	_, d, err := detect(t, src("sd15.safetensors"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OutputPaths(d, "x.safetensors"); err == nil || !strings.Contains(err.Error(), "--component") {
		t.Errorf("three components to one file: %v", err)
	}
	paths, err := OutputPaths(d, "out")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range paths {
		got = append(got, p)
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"out/autoencoder.safetensors", "out/text_encoder.safetensors", "out/unet.safetensors"}) {
		t.Errorf("paths %v", got)
	}
}

func TestReport(t *testing.T) {
	_, d, err := detect(t, src("sd15.ckpt"), Options{Params: tinyParams})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	d.Report(&b)
	for _, want := range []string{
		"source: ../conformance/testdata/convert/sd15.ckpt (torch zip file)",
		"unet          sd15.ckpt, original layout, model.diffusion_model.*: 686 tensors",
		"float16", "spec parameters: channels_1=4 channels_2=8 channels_3=12",
		"ignored: 701 tensors that are not weights (betas,",
		"also holds: global_step = 1234",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}

// TestOverrides: a stored model records only the parameters that differ
// from its spec's defaults.
func TestOverrides(t *testing.T) {
	_, d, err := detect(t, src("pipeline"), Options{Component: "autoencoder"})
	if err != nil {
		t.Fatal(err)
	}
	f := d.Found[0]
	got, err := Overrides(f, f.Table.Specs[0])
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"channels_1": "4", "channels_2": "8", "channels_3": "12", "channels_4": "12", "num_groups": "2"}
	if len(got) != len(want) {
		t.Errorf("overrides %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s=%s, want %s", k, got[k], v)
		}
	}
}

// TestTables: every table's rows are complete and unique per layout, and
// every parameter rule names a row.
func TestTables(t *testing.T) {
	for _, tab := range tables {
		for _, l := range tab.Layouts {
			seen := map[string]bool{}
			for _, r := range tab.Rows {
				n := r.Name(l.Name)
				if n == "" || seen[n] || r.Refiners == "" || len(r.Shape) == 0 {
					t.Errorf("%s/%s: bad or duplicate row %+v", tab.Component, l.Name, r)
				}
				seen[n] = true
			}
		}
		for name, rule := range tab.Params {
			if rule.Key != "" && !slices.ContainsFunc(tab.Rows, func(r *Row) bool { return r.Refiners == rule.Key }) {
				t.Errorf("%s: parameter %s names no row (%s)", tab.Component, name, rule.Key)
			}
		}
	}
}

// TestShardedFolder: a component split over shards with an index
// (diffusion_pytorch_model.safetensors.index.json) converts as the single
// file does.
func TestShardedFolder(t *testing.T) {
	raw, err := os.ReadFile(src("pipeline/unet/diffusion_pytorch_model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := safetensors.Deserialize(raw)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	folder := filepath.Join(dir, "unet")
	os.MkdirAll(folder, 0o755)
	cfg, _ := os.ReadFile(src("pipeline/unet/config.json"))
	os.WriteFile(filepath.Join(folder, "config.json"), cfg, 0o644)
	names := st.Names()
	slices.Sort(names)
	weightMap := map[string]string{}
	for i, part := range [][]string{names[:len(names)/2], names[len(names)/2:]} {
		views := map[string]safetensors.View{}
		file := []string{"diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"}[i]
		for _, k := range part {
			v, _ := st.Tensor(k)
			views[k] = v
			weightMap[k] = file
		}
		var buf bytes.Buffer
		if err := safetensors.SerializeToWriter(views, nil, &buf); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(folder, file), buf.Bytes(), 0o644)
	}
	index, _ := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": weightMap})
	os.WriteFile(filepath.Join(folder, "diffusion_pytorch_model.safetensors.index.json"), index, 0o644)

	sharded := convertTo(t, folder, filepath.Join(dir, "sharded"), Options{})
	whole := convertTo(t, src("pipeline"), filepath.Join(dir, "whole"), Options{Component: "unet"})
	sameTensors(t, sharded["unet"], whole["unet"])
}
