package adapt

import (
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"sync"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/spec"
	"github.com/refiners-go/refiners/specs"
)

// Insert patches (kind "insert") add a whole sub-model as a new child of a
// chain, as Refiners' SD1ControlnetAdapter puts a Controlnet at index 0 of
// an SD1UNet, rather than wrapping a layer. The patch's Target is the
// chain (a base-model path; "" is the model's root) and its Branch says
// what to build and where:
//
//	{"spec": "sd15_controlnet.yaml", "set": {"name": "canny", ...}, "index": 0}
//
// builds a spec of the project's spec set (package specs) with those
// parameter overrides; {"layer": {<core.BuildLayer description>}, "index": 0}
// builds one registered layer instead. Bindings fill every parameter of the
// sub-model (Param is its state-dict key), cast to the dtype of the
// target's weights. Eject removes the sub-model and restores the tree print
// and state dict exactly; Fuse refuses insert patches (they add
// computation, not a weight change). A chain may not receive a sub-model
// described exactly as a child it already has (two ControlNets with the
// same name would share their context keys).
const InsertKind = "insert"

// inserted holds the sub-models insert patches have put in and not taken
// out yet (core.Module -> struct{}). Summarize leaves them out: plans
// address the base model, as if every adapter were ejected, and an
// inserted sub-model is an adapter too. So a LoRA planned while a
// ControlNet is in never adapts the ControlNet's layers, nor counts them
// when it targets layers by position (Refiners' legacy LoRA files: the
// i-th Linear under some class, which a ControlNet also has); and a second
// ControlNet is planned against the U-Net alone. An inserted sub-model
// whose type name equals a sibling's still renumbers that sibling's key
// (Chain_1 -> Chain_2) in the live tree; ControlNets (type Controlnet)
// never do in a U-Net.
var inserted sync.Map

// SpecFS is where insert patches' "spec" names are looked up.
var SpecFS fs.FS = specs.FS

// insertion is a validated insert patch's placement.
type insertion struct {
	parent *core.Chain
	index  int
}

// buildInsert builds an insert patch's sub-model and checks its placement.
func buildInsert(m *core.Chain, target string, desc map[string]any) (core.Module, *insertion, error) {
	var parent *core.Chain
	if target == "" {
		parent = m
	} else {
		t, err := m.BaseLayer(target)
		if err != nil {
			return nil, nil, err
		}
		c, ok := t.(*core.Chain)
		if !ok {
			return nil, nil, fmt.Errorf("insert target %s is a %s, not a chain", target, core.TypeName(t))
		}
		parent = c
	}
	index := 0
	if v, ok := desc["index"]; ok {
		f, isNum := v.(float64)
		if !isNum || f != float64(int(f)) {
			return nil, nil, fmt.Errorf("insert: index must be an integer, got %v", v)
		}
		index = int(f)
	}
	if index < 0 || index > parent.Len() {
		return nil, nil, fmt.Errorf("insert: index %d out of range [0, %d] for %s", index, parent.Len(), core.Describe(parent))
	}
	built, err := BuildInsertBranch(desc)
	if err != nil {
		return nil, nil, err
	}
	d := core.Describe(built)
	for _, child := range parent.Children() {
		if core.Describe(child) == d {
			return nil, nil, fmt.Errorf("insert: %s already has a child %s", core.Describe(parent), d)
		}
	}
	// The sub-model keeps its weights in the target's dtype.
	if sd := core.StateDict(parent); len(sd) > 0 {
		setDType(built, sd[0].DType)
	}
	return built, &insertion{parent: parent, index: index}, nil
}

// BuildInsertBranch builds an insert patch's sub-model from its branch
// ({"spec": ..., "set": ..., "index": ...} or {"layer": ..., "index": ...})
// without placing it: what the plugin conformance kit checks a plan with.
func BuildInsertBranch(desc map[string]any) (core.Module, error) {
	var built core.Module
	switch {
	case desc["spec"] != nil && desc["layer"] != nil:
		return nil, fmt.Errorf(`insert: give "spec" or "layer", not both`)
	case desc["spec"] != nil:
		name, ok := desc["spec"].(string)
		if !ok || name == "" {
			return nil, fmt.Errorf("insert: spec must be a file name, got %v", desc["spec"])
		}
		set, err := overrides(desc["set"])
		if err != nil {
			return nil, err
		}
		sp, err := spec.LoadFS(SpecFS, name)
		if err != nil {
			return nil, fmt.Errorf("insert: %w", err)
		}
		c, err := sp.Build(set)
		if err != nil {
			return nil, fmt.Errorf("insert: %w", err)
		}
		built = c
	case desc["layer"] != nil:
		l, ok := desc["layer"].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("insert: layer must be a layer description object, got %v", desc["layer"])
		}
		b, err := core.BuildLayer(l)
		if err != nil {
			return nil, fmt.Errorf("insert: layer: %w", err)
		}
		built = b
	default:
		return nil, fmt.Errorf(`insert: the branch needs "spec" (a spec file name) or "layer" (a layer description)`)
	}
	for k := range desc {
		if !slices.Contains([]string{"spec", "set", "layer", "index"}, k) {
			return nil, fmt.Errorf("insert: unknown branch field %q (known: spec, set, layer, index)", k)
		}
	}
	return built, nil
}

// overrides reads a branch's "set": parameter overrides as strings
// (numbers and booleans are written back as JSON had them).
func overrides(v any) (map[string]string, error) {
	out := map[string]string{}
	if v == nil {
		return out, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("insert: set must be an object of parameter overrides, got %v", v)
	}
	for k, x := range m {
		switch x := x.(type) {
		case string:
			out[k] = x
		case float64:
			out[k] = strconv.FormatFloat(x, 'g', -1, 64)
		case bool:
			out[k] = strconv.FormatBool(x)
		default:
			return nil, fmt.Errorf("insert: set %s: want a string, number or boolean, got %v", k, x)
		}
	}
	return out, nil
}

func setDType(m core.Module, d tensor.DType) {
	visit := func(x core.Module) {
		if p, ok := x.(interface{ SetDType(tensor.DType) }); ok {
			p.SetDType(d)
		}
	}
	visit(m)
	if c, ok := m.(*core.Chain); ok {
		c.Walk(func(x core.Module, _ *core.Chain, _ string) bool {
			visit(x)
			return true
		})
	}
}
