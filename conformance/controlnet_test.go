package conformance

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/adapt"
	"github.com/refiners-go/refiners/convert"
	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/models/sd15"
	"github.com/refiners-go/refiners/sdk"
	"github.com/refiners-go/refiners/spec"
)

// TestControlnet checks SD 1.5 ControlNets against Refiners 0.4.0's
// SD1ControlnetAdapter on SD1UNet (generate_controlnet.py): the tiny U-Net
// spec with its reference weights, then ControlNet "a" and then "b" put in
// through the host path (insert patches planned without tensors, applied
// by adapt.Apply from the case file), each output within the error model.
// Ejecting both (in reverse) must give back the tree print, every weight
// and the base output bit for bit.
func TestControlnet(t *testing.T) {
	paths, _ := filepath.Glob("testdata/controlnet/*.safetensors")
	if len(paths) == 0 {
		t.Skip("no ControlNet cases in testdata/controlnet yet")
	}
	var rows []string
	for _, path := range paths {
		name := strings.TrimSuffix(filepath.Base(path), ".safetensors")
		t.Run(name, func(t *testing.T) {
			diffs, outs, err := runControlnetCase(path)
			if err != nil {
				t.Fatal(err)
			}
			for i, d := range diffs {
				if !d.Pass {
					t.Errorf("%s: %s", outs[i], d)
				}
				rows = append(rows, reportRow(name, outs[i], d))
			}
		})
	}
	publishReport(t, reportHeader("controlnet case")+strings.Join(rows, "\n")+"\n")
}

type controlnetCase struct {
	unetSpec    string
	unetSet     map[string]string
	cnSet       map[string]string
	controlnets []struct {
		Name  string
		Scale float64
	}
}

func readControlnetCase(f *weights.File) (*controlnetCase, error) {
	meta := f.Metadata()
	c := &controlnetCase{unetSpec: meta["unet_spec"]}
	for key, into := range map[string]any{"unet_overrides": &c.unetSet, "controlnet_overrides": &c.cnSet, "controlnets": &c.controlnets} {
		if err := json.Unmarshal([]byte(meta[key]), into); err != nil {
			return nil, fmt.Errorf("%s: metadata %s: %w", f.Path(), key, err)
		}
	}
	if c.unetSpec == "" || len(c.controlnets) == 0 {
		return nil, fmt.Errorf("%s: no unet_spec or no controlnets in metadata", f.Path())
	}
	return c, nil
}

// controlnetPlan is what a ControlNet plugin answers for one ControlNet
// file: one insert patch at index 0 of the U-Net, every parameter bound to
// the file's key (here, keys under param.cn.<name>. of the case file).
func controlnetPlan(f *weights.File, c *controlnetCase, name string, scale float64) *sdk.Plan {
	set := map[string]any{}
	for k, v := range c.cnSet {
		set[k] = v
	}
	set["name"], set["scale"] = name, scale
	prefix := "param.cn." + name + "."
	var b []sdk.Binding
	for _, k := range f.Keys() {
		if rest, ok := strings.CutPrefix(k, prefix); ok {
			b = append(b, sdk.Binding{File: "case", Key: k, Param: rest})
		}
	}
	return &sdk.Plan{Report: &sdk.Report{}, Patches: []sdk.Patch{{Target: "", Kind: adapt.InsertKind,
		Branch: map[string]any{"spec": "sd15_controlnet.yaml", "set": set, "index": 0}, Bindings: b}}}
}

func runControlnetCase(path string) ([]Diff, []string, error) {
	f, err := weights.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	c, err := readControlnetCase(f)
	if err != nil {
		return nil, nil, err
	}
	sp, err := spec.Load(filepath.Join("..", c.unetSpec))
	if err != nil {
		return nil, nil, err
	}
	unet, err := sp.Build(c.unetSet)
	if err != nil {
		return nil, nil, err
	}
	var diffs []Diff
	var names []string
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if _, err := core.LoadState(s, unet, f, core.LoadOptions{Strict: true, Prefix: "param.unet."}); err != nil {
			return err
		}
		defer core.ReleaseParams(unet)
		call := core.Call{Contexts: core.Contexts{}}
		for _, k := range f.Keys() {
			if rest, ok := strings.CutPrefix(k, "context."); ok {
				ctx, key, _ := strings.Cut(rest, ".")
				if call.Contexts[ctx] == nil {
					call.Contexts[ctx] = map[string]any{}
				}
				call.Contexts[ctx][key] = f.Load(s, k)
			}
		}
		x := f.Load(s, "input.0")
		run := func() (*tensor.Tensor, error) {
			out, err := call.Forward(s, unet, x)
			if err != nil {
				return nil, err
			}
			return out[0], nil
		}
		check := func(out string, got *tensor.Tensor) error {
			ref, err := ReadReference(f, "output."+out)
			if err != nil {
				return err
			}
			diffs, names = append(diffs, ref.Check(s, got)), append(names, out)
			return nil
		}
		tree0, params0 := unet.String(), stateBytes(s, unet)
		base, err := run()
		if err != nil {
			return err
		}
		if err := check("base", base); err != nil {
			return err
		}
		files := map[string]*weights.File{"case": f}
		var applied []*adapt.Applied
		for i, cn := range c.controlnets {
			a, err := adapt.Apply(s, unet, controlnetPlan(f, c, cn.Name, cn.Scale), files)
			if err != nil {
				return fmt.Errorf("ControlNet %s: %w", cn.Name, err)
			}
			applied = append(applied, a)
			got, err := run()
			if err != nil {
				return fmt.Errorf("with ControlNet %s: %w", cn.Name, err)
			}
			if err := check([]string{"one", "two"}[i], got); err != nil {
				return err
			}
		}
		for i := len(applied) - 1; i >= 0; i-- {
			if err := applied[i].Eject(); err != nil {
				return err
			}
		}
		if got := unet.String(); got != tree0 {
			return fmt.Errorf("tree after eject differs:\n%s\nwant:\n%s", got, tree0)
		}
		params1 := stateBytes(s, unet)
		if len(params1) != len(params0) {
			return fmt.Errorf("%d parameters after eject, want %d", len(params1), len(params0))
		}
		for k, v := range params0 {
			if !bytes.Equal(params1[k], v) {
				return fmt.Errorf("parameter %s changed after eject", k)
			}
		}
		again, err := run()
		if err != nil {
			return err
		}
		diffs, names = append(diffs, ExactDiff(s, again, base)), append(names, "base (ejected)")
		return s.Err()
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return diffs, names, nil
}

func stateBytes(s *tensor.Scope, m core.Module) map[string][]byte {
	out := map[string][]byte{}
	for _, e := range core.StateDict(m) {
		out[e.Key] = s.Bytes(*e.Value)
	}
	return out
}

// controlnetUse is one ControlNet of a diffusers case's output: its
// condition (and name) and scale.
type controlnetUse struct {
	Cond  string
	Scale float64
}

// readControlnetUses reads the "uses" metadata: output -> [[cond, scale], ...].
func readControlnetUses(s string) (map[string][]controlnetUse, error) {
	var raw map[string][][2]any
	if err := json.Unmarshal([]byte(s), &raw); err != nil {
		return nil, fmt.Errorf("metadata uses: %w", err)
	}
	out := map[string][]controlnetUse{}
	for k, list := range raw {
		out[k] = []controlnetUse{}
		for _, u := range list {
			c, ok1 := u[0].(string)
			sc, ok2 := u[1].(float64)
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("metadata uses: %s: %v is not [condition, scale]", k, u)
			}
			out[k] = append(out[k], controlnetUse{c, sc})
		}
	}
	return out, nil
}

// TestControlnetDiffusers checks a diffusers ControlNetModel added into a
// diffusers UNet2DConditionModel (generate_controlnet.py --diffusers, on
// testdata/convert's tiny models) against the same weights in Go: the
// U-Net converted by the Go converter from the diffusers folder, the
// ControlNet's diffusers file planned by the real ControlNet plugin (its
// name table) and inserted by the host, conditions and scales as call
// contexts (sd15.SetControlnet). Outputs: the U-Net alone, with the
// ControlNet at 0.7, and with it twice (names c1 and c2, at 0.7 and 1.2 on
// two conditions: diffusers' MultiControlNetModel sum), each within the
// error model; ejecting gives the base output back bit for bit.
func TestControlnetDiffusers(t *testing.T) {
	const path = "testdata/controlnet/diffusers/tiny.safetensors"
	f, err := weights.Open(path)
	if err != nil {
		t.Skipf("no diffusers ControlNet case: %v", err)
	}
	defer f.Close()
	meta := f.Metadata()
	uses, err := readControlnetUses(meta["uses"])
	if err != nil {
		t.Fatal(err)
	}
	if len(uses["two"]) != 2 || len(uses["one"]) != 1 {
		t.Fatalf("uses %v", meta["uses"])
	}

	tmp := t.TempDir()
	unetFile := filepath.Join(tmp, "unet.safetensors")
	if err := convertFile(filepath.Join("testdata", meta["unet"]), unetFile, convert.Options{Component: "unet", Params: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	ucase, err := weights.Open("testdata/convert/unet.case.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	defer ucase.Close()
	var set map[string]string
	if err := json.Unmarshal([]byte(ucase.Metadata()["params"]), &set); err != nil {
		t.Fatal(err)
	}
	sp, err := spec.Load("../specs/sd15_unet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	unet, err := sp.Build(set)
	if err != nil {
		t.Fatal(err)
	}
	cnPath := filepath.Join("testdata", meta["controlnet"])
	host := installPlugins(t, "controlnet")
	var rows []string
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		uf, err := weights.Open(unetFile)
		if err != nil {
			return err
		}
		defer uf.Close()
		if _, err := core.LoadState(s, unet, uf, core.LoadOptions{Strict: true}); err != nil {
			return err
		}
		defer core.ReleaseParams(unet)
		cf, err := weights.Open(cnPath)
		if err != nil {
			return err
		}
		defer cf.Close()
		x := f.Load(s, "input.0")
		run := func(use []controlnetUse) (*tensor.Tensor, error) {
			c := core.Contexts{
				"diffusion":             {"timestep": f.Load(s, "context.diffusion.timestep")},
				"cross_attention_block": {"clip_text_embedding": f.Load(s, "context.cross_attention_block.clip_text_embedding")},
			}
			for _, u := range use {
				sd15.SetControlnet(c, u.Cond, f.Load(s, "condition."+u.Cond), u.Scale)
			}
			out, err := core.Call{Contexts: c}.Forward(s, unet, x)
			if err != nil {
				return nil, err
			}
			return out[0], nil
		}
		check := func(key string, got *tensor.Tensor) error {
			ref, err := ReadReference(f, "output."+key)
			if err != nil {
				return err
			}
			d := ref.Check(s, got)
			if !d.Pass {
				t.Errorf("%s: %s", key, d)
			}
			rows = append(rows, reportRow("diffusers_tiny", key, d))
			return nil
		}
		tree0 := unet.String()
		base, err := run(nil)
		if err != nil {
			return err
		}
		if err := check("base", base); err != nil {
			return err
		}
		var applied []*adapt.Applied
		for i, u := range uses["two"] {
			plan, err := host.Plan(context.Background(), "controlnet", &sdk.PlanRequest{Operation: "apply",
				Params: fmt.Sprintf(`{"name": %q, "num_heads": %s, "num_groups": %s}`, u.Cond, set["num_heads"], set["num_groups"]),
				Model:  adapt.Summarize(unet), Files: []sdk.File{adapt.Header("cn", "", cf)}})
			if err != nil {
				return err
			}
			if plan.Report.Format != "diffusers" || len(plan.Report.Unmatched) != 0 {
				t.Errorf("plan: format %q, %d keys unmatched", plan.Report.Format, len(plan.Report.Unmatched))
			}
			a, err := adapt.Apply(s, unet, plan, map[string]*weights.File{"cn": cf})
			if err != nil {
				return err
			}
			applied = append(applied, a)
			key := []string{"one", "two"}[i]
			got, err := run(uses[key])
			if err != nil {
				return err
			}
			if err := check(key, got); err != nil {
				return err
			}
		}
		for i := len(applied) - 1; i >= 0; i-- {
			if err := applied[i].Eject(); err != nil {
				return err
			}
		}
		if unet.String() != tree0 {
			t.Error("the tree after eject differs")
		}
		again, err := run(nil)
		if err != nil {
			return err
		}
		d := ExactDiff(s, again, base)
		if !d.Pass {
			t.Errorf("base after eject: %s", d)
		}
		rows = append(rows, reportRow("diffusers_tiny", "base (ejected)", d))
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	publishReport(t, reportHeader("controlnet case (diffusers)")+strings.Join(rows, "\n")+"\n")
}
