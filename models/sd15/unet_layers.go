package sd15

import (
	"fmt"
	"math"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
)

// Layers of Refiners' Stable Diffusion 1.5 U-Net (SD1UNet) that are more
// than compositions of core layers; specs/sd15_unet.yaml puts them together.
//
// Refiners keeps two non-tensor values in contexts and creates them up
// front in init_context: the skip connections ("unet"/"residuals", a list
// of 13 slots holding 0.0 until a down block stores its output) and the
// sizes a CrossAttentionBlock2d flattened ("flatten"/"sizes", a stack). Here
// the first layer of a call that needs one creates it, so a spec needs no
// set-up step, and each call starts afresh.
//
// Where Refiners composes UseContext with a function or gives SetContext a
// callback, these layers are core UseContext/SetContext with Compose/Update
// (UseResidual, which must also work before the list exists, is its own
// type under the same name), so keys and the tree read as in Refiners.

// DefaultResidualSlots is the length of SD1UNet's residuals list: 12 down
// block outputs and a last slot, read by the middle block, that only
// adapters such as ControlNet fill.
const DefaultResidualSlots = 13

func init() {
	core.RegisterLeaf("SinusoidalEmbedding", "timesteps [B] to float32 [B, embedding_dim] cos and sin features (RangeEncoder's Lambda(compute_sinusoidal_embedding) in Refiners)",
		[]core.ArgSpec{core.AtLeast(1, core.RequiredArg("embedding_dim", core.IntArg, "even: cos and sin halves"))},
		func(a *core.Args) (core.Module, error) {
			d := a.Int("embedding_dim")
			if d <= 0 || d%2 != 0 {
				return nil, fmt.Errorf("SinusoidalEmbedding: embedding_dim must be positive and even, got %d", d)
			}
			return &SinusoidalEmbedding{Dim: d}, nil
		})
	ctxArgs := []core.ArgSpec{core.RequiredArg("context", core.StringArg, ""), core.RequiredArg("key", core.StringArg, "")}
	core.RegisterLeaf("StatefulFlatten", "flattens dims start_dim..end_dim and pushes their sizes on a stack in a context", append(ctxArgs,
		core.OptionalArg("start_dim", core.IntArg, int64(0), ""), core.OptionalArg("end_dim", core.IntArg, int64(-1), ""),
	), func(a *core.Args) (core.Module, error) {
		return NewStatefulFlatten(a.String("context"), a.String("key"), a.Int("start_dim"), a.Int("end_dim")), nil
	})
	core.RegisterLeaf("PopContext", "pops the sizes a StatefulFlatten pushed, as an int64 tensor (Refiners: UseContext(...).compose(lambda x: x.pop()))", ctxArgs,
		func(a *core.Args) (core.Module, error) {
			return NewPopContext(a.String("context"), a.String("key")), nil
		})
	n := core.RequiredArg("n", core.IntArg, "slot of the residuals list, negative from the end")
	core.RegisterLeaf("ResidualAccumulator", "adds slot n of the residuals list to x and stores the sum there; passes x on", []core.ArgSpec{
		n, core.AtLeast(1, core.OptionalArg("num_residuals", core.IntArg, int64(DefaultResidualSlots), "slots of the residuals list, if this layer creates it")),
	}, func(a *core.Args) (core.Module, error) {
		return NewResidualAccumulator(a.Int("n"), a.Int("num_residuals")), nil
	})
	core.RegisterLeaf("ResidualConcatenator", "concatenates slot n of the residuals list to x along channels", []core.ArgSpec{n},
		func(a *core.Args) (core.Module, error) { return NewResidualConcatenator(a.Int("n")), nil })
	core.RegisterLeaf("UseResidual", "outputs slot n of the residuals list, 0 while unset (Refiners: UseContext(unet, residuals).compose(lambda x: x[n]))", []core.ArgSpec{n},
		func(a *core.Args) (core.Module, error) { return &UseResidual{N: a.Int("n")}, nil })
}

// SinusoidalEmbedding maps timesteps t [B] to [B, Dim]: cos(t·ω) then
// sin(t·ω), with ω_i = exp(-ln(10000)·i/(Dim/2)), computed in float32 with
// the same ops as Refiners so that the result is bit-identical.
type SinusoidalEmbedding struct{ Dim int64 }

func (l *SinusoidalEmbedding) TypeName() string { return "Lambda" }
func (l *SinusoidalEmbedding) Describe() string { return "Lambda(compute_sinusoidal_embedding)" }

func (l *SinusoidalEmbedding) Forward(f *core.Frame, in ...*tensor.Tensor) (core.Tensors, error) {
	return core.Unary(f, "SinusoidalEmbedding", in, func(t *tensor.Tensor) *tensor.Tensor {
		half := l.Dim / 2
		steps := f.ToDType(f.Arange(half), tensor.Float32)
		if t.Device() != tensor.CPU {
			steps = f.To(steps, t.Device())
		}
		exponent := f.DivScalar(f.Scale(steps, -math.Log(10000)), float64(half))
		angles := f.Mul(f.ToDType(f.Unsqueeze(t, 1), tensor.Float32), f.Unsqueeze(f.Exp(exponent), 0))
		return f.Cat([]*tensor.Tensor{f.Cos(angles), f.Sin(angles)}, -1)
	})
}

// sizeStack is the "flatten"/"sizes" context value: StatefulFlatten pushes
// the sizes it merged, PopContext hands back the last ones.
type sizeStack struct{ sizes [][]int64 }

// NewStatefulFlatten flattens dims start..end after pushing their sizes on
// the stack at context/key (created if missing), for a later PopContext
// and Unflatten (sizes as its second input).
func NewStatefulFlatten(context, key string, start, end int64) *core.Chain {
	push := &core.SetContext{Context: context, Key: key, Update: func(f *core.Frame, current any, x *tensor.Tensor) (any, error) {
		shape := x.Shape()
		i, j := start, end
		if i < 0 {
			i += int64(len(shape))
		}
		if j < 0 {
			j += int64(len(shape))
		}
		if i < 0 || j >= int64(len(shape)) || i > j {
			return nil, fmt.Errorf("StatefulFlatten: dims %d..%d of shape %v", start, end, shape)
		}
		stack, isStack := current.(*sizeStack)
		if current == nil {
			stack = &sizeStack{}
		} else if !isStack {
			return nil, fmt.Errorf("context %q key %q holds %T, not a stack of sizes", context, key, current)
		}
		stack.sizes = append(stack.sizes, append([]int64(nil), shape[i:j+1]...))
		return stack, nil
	}}
	c := core.NewNamed("StatefulFlatten", core.Sequence, push, core.NewFlatten(start, end))
	var kv []any
	if start != 0 {
		kv = append(kv, "start_dim", start)
	}
	if end != -1 {
		kv = append(kv, "end_dim", end)
	}
	d := core.DescribeArgs("", kv...)
	c.Args = d[1 : len(d)-1]
	return c
}

// NewPopContext outputs the sizes last pushed at context/key as an int64
// tensor, removing them from the stack (sizes travel between layers as
// tensors, as for Interpolate).
func NewPopContext(context, key string) *core.UseContext {
	return &core.UseContext{Context: context, Key: key, Compose: func(f *core.Frame, v any) (*tensor.Tensor, error) {
		stack, isStack := v.(*sizeStack)
		if !isStack {
			return nil, fmt.Errorf("context %q key %q holds %T, not a stack of sizes", context, key, v)
		}
		if len(stack.sizes) == 0 {
			return nil, fmt.Errorf("context %q key %q: no sizes left to pop", context, key)
		}
		last := stack.sizes[len(stack.sizes)-1]
		stack.sizes = stack.sizes[:len(stack.sizes)-1]
		return f.FromInt64(last, int64(len(last))), nil
	}}
}

// residualList is the "unet"/"residuals" context value: the skip
// connections, one slot per down block; nil is Refiners' initial 0.0.
type residualList struct{ slots []*tensor.Tensor }

func asResidualList(v any) (*residualList, error) {
	l, isList := v.(*residualList)
	if !isList {
		return nil, fmt.Errorf("context %q key %q holds %T, not a residuals list", "unet", "residuals", v)
	}
	return l, nil
}

// slot resolves n (negative counts from the end, as in Python).
func (l *residualList) slot(n int64) (int, error) {
	i := n
	if i < 0 {
		i += int64(len(l.slots))
	}
	if i < 0 || i >= int64(len(l.slots)) {
		return 0, fmt.Errorf("residual %d out of range for %d slots", n, len(l.slots))
	}
	return int(i), nil
}

// UseResidual outputs slot N of the residuals list, or a zero scalar while
// the slot (or the whole list) is unset, Refiners' 0.0, so that adding it
// changes nothing.
type UseResidual struct {
	N int64
	// Required makes an unset slot an error (ResidualConcatenator cannot
	// concatenate 0.0).
	Required bool
}

func (l *UseResidual) TypeName() string { return "UseContext" }
func (l *UseResidual) Describe() string { return "UseContext(context=unet, key=residuals)" }

func (l *UseResidual) Forward(f *core.Frame, in ...*tensor.Tensor) (core.Tensors, error) {
	if v, ok := f.LookupContext("unet", "residuals"); ok && v != nil {
		list, err := asResidualList(v)
		if err != nil {
			return nil, err
		}
		i, err := list.slot(l.N)
		if err != nil {
			return nil, err
		}
		if t := list.slots[i]; t != nil {
			return core.Tensors{f.ShallowCopy(t)}, f.Err()
		}
	}
	if l.Required {
		return nil, fmt.Errorf("residual %d is not set: no ResidualAccumulator stored it", l.N)
	}
	dtype := tensor.Float32
	if len(in) > 0 && in[0].Valid() {
		dtype = in[0].DType()
	}
	return core.Tensors{f.Zeros(dtype)}, f.Err()
}

// NewResidualAccumulator adds slot n of the residuals list to its input,
// stores the sum in slot n and passes its input on unchanged. The first
// one of a call creates the list with the given number of slots.
func NewResidualAccumulator(n, slots int64) *core.Chain {
	store := &core.SetContext{Context: "unet", Key: "residuals", Update: func(f *core.Frame, current any, x *tensor.Tensor) (any, error) {
		list := &residualList{}
		if current == nil {
			if slots <= 0 {
				return nil, fmt.Errorf("ResidualAccumulator: num_residuals must be positive, got %d", slots)
			}
			list.slots = make([]*tensor.Tensor, slots)
		} else {
			var err error
			if list, err = asResidualList(current); err != nil {
				return nil, err
			}
		}
		i, err := list.slot(n)
		if err != nil {
			return nil, err
		}
		t := f.HoldForCall(x) // dropped when the call ends
		if f.Err() != nil {
			return nil, f.Err()
		}
		list.slots[i] = t
		return list, nil
	}}
	c := core.NewNamed("ResidualAccumulator", core.Passthrough, core.NewResidual(&UseResidual{N: n}), store)
	c.Args = fmt.Sprintf("n=%d", n)
	return c
}

// NewResidualConcatenator concatenates slot n of the residuals list to its
// input along the channels.
func NewResidualConcatenator(n int64) *core.Chain {
	c := core.NewNamed("ResidualConcatenator", core.Sequence,
		core.NewConcatenate(1, core.NewIdentity(), &UseResidual{N: n, Required: true}),
	)
	c.Args = fmt.Sprintf("n=%d", n)
	return c
}
