package sd15

import (
	"fmt"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
)

// Layers of Refiners' SD 1.5 ControlNet (Controlnet, specs/sd15_controlnet.yaml)
// that are more than compositions of core layers.
//
// A ControlNet runs first in the U-Net (a Passthrough inserted as its
// child 0) and adds scale·features into the U-Net's residuals list (context
// unet/residuals), slots 0..12, which the U-Net's ResidualAccumulators and
// middle block then add to their own. Each ControlNet reads its condition
// image from context controlnet/condition_{name} and, when set, its scale
// from controlnet/scale_{name} (a float64), over the scale it was built
// with.

// ControlnetContext is the context ControlNets read their conditions and
// scales from.
const ControlnetContext = "controlnet"

// ConditionKey is the key (in ControlnetContext) of the condition image of
// the ControlNet called name: float [B, 3, H, W] in [0, 1].
func ConditionKey(name string) string { return "condition_" + name }

// ScaleKey is the key (in ControlnetContext) of the scale of the ControlNet
// called name, a float64 that overrides the scale it was built with.
func ScaleKey(name string) string { return "scale_" + name }

func init() {
	core.RegisterLeaf("ControlnetResidual", "adds scale·x into slot n of the U-Net's residuals list (creating the list if missing) and passes x on (Refiners: Controlnet's Lambda(_store_nth_residual(n)))", []core.ArgSpec{
		core.RequiredArg("n", core.IntArg, "slot of the residuals list, negative from the end"),
		core.OptionalArg("name", core.StringArg, "", "the ControlNet's name: context controlnet/scale_{name}, when set, overrides scale"),
		core.OptionalArg("scale", core.FloatArg, 1.0, "factor applied to x"),
		core.AtLeast(1, core.OptionalArg("num_residuals", core.IntArg, int64(DefaultResidualSlots), "slots of the residuals list, if this layer creates it")),
	}, func(a *core.Args) (core.Module, error) {
		return &ControlnetResidual{N: a.Int("n"), Name: a.String("name"), Scale: a.Float("scale"), Slots: a.Int("num_residuals")}, nil
	})
}

// ControlnetResidual stores Scale·x added to slot N of the residuals list
// (an unset slot counts as 0, as Refiners' 0.0) and outputs x.
type ControlnetResidual struct {
	N int64
	// Name selects the context scale controlnet/scale_{Name}; "" reads none.
	Name  string
	Scale float64
	// Slots is the length of the list when this layer creates it.
	Slots int64
}

func (l *ControlnetResidual) TypeName() string { return "Lambda" }
func (l *ControlnetResidual) Describe() string {
	return fmt.Sprintf("Lambda(_store_residual(n=%d))", l.N)
}

// scale is the context scale when one is set, else l.Scale.
func (l *ControlnetResidual) scale(f *core.Frame) (float64, error) {
	if l.Name == "" {
		return l.Scale, nil
	}
	v, ok := f.LookupContext(ControlnetContext, ScaleKey(l.Name))
	if !ok || v == nil {
		return l.Scale, nil
	}
	switch s := v.(type) {
	case float64:
		return s, nil
	case float32:
		return float64(s), nil
	}
	return 0, fmt.Errorf("context %q key %q holds %T, not a float64 scale", ControlnetContext, ScaleKey(l.Name), v)
}

func (l *ControlnetResidual) Forward(f *core.Frame, in ...*tensor.Tensor) (core.Tensors, error) {
	if len(in) != 1 {
		return nil, fmt.Errorf("ControlnetResidual(n=%d): want 1 input, got %d", l.N, len(in))
	}
	scale, err := l.scale(f)
	if err != nil {
		return nil, err
	}
	if scale == 0 {
		// Off: the slot is left as it is, so the U-Net computes exactly
		// what it computes without this ControlNet (adding 0·x could turn
		// a −0 into +0, or an infinite feature into NaN).
		return core.Tensors{f.ShallowCopy(in[0])}, f.Err()
	}
	var list *residualList
	if v, ok := f.LookupContext("unet", "residuals"); ok && v != nil {
		if list, err = asResidualList(v); err != nil {
			return nil, err
		}
	} else {
		if l.Slots <= 0 {
			return nil, fmt.Errorf("ControlnetResidual: num_residuals must be positive, got %d", l.Slots)
		}
		list = &residualList{slots: make([]*tensor.Tensor, l.Slots)}
	}
	i, err := list.slot(l.N)
	if err != nil {
		return nil, fmt.Errorf("ControlnetResidual: %w", err)
	}
	add := f.Scale(in[0], scale)
	if prev := list.slots[i]; prev != nil {
		add = f.Add(prev, add)
	}
	t := f.HoldForCall(add) // dropped when the call ends
	if f.Err() != nil {
		return nil, fmt.Errorf("ControlnetResidual(n=%d): %w", l.N, f.Err())
	}
	list.slots[i] = t
	f.SetContext("unet", "residuals", list)
	return core.Tensors{f.ShallowCopy(in[0])}, f.Err()
}

// SetControlnet records, in the contexts of a U-Net call, the condition
// image and the scale of the ControlNet called name (inserted with
// specs/sd15_controlnet.yaml and that name): what Refiners'
// set_controlnet_condition and set_scale do. A scale of 0 makes the
// ControlNet add nothing (the U-Net's output is then exactly its own), so
// a caller can switch a ControlNet off for some steps without ejecting it
// (its layers still run: only its additions are skipped).
func SetControlnet(c core.Contexts, name string, condition *tensor.Tensor, scale float64) {
	if c[ControlnetContext] == nil {
		c[ControlnetContext] = map[string]any{}
	}
	c[ControlnetContext][ConditionKey(name)] = condition
	c[ControlnetContext][ScaleKey(name)] = scale
}
