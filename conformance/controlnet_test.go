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
	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
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
