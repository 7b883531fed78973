package main

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/adapt"
	"github.com/refiners-go/refiners/conformance"
	"github.com/refiners-go/refiners/convert"
	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/hosts"
	_ "github.com/refiners-go/refiners/models/all"
	"github.com/refiners-go/refiners/sdk"
	"github.com/refiners-go/refiners/spec"
	"github.com/refiners-go/refiners/torchfile"
)

// caseFile is conformance's ControlNet case (generate_controlnet.py):
// the tiny U-Net and ControlNets "a" and "b" with Refiners' outputs.
const caseFile = "../../conformance/testdata/controlnet/sd15_controlnet_tiny.safetensors"

var bin string // the plugin, freshly built

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "refiners-controlnet-")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "controlnet")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		panic(string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type tinyCase struct {
	f           *weights.File
	unet        *core.Chain
	controlnets []struct {
		Name  string
		Scale float64
	}
}

// openCase opens the case file and builds the tiny U-Net (no weights).
func openCase(t *testing.T) *tinyCase {
	t.Helper()
	f, err := weights.Open(caseFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	meta := f.Metadata()
	c := &tinyCase{f: f}
	var set map[string]string
	if err := json.Unmarshal([]byte(meta["unet_overrides"]), &set); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(meta["controlnets"]), &c.controlnets); err != nil || len(c.controlnets) != 2 {
		t.Fatalf("case controlnets: %v %v", c.controlnets, err)
	}
	sp, err := spec.Load(filepath.Join("../..", meta["unet_spec"]))
	if err != nil {
		t.Fatal(err)
	}
	if c.unet, err = sp.Build(set); err != nil {
		t.Fatal(err)
	}
	return c
}

// example is the kit's request: the tiny U-Net's summary and the header
// of ControlNet "a" of the case file (keys under param.cn.a.).
func example(c *tinyCase) *sdk.PlanRequest {
	h := adapt.Header("controlnet", "", c.f)
	var kept []sdk.Tensor
	for _, x := range h.Tensors {
		if strings.HasPrefix(x.Key, "param.cn.a.") {
			kept = append(kept, x)
		}
	}
	return &sdk.PlanRequest{Params: `{"name": "a", "scale": 0.8, "num_heads": 2, "num_groups": 2}`,
		Model: adapt.Summarize(c.unet), Files: []sdk.File{{ID: "controlnet", Tensors: kept}}}
}

// TestExample checks the embedded kit example against the case file
// (UPDATE=1 rewrites it).
func TestExample(t *testing.T) {
	got, err := json.Marshal(example(openCase(t)))
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("UPDATE") == "1" {
		if err := os.WriteFile("testdata/example.json", got, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Skip("testdata/example.json rewritten; rebuild and run again")
	}
	if !bytes.Equal(bytes.TrimSpace(exampleJSON), got) {
		t.Error("testdata/example.json is not the tiny case's summary and header: run UPDATE=1 go test -run TestExample ./plugins/controlnet")
	}
}

// TestKit runs the plugin conformance kit (refinersd plugins check).
func TestKit(t *testing.T) {
	results, err := hosts.Check(context.Background(), bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if !r.Passed {
			t.Errorf("kit: %s: %s", r.Name, r.Detail)
		}
	}
	if len(results) < 9 {
		t.Errorf("only %d kit checks ran", len(results))
	}
}

// TestApplyThroughHost installs the plugin, plans ControlNets "a" (file
// keys without a prefix) and "b" (keys under "control_model_b.") for the
// tiny U-Net, applies them with adapt.Apply and checks the outputs against
// Refiners' (the error model, as conformance's TestControlnet), then
// ejects both and checks tree, weights and output bit for bit.
func TestApplyThroughHost(t *testing.T) {
	c := openCase(t)
	h, err := hosts.New(t.TempDir(), hosts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	e, err := h.Install(context.Background(), bin)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	prefixes := []string{"", "control_model_b."}
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if _, err := core.LoadState(s, c.unet, c.f, core.LoadOptions{Strict: true, Prefix: "param.unet."}); err != nil {
			return err
		}
		defer core.ReleaseParams(c.unet)
		// One file per ControlNet, as users have them.
		files := map[string]*weights.File{}
		for i, cn := range c.controlnets {
			ts := map[string]*tensor.Tensor{}
			for _, k := range c.f.Keys() {
				if rest, ok := strings.CutPrefix(k, "param.cn."+cn.Name+"."); ok {
					ts[prefixes[i]+rest] = c.f.Load(s, k)
				}
			}
			path := filepath.Join(dir, cn.Name+".safetensors")
			if err := weights.Save(s, path, ts, nil); err != nil {
				return err
			}
			wf, err := weights.Open(path)
			if err != nil {
				return err
			}
			defer wf.Close()
			files[cn.Name] = wf
		}
		call := core.Call{Contexts: core.Contexts{}}
		for _, k := range c.f.Keys() {
			if rest, ok := strings.CutPrefix(k, "context."); ok {
				ctx, key, _ := strings.Cut(rest, ".")
				if call.Contexts[ctx] == nil {
					call.Contexts[ctx] = map[string]any{}
				}
				call.Contexts[ctx][key] = c.f.Load(s, k)
			}
		}
		x := c.f.Load(s, "input.0")
		run := func() (*tensor.Tensor, error) {
			out, err := call.Forward(s, c.unet, x)
			if err != nil {
				return nil, err
			}
			return out[0], nil
		}
		tree0, params0 := c.unet.String(), stateBytes(s, c.unet)
		base, err := run()
		if err != nil {
			return err
		}
		var applied []*adapt.Applied
		var last *sdk.Plan
		for i, cn := range c.controlnets {
			params, _ := json.Marshal(map[string]any{"name": cn.Name, "scale": cn.Scale, "num_heads": 2, "num_groups": 2})
			plan, err := h.Plan(context.Background(), e.Name, &sdk.PlanRequest{Operation: "apply", Params: string(params),
				Model: adapt.Summarize(c.unet), Files: []sdk.File{adapt.Header(cn.Name, "", files[cn.Name])}})
			if err != nil {
				return err
			}
			if n := len(plan.Patches); n != 1 || len(plan.Patches[0].Bindings) != len(files[cn.Name].Keys()) {
				t.Errorf("%s: %d patches, want 1 binding every file key", cn.Name, n)
			}
			a, err := adapt.Apply(s, c.unet, plan, files)
			if err != nil {
				return err
			}
			applied, last = append(applied, a), plan
			got, err := run()
			if err != nil {
				return err
			}
			out := []string{"one", "two"}[i]
			ref, err := conformance.ReadReference(c.f, "output."+out)
			if err != nil {
				return err
			}
			d := ref.Check(s, got)
			t.Logf("with ControlNet %s (output.%s): %s", cn.Name, out, d)
			if !d.Pass {
				t.Errorf("with ControlNet %s: %s", cn.Name, d)
			}
		}
		// The same ControlNet twice is refused by the host, changing nothing.
		tree2 := c.unet.String()
		if _, err := adapt.Apply(s, c.unet, last, files); err == nil {
			t.Error("a second ControlNet of the same name was applied")
		}
		if c.unet.String() != tree2 {
			t.Error("a refused plan changed the model")
		}
		for i := len(applied) - 1; i >= 0; i-- {
			if err := applied[i].Eject(); err != nil {
				return err
			}
		}
		if got := c.unet.String(); got != tree0 {
			t.Errorf("tree after eject:\n%s\nwant:\n%s", got, tree0)
		}
		params1 := stateBytes(s, c.unet)
		if len(params1) != len(params0) {
			t.Errorf("%d parameters after eject, want %d", len(params1), len(params0))
		}
		for k, v := range params0 {
			if !bytes.Equal(params1[k], v) {
				t.Errorf("parameter %s changed after eject", k)
			}
		}
		again, err := run()
		if err != nil {
			return err
		}
		if d := conformance.ExactDiff(s, again, base); !d.Pass {
			t.Errorf("output after eject: %s", d)
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRefusals: bad input is InvalidArgument with a clear message.
func TestRefusals(t *testing.T) {
	c := openCase(t)
	ex := example(c)
	whole := adapt.Header("case", "", c.f)
	linear := []sdk.Layer{{Path: "Linear", Type: "Linear", Params: map[string][]int64{"weight": {8, 4}}}}
	var controlnetOnly []sdk.Layer // the ControlNet's own layers: not a U-Net
	for _, l := range ex.Model {
		if !strings.HasPrefix(l.Path, "UpBlocks") {
			controlnetOnly = append(controlnetOnly, l)
		}
	}
	other := ex.Files[0]
	other.Tensors = append([]sdk.Tensor(nil), other.Tensors...)
	for i, x := range other.Tensors {
		if x.Key == "param.cn.a.TimestepEncoder.RangeEncoder.Linear_1.weight" {
			other.Tensors[i].Shape = []int64{32, 8}
		}
	}
	for _, tc := range []struct {
		name   string
		op     string
		params string
		model  []sdk.Layer
		files  []sdk.File
		want   string
	}{
		{"unknown operation", "fuse", ``, ex.Model, ex.Files, `unknown operation "fuse"`},
		{"unknown parameter", "apply", `{"name": "a", "strength": 1}`, ex.Model, ex.Files, `unknown field "strength"`},
		{"bad name", "apply", `{"name": "A B"}`, ex.Model, ex.Files, "ControlNet name"},
		{"no model", "apply", `{}`, nil, ex.Files, "no model"},
		{"a Linear", "apply", `{}`, linear, ex.Files, "not an SD 1.5 U-Net: it has no layer UpBlocks"},
		{"no up blocks", "apply", `{}`, controlnetOnly, ex.Files, "not an SD 1.5 U-Net"},
		{"no file", "apply", `{}`, ex.Model, nil, "want one ControlNet file, got 0"},
		{"two ControlNets in a file", "apply", `{}`, ex.Model, []sdk.File{whole}, `holds 2 ControlNets (key prefixes ["param.cn.a." "param.cn.b."])`},
		{"not a ControlNet", "apply", `{}`, ex.Model, []sdk.File{{ID: "x", Tensors: []sdk.Tensor{{Key: "w", Shape: []int64{1}}}}}, "not an SD 1.5 ControlNet in Refiners', diffusers' or the original layout"},
		{"an incomplete diffusers file", "apply", `{}`, ex.Model, []sdk.File{{ID: "x", Tensors: []sdk.Tensor{{Key: "controlnet_cond_embedding.conv_in.weight", Shape: []int64{4, 3, 3, 3}}}}}, "incomplete diffusers ControlNet"},
		{"another U-Net's ControlNet", "apply", `{}`, ex.Model, []sdk.File{other}, "its timestep_embedding_dim is 32, the model's 16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := planner{}.Plan(context.Background(), &sdk.PlanRequest{Operation: tc.op, Params: tc.params, Model: tc.model, Files: tc.files})
			if sdk.CodeOf(err) != sdk.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v (code %v), want InvalidArgument containing %q", err, sdk.CodeOf(err), tc.want)
			}
		})
	}
}

func stateBytes(s *tensor.Scope, m core.Module) map[string][]byte {
	out := map[string][]byte{}
	for _, e := range core.StateDict(m) {
		out[e.Key] = s.Bytes(*e.Value)
	}
	return out
}

// TestNameTable checks data/diffusers.json against the converter's name
// table (UPDATE=1 rewrites it).
func TestNameTable(t *testing.T) {
	tab, ok := convert.TableOf("controlnet")
	if !ok {
		t.Fatal("the converter has no controlnet table")
	}
	for _, layout := range []struct {
		name  string
		names map[string]string
		of    func(*convert.Row) string
	}{{"diffusers", diffusersNames, func(r *convert.Row) string { return r.Diffusers }},
		{"original", originalNames, func(r *convert.Row) string { return r.Original }}} {
		want := map[string]string{}
		for _, r := range tab.Rows {
			if r.Conv1x1 {
				t.Fatalf("%s: a 1x1-convolution row: the plugin's tables bind tensors as they are", r.Refiners)
			}
			want[layout.of(r)] = r.Refiners
		}
		file := "data/" + layout.name + ".json"
		if os.Getenv("UPDATE") == "1" {
			b, err := json.MarshalIndent(want, "", " ")
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, append(b, '\n'), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s rewritten; rebuild and run again", file)
			continue
		}
		if len(want) < 300 || !maps.Equal(layout.names, want) {
			t.Errorf("%s (%d names) is not convert/data/sd15_controlnet.json's %s -> refiners (%d): run UPDATE=1 go test -run TestNameTable ./plugins/controlnet", file, len(layout.names), layout.name, len(want))
		}
	}
}

// TestDiffusersFile plans a diffusers ControlNetModel file (conformance's
// convert case) through the host, and checks that every parameter is bound
// to the tensor Refiners' own conversion gives it, bit for bit, and that
// the plan applies to the matching U-Net and ejects.
func TestDiffusersFile(t *testing.T) {
	const dir = "../../conformance/testdata/convert/"
	open := func(p string) *weights.File {
		f, err := weights.Open(dir + p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	dif, ref, ucase := open("controlnet/diffusion_pytorch_model.safetensors"), open("controlnet_refiners.safetensors"), open("unet.case.safetensors")
	var set map[string]string
	if err := json.Unmarshal([]byte(ucase.Metadata()["params"]), &set); err != nil {
		t.Fatal(err)
	}
	sp, err := spec.Load("../../specs/sd15_unet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	unet, err := sp.Build(set)
	if err != nil {
		t.Fatal(err)
	}
	h, err := hosts.New(t.TempDir(), hosts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	e, err := h.Install(context.Background(), bin)
	if err != nil {
		t.Fatal(err)
	}
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if err := core.InitRandom(s, unet, 3); err != nil {
			return err
		}
		defer core.ReleaseParams(unet)
		plan, err := h.Plan(context.Background(), e.Name, &sdk.PlanRequest{Operation: "apply", Params: `{"name": "d", "num_heads": 2, "num_groups": 2}`,
			Model: adapt.Summarize(unet), Files: []sdk.File{adapt.Header("dif", "", dif)}})
		if err != nil {
			return err
		}
		if plan.Report.Format != "diffusers" || len(plan.Patches) != 1 {
			t.Fatalf("format %q, %d patches", plan.Report.Format, len(plan.Patches))
		}
		b := plan.Patches[0].Bindings
		if len(b) != len(ref.Keys()) {
			t.Errorf("%d bindings, Refiners' conversion has %d tensors", len(b), len(ref.Keys()))
		}
		for _, x := range b {
			if !bytes.Equal(s.Bytes(dif.Load(s, x.Key)), s.Bytes(ref.Load(s, x.Param))) {
				t.Errorf("%s is bound to %s, whose tensor Refiners' conversion does not give it", x.Param, x.Key)
			}
		}
		tree0 := unet.String()
		a, err := adapt.Apply(s, unet, plan, map[string]*weights.File{"dif": dif})
		if err != nil {
			return err
		}
		if err := a.Eject(); err != nil {
			return err
		}
		if unet.String() != tree0 {
			t.Error("tree after eject differs")
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestOriginalFile: lllyasviel's original layout. The name table covers
// exactly the keys of conformance's bare original .pth (written by
// generate_convert.py from diffusers' own conversion); a safetensors file
// in that layout under control_model. (as the 1.0 checkpoints, which also
// hold the SD model: an unrelated key) with random values (those of
// Refiners' conversion of the same ControlNet) is planned with every
// parameter bound to the tensor of its Refiners key, the SD key reported
// unused, and applies and ejects.
func TestOriginalFile(t *testing.T) {
	const dir = "../../conformance/testdata/convert/"
	pth, err := torchfile.Open(dir + "control_sd15.pth")
	if err != nil {
		t.Fatal(err)
	}
	named, _, err := torchfile.Flatten(pth.Root())
	pth.Close()
	if err != nil {
		t.Fatal(err)
	}
	var pthKeys, tableKeys []string
	for _, n := range named {
		pthKeys = append(pthKeys, n.Key)
	}
	for k := range originalNames {
		tableKeys = append(tableKeys, k)
	}
	slices.Sort(pthKeys)
	slices.Sort(tableKeys)
	if !slices.Equal(pthKeys, tableKeys) {
		t.Fatalf("the original table's %d names are not the .pth's %d keys", len(tableKeys), len(pthKeys))
	}

	ref, err := weights.Open(dir + "controlnet_refiners.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	ucase, err := weights.Open(dir + "unet.case.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	defer ucase.Close()
	var set map[string]string
	if err := json.Unmarshal([]byte(ucase.Metadata()["params"]), &set); err != nil {
		t.Fatal(err)
	}
	sp, err := spec.Load("../../specs/sd15_unet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	unet, err := sp.Build(set)
	if err != nil {
		t.Fatal(err)
	}
	h, err := hosts.New(t.TempDir(), hosts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	e, err := h.Install(context.Background(), bin)
	if err != nil {
		t.Fatal(err)
	}
	orig := filepath.Join(t.TempDir(), "control_v11p_sd15_test.safetensors")
	const extra = "model.diffusion_model.out.2.bias"
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		toOriginal := map[string]string{}
		for o, r := range originalNames {
			toOriginal[r] = o
		}
		ts := map[string]*tensor.Tensor{extra: s.Zeros(tensor.Float32, 4)}
		for _, k := range ref.Keys() {
			o, ok := toOriginal[k]
			if !ok {
				t.Fatalf("Refiners key %s has no original name", k)
			}
			ts["control_model."+o] = ref.Load(s, k)
		}
		if err := weights.Save(s, orig, ts, nil); err != nil {
			return err
		}
		f, err := weights.Open(orig)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := core.InitRandom(s, unet, 3); err != nil {
			return err
		}
		defer core.ReleaseParams(unet)
		plan, err := h.Plan(context.Background(), e.Name, &sdk.PlanRequest{Operation: "apply", Params: `{"name": "o", "num_heads": 2, "num_groups": 2}`,
			Model: adapt.Summarize(unet), Files: []sdk.File{adapt.Header("orig", "", f)}})
		if err != nil {
			return err
		}
		if plan.Report.Format != "original" || len(plan.Patches) != 1 || !slices.Equal(plan.Report.Unmatched, []string{extra}) {
			t.Fatalf("format %q, %d patches, unmatched %v", plan.Report.Format, len(plan.Patches), plan.Report.Unmatched)
		}
		b := plan.Patches[0].Bindings
		if len(b) != len(ref.Keys()) {
			t.Errorf("%d bindings, Refiners' conversion has %d tensors", len(b), len(ref.Keys()))
		}
		for _, x := range b {
			if !bytes.Equal(s.Bytes(f.Load(s, x.Key)), s.Bytes(ref.Load(s, x.Param))) {
				t.Errorf("%s is bound to %s, whose tensor Refiners' conversion does not give it", x.Param, x.Key)
			}
		}
		tree0 := unet.String()
		a, err := adapt.Apply(s, unet, plan, map[string]*weights.File{"orig": f})
		if err != nil {
			return err
		}
		if err := a.Eject(); err != nil {
			return err
		}
		if unet.String() != tree0 {
			t.Error("tree after eject differs")
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
}
