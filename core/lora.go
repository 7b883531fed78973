package core

import (
	"fmt"
	"strings"
)

// LoRA (low-rank adaptation): a branch that adds scale·up(down(x)) to a
// layer's output. As in Refiners, a Lora is a chain of the down layer (to
// the rank), the up layer (back to the target's width) and a Multiply by
// the scale; a LoraAdapter is a Sum of the target and any number of named
// branches (LoRAs, or the weight-delta branches of delta.go), so several
// share one target and can be added, removed and rescaled by name. A DoRA
// branch (dora.go) also sits in a LoraAdapter: it adds the change of the
// target's rescaled weight.

// NewLinearLora makes a LoRA branch for a Linear(in, out).
func NewLinearLora(name string, in, out, rank int64, scale float64) *Chain {
	c := NewNamed("LinearLora", Sequence,
		NewLinear(in, rank, false),
		NewLinear(rank, out, false),
		NewMultiply(scale, 0),
	)
	c.Label = name
	c.Args = fmt.Sprintf("in_features=%d, out_features=%d, name=%s", in, out, name)
	return c
}

// Conv2dLoraOptions are the down and up convolutions' geometry; Refiners'
// defaults are a 1×1 down and a 3×3 (padding 1) up convolution.
type Conv2dLoraOptions struct {
	Kernel, Stride, Padding [2]int64
}

// DefaultConv2dLora is Refiners' default Conv2dLora geometry.
var DefaultConv2dLora = Conv2dLoraOptions{Kernel: [2]int64{1, 3}, Stride: [2]int64{1, 1}, Padding: [2]int64{0, 1}}

// NewConv2dLora makes a LoRA branch for a Conv2d(in, out).
func NewConv2dLora(name string, in, out, rank int64, scale float64, o Conv2dLoraOptions) *Chain {
	c := NewNamed("Conv2dLora", Sequence,
		NewConv2d(in, rank, o.Kernel[0], ConvOptions{Stride: o.Stride[0], Padding: o.Padding[0], NoBias: true}),
		NewConv2d(rank, out, o.Kernel[1], ConvOptions{Stride: o.Stride[1], Padding: o.Padding[1], NoBias: true}),
		NewMultiply(scale, 0),
	)
	c.Label = name
	args := fmt.Sprintf("in_channels=%d, out_channels=%d", in, out)
	if o.Kernel != DefaultConv2dLora.Kernel {
		args += ", kernel_size=" + formatArg(o.Kernel)
	}
	if o.Stride != DefaultConv2dLora.Stride {
		args += ", stride=" + formatArg(o.Stride)
	}
	if o.Padding != DefaultConv2dLora.Padding {
		args += ", padding=" + formatArg(o.Padding)
	}
	c.Args = args + ", name=" + name
	return c
}

// IsLora reports whether m is a LoRA branch.
func IsLora(m Module) bool {
	c, ok := m.(*Chain)
	return ok && (c.typeName == "LinearLora" || c.typeName == "Conv2dLora")
}

// IsBranch reports whether m is a branch a LoraAdapter holds: a LoRA, a
// weight-delta branch (WeightDelta, LoHa, LoKr) or a DoRA.
func IsBranch(m Module) bool {
	switch m.(type) {
	case *DeltaBranch, *DoraBranch:
		return true
	}
	return IsLora(m)
}

// BranchName is a branch's name in its adapter.
func BranchName(branch Module) string {
	switch b := branch.(type) {
	case *Chain:
		return b.Label
	case *DeltaBranch:
		return b.Label
	case *DoraBranch:
		return b.Label
	}
	return ""
}

// LoraScale returns a branch's scale.
func LoraScale(branch Module) float64 {
	switch b := branch.(type) {
	case *DeltaBranch:
		return b.Scale
	case *DoraBranch:
		return b.Scale
	case *Chain:
		for _, m := range b.children {
			if mul, ok := m.(*Multiply); ok {
				return mul.Scale
			}
		}
	}
	return 1
}

// SetLoraScale changes a branch's scale.
func SetLoraScale(branch Module, scale float64) {
	switch b := branch.(type) {
	case *DeltaBranch:
		b.Scale = scale
	case *DoraBranch:
		b.Scale = scale
	case *Chain:
		for _, m := range b.children {
			if mul, ok := m.(*Multiply); ok {
				mul.Scale = scale
			}
		}
	}
}

// NewLoraAdapter wraps target with branches (LoRAs, weight deltas); Inject
// it to apply them.
func NewLoraAdapter(target Module, branches ...Module) (*Chain, error) {
	if err := loraFits(target, branches...); err != nil {
		return nil, err
	}
	children := []Module{target}
	for _, b := range branches {
		attach(target, b)
		children = append(children, b)
	}
	return NewAdapter("LoraAdapter", Sum, target, children...)
}

// attach gives a weight-delta branch its target's geometry, and a DoRA
// branch its target.
func attach(target, branch Module) {
	switch d := branch.(type) {
	case *DeltaBranch:
		d.attach(target)
	case *DoraBranch:
		d.attach(target)
	}
}

// AddLora adds a branch to a LoraAdapter; its name must be new.
func AddLora(adapter *Chain, branch Module) error {
	if adapter.TypeName() != "LoraAdapter" {
		return fmt.Errorf("AddLora: %s is not a LoraAdapter", adapter.TypeName())
	}
	name := BranchName(branch)
	for _, m := range adapter.children[1:] {
		if BranchName(m) == name {
			return fmt.Errorf("LoraAdapter already has a branch named %q", name)
		}
	}
	if err := loraFits(adapter.Target(), branch); err != nil {
		return err
	}
	attach(adapter.Target(), branch)
	return adapter.Append(branch)
}

// RemoveLora takes the named branch out of a LoraAdapter and returns it.
func RemoveLora(adapter *Chain, name string) (Module, error) {
	for _, m := range adapter.children[1:] {
		if BranchName(m) == name {
			return m, adapter.Remove(m)
		}
	}
	return nil, fmt.Errorf("LoraAdapter has no branch named %q (it has: %s)", name, strings.Join(LoraNames(adapter), ", "))
}

// LoraNames lists a LoraAdapter's branch names in order.
func LoraNames(adapter *Chain) []string {
	var names []string
	for _, m := range adapter.children[1:] {
		names = append(names, BranchName(m))
	}
	return names
}

// CheckLoraFit reports whether branches fit a target layer, without
// touching either.
func CheckLoraFit(target Module, branches ...Module) error { return loraFits(target, branches...) }

// loraFits checks that each branch's shapes fit the target layer.
func loraFits(target Module, branches ...Module) error {
	for _, b := range branches {
		switch d := b.(type) {
		case *DeltaBranch:
			if err := d.fits(target); err != nil {
				return err
			}
			continue
		case *DoraBranch:
			if err := d.fits(target); err != nil {
				return err
			}
			continue
		}
		if !IsLora(b) {
			return fmt.Errorf("%s is not a LoRA, weight-delta or DoRA branch", Describe(b))
		}
		l := b.(*Chain)
		down, up := l.children[0], l.children[1]
		switch t := target.(type) {
		case *Linear:
			d, ok1 := down.(*Linear)
			u, ok2 := up.(*Linear)
			if !ok1 || !ok2 || d.In != t.In || u.Out != t.Out {
				return fmt.Errorf("LoRA %q (%s) does not fit %s", l.Label, l.Args, Describe(t))
			}
		case *Conv2d:
			d, ok1 := down.(*Conv2d)
			u, ok2 := up.(*Conv2d)
			if !ok1 || !ok2 || d.In != t.In || u.Out != t.Out {
				return fmt.Errorf("LoRA %q (%s) does not fit %s", l.Label, l.Args, Describe(t))
			}
		default:
			return fmt.Errorf("LoRA targets a Linear or a Conv2d, not %s", Describe(target))
		}
	}
	return nil
}

func init() {
	leaf("LinearLora", "low-rank branch for a Linear", []ArgSpec{
		req("name", StringArg, "the LoRA's name in its adapter"), atLeast(1, req("in_features", IntArg, "")), atLeast(1, req("out_features", IntArg, "")),
		atLeast(1, opt("rank", IntArg, int64(16), "")), opt("scale", FloatArg, 1.0, ""),
	}, func(a *Args) (Module, error) {
		return NewLinearLora(a.String("name"), a.Int("in_features"), a.Int("out_features"), a.Int("rank"), a.Float("scale")), nil
	})
	leaf("Conv2dLora", "low-rank branch for a Conv2d", []ArgSpec{
		req("name", StringArg, ""), atLeast(1, req("in_channels", IntArg, "")), atLeast(1, req("out_channels", IntArg, "")),
		atLeast(1, opt("rank", IntArg, int64(16), "")), opt("scale", FloatArg, 1.0, ""),
		atLeast(1, opt("kernel_size", IntsArg, []int64{1, 3}, "down and up kernel sizes")),
		atLeast(1, opt("stride", IntsArg, []int64{1, 1}, "down and up strides")),
		atLeast(0, opt("padding", IntsArg, []int64{0, 1}, "down and up paddings")),
	}, func(a *Args) (Module, error) {
		var o Conv2dLoraOptions
		for _, f := range []struct {
			name string
			dst  *[2]int64
		}{{"kernel_size", &o.Kernel}, {"stride", &o.Stride}, {"padding", &o.Padding}} {
			v := a.Ints(f.name)
			if len(v) != 2 {
				return nil, fmt.Errorf("Conv2dLora: %s wants 2 values (down, up), got %v", f.name, v)
			}
			*f.dst = [2]int64{v[0], v[1]}
		}
		return NewConv2dLora(a.String("name"), a.Int("in_channels"), a.Int("out_channels"), a.Int("rank"), a.Float("scale"), o), nil
	})
	// In a description, a LoraAdapter lists its target first, then its
	// branches: the tree as it is after injection.
	chainKind("LoraAdapter", "a target plus LoRA, weight-delta or DoRA branches, summed", nil, func(a *Args, children []Module) (Module, error) {
		if len(children) < 1 {
			return nil, fmt.Errorf("LoraAdapter: the first child is the target")
		}
		for _, m := range children[1:] {
			if !IsBranch(m) {
				return nil, fmt.Errorf("LoraAdapter: %s is not a LoRA, weight-delta or DoRA branch", Describe(m))
			}
		}
		c, err := NewLoraAdapter(children[0], children[1:]...)
		if err != nil {
			return nil, err
		}
		c.adapter.injected = true // described in place: ejecting restores the target
		return c, nil
	})
}
