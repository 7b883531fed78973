package mapping

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/spec"
)

// header is a testdata file (written by testdata/generate.py): a LoRA
// file's header plus, per tensor, what the planner must make of it.
type header struct {
	Format   string            `json:"format"`
	Metadata map[string]string `json:"metadata"`
	Tensors  []struct {
		Key       string   `json:"key"`
		DType     string   `json:"dtype"`
		Shape     []int64  `json:"shape"`
		Component string   `json:"component"`
		Target    string   `json:"target"`
		Param     string   `json:"param"`
		Value     *float64 `json:"value"`
		Scale     *float64 `json:"scale"`
	} `json:"tensors"`
}

func loadHeader(t *testing.T, name string) header {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var h header
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

// file turns a header into a File; values: pass alpha values as a host may.
func (h header) file(id string, values bool) File {
	f := File{ID: id, Metadata: h.Metadata}
	for _, x := range h.Tensors {
		t := Tensor{Key: x.Key, DType: x.DType, Shape: x.Shape}
		if values {
			t.Value = x.Value
		}
		f.Tensors = append(f.Tensors, t)
	}
	return f
}

// models are the specs' SD 1.5 U-Net and CLIP text encoder, built without
// tensors, with their summaries as a host makes them.
var models = sync.OnceValues(func() (map[string]*core.Chain, error) {
	out := map[string]*core.Chain{}
	for comp, path := range map[string]string{"unet": "sd15_unet.yaml", "text_encoder": "clip_text.yaml"} {
		s, err := spec.Load(filepath.Join("..", "..", "..", "specs", path))
		if err != nil {
			return nil, err
		}
		m, err := s.Build(nil)
		if err != nil {
			return nil, err
		}
		out[comp] = m
	}
	return out, nil
})

func model(t *testing.T, comp string) *core.Chain {
	t.Helper()
	m, err := models()
	if err != nil {
		t.Fatal(err)
	}
	return m[comp]
}

// summary lists a model's weighted layers (paths, types, parameter shapes)
// under prefix, from core.StateDict.
func summary(m *core.Chain, prefix string) []Layer {
	var out []Layer
	index := map[string]int{}
	for _, e := range core.StateDict(m) {
		path := e.Key[:strings.LastIndexByte(e.Key, '.')]
		i, ok := index[path]
		if !ok {
			seg := path[strings.LastIndexByte(path, '.')+1:]
			typ := numbered.ReplaceAllString(seg, "")
			i = len(out)
			index[path] = i
			out = append(out, Layer{Path: prefix + path, Type: typ, Params: map[string][]int64{}})
		}
		out[i].Params[e.Name] = e.Shape
	}
	return out
}

// checkBranches builds each branch (LoRA, WeightDelta, LoHa, LoKr) with
// core's registry, checks it fits its target and that every binding's
// shape (after reshape) is the branch parameter's: what the host checks
// before applying a plan.
func checkBranches(t *testing.T, m *core.Chain, prefix string, ps []Patch, shapes map[string][]int64) {
	t.Helper()
	for _, p := range ps {
		target, err := m.BaseLayer(strings.TrimPrefix(p.Target, prefix))
		if err != nil {
			t.Fatalf("%s: %v", p.Target, err)
		}
		built, err := core.BuildLayer(p.Branch)
		if err != nil {
			t.Fatalf("%s: branch %v: %v", p.Target, p.Branch, err)
		}
		if err := core.CheckLoraFit(target, built); err != nil {
			t.Errorf("%s: %v", p.Target, err)
		}
		params := map[string][]int64{}
		for _, e := range core.StateDict(built) {
			params[e.Key] = e.Shape
		}
		if len(p.Bindings) != len(params) {
			t.Errorf("%s: %d bindings for %d parameters", p.Target, len(p.Bindings), len(params))
		}
		for _, b := range p.Bindings {
			got := shapes[b.Key]
			if b.Reshape != nil {
				if numel(b.Reshape) != numel(got) {
					t.Errorf("%s: reshape %v of %v", b.Key, b.Reshape, got)
				}
				got = b.Reshape
			}
			if !slices.Equal(got, params[b.Param]) {
				t.Errorf("%s: %s gives %v, the branch's %s is %v", p.Target, b.Key, got, b.Param, params[b.Param])
			}
		}
	}
}

// TestFormats plans each real-layout header onto the U-Net, the text
// encoder, and a model holding both, and checks every key against the
// generator's expectations.
func TestFormats(t *testing.T) {
	cases := []struct {
		file   string
		values bool // the host passes alpha values
	}{
		{"kohya_sd15", true},
		{"kohya_sd15", false}, // alphas from ss_network_alpha / ss_network_args
		{"peft_sd15", false},
		{"diffusers_sd15", false},
		{"attnprocs_sd15", false},
		{"refiners_sd15", false},
		{"refiners_legacy_sd15", false},
		{"loha_sd15", true},
		{"lokr_sd15", true},
		{"diff_sd15", false},
	}
	combined := append(summary(model(t, "unet"), "unet."), summary(model(t, "text_encoder"), "clip.")...)
	for _, c := range cases {
		h := loadHeader(t, c.file)
		shapes := map[string][]int64{}
		for _, x := range h.Tensors {
			shapes[x.Key] = x.Shape
		}
		for _, v := range []struct {
			name, component string
			model           []Layer
			prefixes        map[string]string // component -> where it is in the model
		}{
			{"unet", "", summary(model(t, "unet"), ""), map[string]string{"unet": ""}},
			{"text_encoder", "", summary(model(t, "text_encoder"), ""), map[string]string{"text_encoder": ""}},
			{"combined", "", combined, map[string]string{"unet": "unet.", "text_encoder": "clip."}},
			{"combined-unet", "unet", combined, map[string]string{"unet": "unet."}},
		} {
			t.Run(fmt.Sprintf("%s/values=%v/%s", c.file, c.values, v.name), func(t *testing.T) {
				// Every planned file key must be matched, others skipped.
				var want, skip []string
				targets := map[string]bool{}
				for _, x := range h.Tensors {
					if _, ok := v.prefixes[x.Component]; ok {
						want = append(want, x.Key)
						targets[v.prefixes[x.Component]+x.Target] = true
					} else {
						skip = append(skip, x.Key)
					}
				}
				if len(want) == 0 {
					return
				}
				ps, r, err := Plan(v.model, []File{h.file("f", c.values)}, Options{Component: v.component, Strict: true})
				if err != nil {
					t.Fatalf("%v\nwarnings: %v", err, r.Warnings)
				}
				if r.Format != h.Format {
					t.Errorf("format %q, want %q", r.Format, h.Format)
				}
				if !sameSet(r.Matched, want) || !sameSet(r.Skipped, skip) || len(r.Unmatched)+len(r.ShapeMismatched) > 0 {
					t.Errorf("matched %d (want %d), skipped %d (want %d), unmatched %v, mis-shaped %v",
						len(r.Matched), len(want), len(r.Skipped), len(skip), r.Unmatched, r.ShapeMismatched)
				}
				if r.Covered != len(targets) || len(ps) != len(targets) {
					t.Errorf("covered %d, %d patches, want %d", r.Covered, len(ps), len(targets))
				}
				n := 0
				for _, p := range v.prefixes {
					for _, l := range v.model {
						if strings.HasPrefix(l.Path, p) && (l.Type == "Linear" || l.Type == "Conv2d") {
							n++
						}
					}
				}
				if r.Layers != n {
					t.Errorf("layers %d, want %d", r.Layers, n)
				}
				bound := map[string]Binding{}
				patchOf := map[string]Patch{}
				for _, p := range ps {
					for _, b := range p.Bindings {
						bound[b.Key] = b
						patchOf[b.Key] = p
					}
					if p.Branch["name"] != "lora" {
						t.Errorf("%s: branch name %v", p.Target, p.Branch["name"])
					}
				}
				for _, x := range h.Tensors {
					prefix, ok := v.prefixes[x.Component]
					if !ok {
						continue
					}
					target := prefix + x.Target
					if x.Param == "" { // alpha: read, not bound
						if _, b := bound[x.Key]; b {
							t.Errorf("%s is bound", x.Key)
						}
						if x.Scale != nil {
							got := r.EffectiveScales[target]
							want := *x.Scale
							if !c.values && h.Format != "kohya" {
								want = 1 // no value, no metadata: alpha = rank
							}
							if math.Abs(got-want) > 1e-12 {
								t.Errorf("%s: effective scale %v, want %v", target, got, want)
							}
						}
						continue
					}
					b, ok := bound[x.Key]
					if !ok {
						t.Errorf("%s: not bound", x.Key)
						continue
					}
					if p := patchOf[x.Key]; p.Target != target || b.Param != x.Param {
						t.Errorf("%s: bound to %s %s, want %s %s", x.Key, p.Target, b.Param, target, x.Param)
					}
				}
				for _, comp := range []string{"unet", "text_encoder"} {
					if p, ok := v.prefixes[comp]; ok {
						var sub []Patch
						for _, q := range ps {
							if strings.HasPrefix(q.Target, p) {
								sub = append(sub, q)
							}
						}
						checkBranches(t, model(t, comp), p, sub, shapes)
					}
				}
			})
		}
	}
}

func sameSet(a, b []string) bool {
	return len(a) == len(b) && len(a) == len(union(a, b))
}

func union(a, b []string) map[string]bool {
	m := map[string]bool{}
	for _, x := range a {
		m[x] = true
	}
	for _, x := range b {
		m[x] = true
	}
	return m
}

// pick keeps the header tensors whose key contains one of the substrings.
func (h header) pick(subs ...string) header {
	out := h
	out.Tensors = nil
	for _, x := range h.Tensors {
		for _, s := range subs {
			if strings.Contains(x.Key, s) {
				out.Tensors = append(out.Tensors, x)
				break
			}
		}
	}
	return out
}

func f64(x float64) *float64 { return &x }

const (
	q1    = "DownBlocks.Chain_2.CLIPLCrossAttention.Chain_2.CrossAttentionBlock.Residual_1.SelfAttention.Distribute.Linear_1"
	k2    = "DownBlocks.Chain_2.CLIPLCrossAttention.Chain_2.CrossAttentionBlock.Residual_2.Attention.Distribute.Linear_2"
	down1 = "DownBlocks.Chain_4.Downsample.Conv2d"
	projI = "DownBlocks.Chain_2.CLIPLCrossAttention.Chain_1.Conv2d"
	q1Up  = "UpBlocks.Chain_4.CLIPLCrossAttention.Chain_2.CrossAttentionBlock.Residual_1.SelfAttention.Distribute.Linear_1"
)

// kohyaModules are a few kohya modules: two attention projections, a
// strided 3x3 convolution (LoCon) and a 1x1 convolution.
var kohyaModules = []string{
	"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.",
	"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.",
	"lora_unet_down_blocks_0_downsamplers_0_conv.",
	"lora_unet_down_blocks_0_attentions_0_proj_in.",
	"lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.",
}

func TestScalesAndGeometry(t *testing.T) {
	unet := summary(model(t, "unet"), "")
	kohya := loadHeader(t, "kohya_sd15").pick(kohyaModules...)
	cases := []struct {
		name   string
		o      Options
		values bool
		meta   map[string]string // replaces the metadata when set
		scales map[string]float64
		// branch scale and up-binding scale per target
		branch, up map[string]float64
		warn       string
	}{
		{name: "alpha values from the host", values: true,
			scales: map[string]float64{q1: 0.25, k2: 0.25, down1: 1, projI: 0.25, q1Up: 0.25},
			branch: map[string]float64{q1: 1, down1: 1}, up: map[string]float64{q1: 0.25, down1: 1}},
		{name: "alpha from kohya metadata",
			scales: map[string]float64{q1: 0.25, k2: 0.25, down1: 1, projI: 0.25, q1Up: 0.25}},
		{name: "alpha unknown", meta: map[string]string{},
			scales: map[string]float64{q1: 1, down1: 1}, warn: "assuming alpha = rank"},
		{name: "resized file: metadata dim differs", meta: map[string]string{"ss_network_dim": "8", "ss_network_alpha": "4"},
			scales: map[string]float64{q1: 1}, warn: "assuming alpha = rank"},
		{name: "user scale", values: true, o: Options{Scale: 0.8},
			scales: map[string]float64{q1: 0.2, down1: 0.8},
			branch: map[string]float64{q1: 0.8, down1: 0.8}, up: map[string]float64{q1: 0.25, down1: 1}},
		{name: "block scales, longest prefix wins, 0 leaves out", values: true,
			o:      Options{Scale: 2, BlockScales: map[string]float64{"DownBlocks": 0.5, "DownBlocks.Chain_4": 3, "DownBlocks.Chain_2.CLIPLCrossAttention.Chain_1": 0}},
			scales: map[string]float64{q1: 0.25, k2: 0.25, down1: 6, q1Up: 0.5},
			branch: map[string]float64{q1: 1, down1: 6, q1Up: 2}, warn: "block scale 0 leaves " + projI + " out"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := kohya
			if c.meta != nil {
				h.Metadata = c.meta
			}
			ps, r, err := Plan(unet, []File{h.file("k", c.values)}, c.o)
			if err != nil {
				t.Fatal(err)
			}
			for target, want := range c.scales {
				if got, ok := r.EffectiveScales[target]; !ok || math.Abs(got-want) > 1e-12 {
					t.Errorf("%s: effective scale %v, want %v", target, got, want)
				}
			}
			byTarget := map[string]Patch{}
			for _, p := range ps {
				byTarget[p.Target] = p
			}
			if _, ok := c.o.BlockScales["DownBlocks.Chain_2.CLIPLCrossAttention.Chain_1"]; ok {
				if _, in := byTarget[projI]; in || r.Covered != 4 || len(ps) != 4 {
					t.Errorf("a block scale of 0 still adapts %s (covered %d)", projI, r.Covered)
				}
			}
			for target, want := range c.branch {
				if got := byTarget[target].Branch["scale"]; got != want {
					t.Errorf("%s: branch scale %v, want %v", target, got, want)
				}
			}
			for target, want := range c.up {
				if got := byTarget[target].Bindings[1].Scale; got != want {
					t.Errorf("%s: up binding scale %v, want %v", target, got, want)
				}
			}
			if c.warn != "" && !strings.Contains(strings.Join(r.Warnings, "\n"), c.warn) {
				t.Errorf("warnings %q lack %q", r.Warnings, c.warn)
			}
			// Geometry: the strided 3x3 LoCon and the 1x1 convolution.
			if p, ok := byTarget[down1]; ok {
				b := p.Branch
				if b["type"] != "Conv2dLora" || !slices.Equal(b["kernel_size"].([]int64), []int64{3, 1}) ||
					!slices.Equal(b["stride"].([]int64), []int64{2, 1}) || !slices.Equal(b["padding"].([]int64), []int64{1, 0}) || b["rank"] != int64(2) {
					t.Errorf("%s: branch %v", down1, b)
				}
			}
			if p, ok := byTarget[projI]; ok {
				b := p.Branch
				if !slices.Equal(b["kernel_size"].([]int64), []int64{1, 1}) || !slices.Equal(b["padding"].([]int64), []int64{0, 0}) {
					t.Errorf("%s: branch %v", projI, b)
				}
			}
		})
	}
}

func TestMismatchesAndErrors(t *testing.T) {
	unet := summary(model(t, "unet"), "")
	kohya := loadHeader(t, "kohya_sd15").pick(kohyaModules...)
	peft := loadHeader(t, "peft_sd15")
	te := loadHeader(t, "kohya_sd15").pick("lora_te_")
	// SD 2's text embedding is 1024 wide: its attn2.to_k does not fit SD 1.5.
	sd2 := kohya
	sd2.Tensors = slices.Clone(kohya.Tensors)
	for i, x := range sd2.Tensors {
		if strings.Contains(x.Key, "attn2_to_k.lora_down") {
			sd2.Tensors[i].Shape = []int64{4, 1024}
		}
	}
	extra := kohya
	extra.Tensors = append(slices.Clone(kohya.Tensors), kohya.Tensors[0])
	extra.Tensors[len(extra.Tensors)-1].Key = "lora_unet_not_a_layer.lora_down.weight"
	extra.Tensors = append(extra.Tensors, kohya.Tensors[0])
	extra.Tensors[len(extra.Tensors)-1].Key = "something_else_entirely"
	nothing := kohya.pick("lora_unet_down_blocks_0_attentions_0_proj_in.")
	for i := range nothing.Tensors {
		nothing.Tensors[i].Key = strings.Replace(nothing.Tensors[i].Key, "proj_in", "proj_sideways", 1)
	}
	locon := kohya.pick("proj_in.")
	locon.Tensors = append(slices.Clone(locon.Tensors), locon.Tensors[1])
	locon.Tensors[len(locon.Tensors)-1].Key = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_mid.weight"
	ldm := kohya.pick("proj_in.")
	for i := range ldm.Tensors {
		ldm.Tensors[i].Key = strings.Replace(ldm.Tensors[i].Key, "down_blocks_0_attentions_0", "input_blocks_1_1", 1)
	}

	cases := []struct {
		name       string
		files      []File
		o          Options
		err        string // "" = no error
		unmatched  []string
		mismatched []string
		warn       string
		summary    []string // lines the report's summary must have
	}{
		{name: "shape mismatch is reported", files: []File{sd2.file("f", true)},
			mismatched: []string{"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha",
				"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight",
				"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight"}},
		{name: "shape mismatch fails strict", files: []File{sd2.file("f", true)}, o: Options{Strict: true},
			err: "strict: 0 unmatched and 3 mis-shaped keys"},
		{name: "unmatched keys are reported", files: []File{extra.file("f", true)},
			unmatched: []string{"lora_unet_not_a_layer.lora_down.weight", "something_else_entirely"},
			summary: []string{"unet: 15 keys matched (5 layers adapted), 1 key not used",
				"unet: 1 module (1 key): name no layer of the sd15 unet, e.g. lora_unet_not_a_layer",
				"1 `something_else_entirely` key: not a kind of key this plugin version knows, e.g. something_else_entirely"}},
		{name: "unmatched keys fail strict", files: []File{extra.file("f", true)}, o: Options{Strict: true},
			err: "strict: 2 unmatched"},
		{name: "a file matching nothing fails", files: []File{nothing.file("f", true)},
			err: "f: nothing in the file applies to this model (layout kohya, 3 keys): unet: 3 keys not used; " +
				"unet: 1 module (3 keys): name no layer of the sd15 unet, e.g. lora_unet_down_blocks_0_attentions_0_proj_sideways",
			unmatched: []string{"lora_unet_down_blocks_0_attentions_0_proj_sideways.alpha",
				"lora_unet_down_blocks_0_attentions_0_proj_sideways.lora_down.weight",
				"lora_unet_down_blocks_0_attentions_0_proj_sideways.lora_up.weight"}},
		{name: "one file of two matching nothing fails", files: []File{kohya.file("a", true), nothing.file("b", true)},
			err: "b: nothing in the file applies to this model"},
		{name: "a text encoder LoRA on a U-Net fails", files: []File{te.file("f", true)},
			err: "f: nothing in the file applies to this model (layout kohya, 216 keys): text_encoder: 216 keys skipped (the model has no sd15 text_encoder)"},
		{name: "unknown layout fails", files: []File{{ID: "f", Tensors: []Tensor{{Key: "weight", Shape: []int64{3}}}}},
			err:       "f: no known LoRA layout: keys of no component: 1 key not used; 1 `weight` key: not a kind of key this plugin version knows, e.g. weight",
			unmatched: []string{"weight"}},
		{name: "component not in the model", files: []File{kohya.file("f", true)}, o: Options{Component: "text_encoder"},
			err: "f: nothing in the file applies to this model (layout kohya, 15 keys): unet: 15 keys skipped (the plan is for the text_encoder only)"},
		{name: "bad component", files: []File{kohya.file("f", true)}, o: Options{Component: "vae"}, err: `component "vae"`},
		{name: "LoCon Tucker modules are refused whole", files: []File{locon.file("f", true)},
			err: "unet: 1 `lora_mid.weight` key: LoCon Tucker decomposition (lora_mid) is not supported by this plugin version " +
				"(left out with the other 3 keys of their modules), e.g. lora_unet_down_blocks_0_attentions_0_proj_in.lora_mid.weight",
			unmatched: []string{"lora_unet_down_blocks_0_attentions_0_proj_in.alpha",
				"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
				"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
				"lora_unet_down_blocks_0_attentions_0_proj_in.lora_mid.weight"}},
		{name: "LDM names are reported", files: []File{ldm.file("f", true)},
			err: "unet: 1 module (3 keys): original Stable Diffusion (LDM) block names are not supported by this plugin version, e.g. lora_unet_input_blocks_1_1_proj_in"},
		{name: "several files, one branch each", files: []File{kohya.file("k", true), peft.file("p", false)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, r, err := Plan(unet, c.files, c.o)
			switch {
			case c.err == "" && err != nil:
				t.Fatalf("error %v", err)
			case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
				t.Fatalf("error %v, want %q", err, c.err)
			}
			if c.unmatched != nil && !sameSet(r.Unmatched, c.unmatched) {
				t.Errorf("unmatched %v, want %v", r.Unmatched, c.unmatched)
			}
			if c.mismatched != nil && !sameSet(r.ShapeMismatched, c.mismatched) {
				t.Errorf("mis-shaped %v, want %v", r.ShapeMismatched, c.mismatched)
			}
			if c.warn != "" && !strings.Contains(strings.Join(r.Warnings, "\n"), c.warn) {
				t.Errorf("warnings %q lack %q", r.Warnings, c.warn)
			}
			for _, line := range c.summary {
				if !slices.Contains(r.Summary(), line) {
					t.Errorf("summary lacks %q:\n%s", line, strings.Join(r.Summary(), "\n"))
				}
			}
			if err != nil && strings.Contains(err.Error(), "matches nothing") {
				t.Errorf("the error does not say what the file holds: %v", err)
			}
		})
	}
}

func TestSeveralFiles(t *testing.T) {
	unet := summary(model(t, "unet"), "")
	kohya := loadHeader(t, "kohya_sd15").pick(kohyaModules...)
	peft := loadHeader(t, "peft_sd15").pick("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.")
	ps, r, err := Plan(unet, []File{kohya.file("k", true), peft.file("p", false)}, Options{Name: "style"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Format != "kohya+peft" {
		t.Errorf("format %q", r.Format)
	}
	var names []string
	for _, p := range ps {
		if p.Target == q1 {
			names = append(names, p.Branch["name"].(string))
		}
	}
	if !slices.Equal(names, []string{"style_k", "style_p"}) {
		t.Errorf("branches on %s: %v", q1, names)
	}
	if r.EffectiveScales["style_k:"+q1] != 0.25 || r.EffectiveScales["style_p:"+q1] != 1 || r.Covered != 5 {
		t.Errorf("scales %v, covered %d", r.EffectiveScales, r.Covered)
	}
	if !slices.Contains(r.Matched, "p:unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight") {
		t.Errorf("matched keys are not qualified by file: %v", r.Matched)
	}
}

func TestDiffusersAdapterMetadata(t *testing.T) {
	unet := summary(model(t, "unet"), "")
	h := loadHeader(t, "peft_sd15").pick("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.")
	for _, c := range []struct {
		meta string
		q, k float64
	}{
		{`{"unet.r": 4, "unet.lora_alpha": 8}`, 2, 2},
		{`{"unet.r": 4, "unet.lora_alpha": 8, "unet.alpha_pattern": {"attn2.to_k": 2}}`, 2, 0.5},
		{`{"unet.r": 4, "unet.lora_alpha": 8, "unet.use_rslora": true}`, 4, 4},
		{`{"text_encoder.r": 4, "text_encoder.lora_alpha": 8}`, 1, 1},
	} {
		h.Metadata = map[string]string{"lora_adapter_metadata": c.meta}
		_, r, err := Plan(unet, []File{h.file("f", false)}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if r.EffectiveScales[q1] != c.q || r.EffectiveScales[k2] != c.k {
			t.Errorf("%s: scales %v, want %v, %v", c.meta, r.EffectiveScales, c.q, c.k)
		}
	}
}

// TestReshapes: a 1x1 convolution's LoRA written as matrices, and a Linear's
// written as 1x1 convolutions.
func TestReshapes(t *testing.T) {
	unet := summary(model(t, "unet"), "")
	f := File{ID: "f", Tensors: []Tensor{
		{Key: "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", Shape: []int64{8, 320}},
		{Key: "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", Shape: []int64{320, 8}},
		{Key: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight", Shape: []int64{8, 320, 1, 1}},
		{Key: "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight", Shape: []int64{320, 8, 1, 1}},
	}}
	ps, _, err := Plan(unet, []File{f}, Options{Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][][]int64{
		projI: {{8, 320, 1, 1}, {320, 8, 1, 1}},
		q1:    {{8, 320}, {320, 8}},
	}
	shapes := map[string][]int64{}
	for _, x := range f.Tensors {
		shapes[x.Key] = x.Shape
	}
	for _, p := range ps {
		if w := want[p.Target]; !slices.Equal(p.Bindings[0].Reshape, w[0]) || !slices.Equal(p.Bindings[1].Reshape, w[1]) {
			t.Errorf("%s: reshapes %v, %v", p.Target, p.Bindings[0].Reshape, p.Bindings[1].Reshape)
		}
	}
	checkBranches(t, model(t, "unet"), "", ps, shapes)
}

// TestRefinersLayoutOnAnyModel: Refiners' export layout resolves by path,
// so it needs no name table: here a small model no table knows.
func TestRefinersLayoutOnAnyModel(t *testing.T) {
	m := []Layer{
		{Path: "Chain.Linear_1", Type: "Linear", Params: map[string][]int64{"weight": {8, 4}, "bias": {8}}},
		{Path: "Chain.Linear_2", Type: "Linear", Params: map[string][]int64{"weight": {8, 8}}},
		{Path: "Chain.Linear_3", Type: "Linear", Params: map[string][]int64{"weight": {2, 8}}},
	}
	f := File{ID: "f", Tensors: []Tensor{ // layers 1 and 3 adapted: n = 1, 2
		{Key: "MyModel.Chain.1.Linear.down.weight", Shape: []int64{2, 4}},
		{Key: "MyModel.Chain.1.Linear.up.weight", Shape: []int64{8, 2}},
		{Key: "MyModel.Chain.2.Linear.down.weight", Shape: []int64{2, 8}},
		{Key: "MyModel.Chain.2.Linear.up.weight", Shape: []int64{2, 2}},
	}}
	ps, r, err := Plan(m, []File{f}, Options{Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Target != "Chain.Linear_1" || ps[1].Target != "Chain.Linear_3" || r.Layers != 3 || r.Format != "refiners" {
		t.Errorf("patches %v, report %+v", ps, r)
	}
	// Community names need a table.
	f = File{ID: "g", Tensors: []Tensor{{Key: "lora_unet_conv_in.lora_down.weight", Shape: []int64{2, 4, 3, 3}},
		{Key: "lora_unet_conv_in.lora_up.weight", Shape: []int64{8, 2, 1, 1}}}}
	if _, r, err := Plan(m, []File{f}, Options{}); err == nil || !strings.Contains(strings.Join(r.Warnings, ""), "not a known architecture") {
		t.Errorf("error %v, warnings %v", err, r.Warnings)
	}
}

// withMagnitudes adds a DoRA magnitude to every LoRA module of h, in the
// shape the tools write: kohya/LyCORIS dora_scale [out, 1(, 1, 1)] (axis
// "output") or [1, in(, 1, 1)] ("input"); PEFT lora_magnitude_vector
// [out] for a Linear, [1, out, 1, 1] for a Conv2d (PEFT 0.10).
func (h header) withMagnitudes(axis string) header {
	out := h
	out.Tensors = nil
	for _, x := range h.Tensors {
		out.Tensors = append(out.Tensors, x)
		y := x
		y.Param, y.Value, y.Scale = "magnitude", nil, nil
		conv := len(x.Shape) == 4
		switch {
		case strings.HasSuffix(x.Key, ".lora_up.weight") && axis == "output":
			y.Key, y.Shape = strings.TrimSuffix(x.Key, "lora_up.weight")+"dora_scale", []int64{x.Shape[0], 1}
		case strings.HasSuffix(x.Key, ".lora_down.weight") && axis == "input":
			y.Key, y.Shape = strings.TrimSuffix(x.Key, "lora_down.weight")+"dora_scale", []int64{1, x.Shape[1]}
		case strings.HasSuffix(x.Key, ".lora_B.weight"):
			y.Key, y.Shape = strings.TrimSuffix(x.Key, "lora_B.weight")+"lora_magnitude_vector", []int64{x.Shape[0]}
			if conv {
				y.Shape = []int64{1, x.Shape[0], 1, 1}
			}
			conv = false
		default:
			continue
		}
		if conv {
			y.Shape = append(y.Shape, 1, 1)
		}
		out.Tensors = append(out.Tensors, y)
	}
	return out
}

// TestDora plans DoRA files in both layouts: kohya/LyCORIS dora_scale per
// output and per input channel (LyCORIS's conventions: the user scale on
// the rescaling factor, float32's eps) and PEFT's lora_magnitude_vector
// (the scale inside the norm), on Linear, 1x1 and strided 3x3 Conv2d
// targets; every key is bound, and the branches build and fit.
func TestDora(t *testing.T) {
	unet := summary(model(t, "unet"), "")
	kohya := loadHeader(t, "kohya_sd15").pick(kohyaModules...)
	peft := loadHeader(t, "peft_sd15").pick("unet.down_blocks.0.attentions.0.proj_in.", "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.",
		"unet.down_blocks.0.resnets.0.conv1.")
	cases := []struct {
		name, format, axis, mode string
		h                        header
		eps                      float64
	}{
		{"kohya, per output channel", "kohya-dora", "output", "magnitude", kohya.withMagnitudes("output"), float32Eps},
		{"kohya, per input channel", "kohya-dora", "input", "magnitude", kohya.withMagnitudes("input"), float32Eps},
		{"peft", "peft-dora", "output", "", peft.withMagnitudes("output"), 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ps, r, err := Plan(unet, []File{c.h.file("f", true)}, Options{Scale: 0.8, Strict: true})
			if err != nil {
				t.Fatal(err)
			}
			if r.Format != c.format || len(r.Matched) != len(c.h.Tensors) || r.Covered != len(ps) || len(ps) != len(c.h.Tensors)/map[bool]int{true: 4, false: 3}[c.format == "kohya-dora"] {
				t.Errorf("format %q, %d of %d keys matched, %d patches", r.Format, len(r.Matched), len(c.h.Tensors), len(ps))
			}
			shapes := map[string][]int64{}
			for _, x := range c.h.Tensors {
				shapes[x.Key] = x.Shape
			}
			for _, p := range ps {
				b := p.Branch
				if p.Kind != "dora" || b["type"] != "DoRA" || b["axis"] != c.axis || b["scale"] != 0.8 {
					t.Errorf("%s: kind %s, branch %v", p.Target, p.Kind, b)
				}
				if mode, _ := b["scale_mode"].(string); mode != c.mode {
					t.Errorf("%s: scale_mode %q, want %q", p.Target, mode, c.mode)
				}
				if eps, _ := b["eps"].(float64); eps != c.eps {
					t.Errorf("%s: eps %v, want %v", p.Target, eps, c.eps)
				}
				var mag Binding
				for _, x := range p.Bindings {
					if x.Param == "magnitude" {
						mag = x
					}
				}
				if mag.Key == "" || (mag.Reshape != nil) != (len(shapes[mag.Key]) != 1) {
					t.Errorf("%s: magnitude binding %+v", p.Target, mag)
				}
			}
			checkBranches(t, model(t, "unet"), "", ps, shapes)
			// alpha/rank on up, as for LoRAs: 0.25 for kohya's attention.
			for _, p := range ps {
				if p.Target == q1 {
					want := 0.25
					if c.format == "peft-dora" {
						want = 1 // no alpha in the file: alpha = rank
					}
					if p.Bindings[1].Param != "up" || p.Bindings[1].Scale != want || r.EffectiveScales[q1] != 0.8*want {
						t.Errorf("%s: up binding %+v, effective scale %v", q1, p.Bindings[1], r.EffectiveScales[q1])
					}
				}
			}
		})
	}
}

// TestDoraFileOnEachComponent: the file, a combined kohya DoRA
// (U-Net and text encoder modules, each with a dora_scale), planned onto
// the text encoder alone and onto the U-Net alone: each plans its own part
// and the report says the other part was skipped and why.
func TestDoraFileOnEachComponent(t *testing.T) {
	h := loadHeader(t, "kohya_sd15").withMagnitudes("output")
	for _, c := range []struct{ comp, other string }{{"text_encoder", "unet"}, {"unet", "text_encoder"}} {
		_, r, err := Plan(summary(model(t, c.comp), ""), []File{h.file("f", true)}, Options{Strict: true})
		if err != nil {
			t.Fatalf("%s: %v", c.comp, err)
		}
		var mine, skipped int
		for _, x := range h.Tensors {
			if x.Component == c.comp {
				mine++
			} else {
				skipped++
			}
		}
		want := []string{
			fmt.Sprintf("%s: %d keys matched (%d layers adapted)", c.comp, mine, r.Covered),
			fmt.Sprintf("%s: %d keys skipped (the model has no sd15 %s)", c.other, skipped, c.other),
		}
		if got := r.Summary(); !slices.Equal(got, want) || r.Format != "kohya-dora" || len(r.Matched) != mine {
			t.Errorf("%s: format %s, summary %q, want %q", c.comp, r.Format, got, want)
		}
	}
}

// TestKeysNotUnderstood: keys of a kind the plugin does not know, or does
// not support, are named with their count and an example, per component;
// the rest of the file is still planned, and a file with nothing usable
// fails with what it holds.
func TestKeysNotUnderstood(t *testing.T) {
	unet := summary(model(t, "unet"), "")
	kohya := loadHeader(t, "kohya_sd15").pick(kohyaModules...)
	// An unknown tensor next to each module's LoRA, and a text encoder
	// module (skipped on a U-Net).
	weird := kohya
	weird.Tensors = nil
	for _, x := range kohya.Tensors {
		weird.Tensors = append(weird.Tensors, x)
		if strings.HasSuffix(x.Key, ".alpha") {
			x.Key = strings.TrimSuffix(x.Key, "alpha") + "weird_thing"
			weird.Tensors = append(weird.Tensors, x)
		}
	}
	weird.Tensors = append(weird.Tensors, loadHeader(t, "kohya_sd15").pick("lora_te_text_model_encoder_layers_0_self_attn_q_proj.").Tensors...)
	loha := loadHeader(t, "loha_sd15").pick("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.")
	for _, x := range loha.Tensors {
		if strings.HasSuffix(x.Key, ".hada_w1_a") {
			x.Key, x.Shape = strings.TrimSuffix(x.Key, "hada_w1_a")+"dora_scale", []int64{x.Shape[0], 1}
			loha.Tensors = append(loha.Tensors, x)
			break
		}
	}
	only := File{ID: "f", Tensors: []Tensor{{Key: "model.diffusion_model.input_blocks.1.1.norm.weight", Shape: []int64{320}},
		{Key: "model.diffusion_model.input_blocks.2.1.norm.weight", Shape: []int64{320}}, {Key: "model.diffusion_model.out.2.bias", Shape: []int64{4}}}}

	many := File{ID: "f"}
	for i := range 10 {
		many.Tensors = append(many.Tensors, Tensor{Key: fmt.Sprintf("model.block.layer%c.weight", 'a'+i), Shape: []int64{4}})
	}
	cases := []struct {
		name    string
		f       File
		o       Options
		err     string
		summary []string
	}{
		{name: "unknown kind next to LoRAs", f: weird.file("f", true), summary: []string{
			"unet: 15 keys matched (5 layers adapted), 5 keys not used",
			"text_encoder: 3 keys skipped (the model has no sd15 text_encoder)",
			"unet: 5 `weird_thing` keys: not a kind of key this plugin version knows, e.g. lora_unet_down_blocks_0_attentions_0_proj_in.weird_thing",
		}},
		{name: "unknown kind, strict", f: weird.file("f", true), o: Options{Strict: true},
			err: "strict: 5 unmatched and 0 mis-shaped keys: unet: 5 `weird_thing` keys: not a kind of key this plugin version knows"},
		{name: "DoRA on a LoHa", f: loha.file("f", true),
			err: "f: nothing in the file applies to this model (layout kohya, 6 keys): unet: 6 keys not used; " +
				"unet: 1 `dora_scale` key: DoRA on LoHa modules is not supported by this plugin version (left out with the other 5 keys of their modules), " +
				"e.g. lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.dora_scale"},
		{name: "a checkpoint, not a LoRA", f: only,
			err: "f: no known LoRA layout: keys of no component: 3 keys not used; 2 `norm.weight` keys: not a kind of key this plugin version knows, " +
				"e.g. model.diffusion_model.input_blocks.1.1.norm.weight; 1 `bias` key: not a kind of key this plugin version knows, e.g. model.diffusion_model.out.2.bias"},
		{name: "many kinds are cut short", f: many,
			err: "1 `layerh.weight` key: not a kind of key this plugin version knows, e.g. model.block.layerh.weight; 2 more groups of keys not used (2 keys; see the unmatched keys)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, r, err := Plan(unet, []File{c.f}, c.o)
			switch {
			case c.err == "" && err != nil:
				t.Fatalf("error %v", err)
			case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
				t.Fatalf("error %v\nwant %q", err, c.err)
			}
			for _, line := range c.summary {
				if !slices.Contains(r.Summary(), line) {
					t.Errorf("summary lacks %q:\n%s", line, strings.Join(r.Summary(), "\n"))
				}
			}
			if c.summary != nil && !slices.Equal(r.Notes(), r.Summary()) {
				t.Errorf("notes %q: want the summary when keys are not used", r.Notes())
			}
		})
	}
}
