package adapt

import (
	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
)

// DoRA patches (kind "dora"): a core.DoraBranch on a Linear or Conv2d.
//
// At run time (Apply) the branch sits in the target's LoraAdapter and adds
// F(x, W' − W), W' computed from the target's own weight: with other
// branches on the layer, the DoRA rescales the target's weight, not their
// changes (PEFT's forward with several adapters active).
//
// Fused, the branch replaces the weight as fused so far by its W': plans
// fused one after another, or several branches of one plan on one layer
// (in plan order), compose in sequence, as PEFT's merge and LyCORIS's
// merge_to do. So a DoRA fused after another adapter on the same layer
// rescales that adapter's change too, and runtime and fused outputs differ
// there, exactly as they do in PEFT; fused first, or alone on its layer,
// a DoRA gives the same weights both ways.

func init() { branchTypes["dora"] = []string{"DoRA"} }

// fuseDora replaces the target's weight W (as fused so far) by the branch's
// W'.
func fuseDora(s *tensor.Scope, target core.Module, d *core.DoraBranch, change func(slot **tensor.Tensor, next func(cur *tensor.Tensor) *tensor.Tensor)) error {
	weight, _, err := targetSlots(target)
	if err != nil {
		return err
	}
	change(weight, func(cur *tensor.Tensor) *tensor.Tensor { return d.Merged(s, cur) })
	return nil
}
