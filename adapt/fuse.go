package adapt

import (
	"errors"
	"fmt"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/sdk"
)

// Fused is a plan merged into the model's weights (no extra layers at run
// time). The original weights are kept, so Unfuse restores them bit for
// bit; the cost is one copy of each adapted weight.
type Fused struct {
	originals map[**tensor.Tensor]*tensor.Tensor
	Report    *sdk.Report
}

// Fuse adds each patch's weight change to its target's weight: a LoRA's
// low-rank product scale·up·down, or a weight-delta branch's scale·ΔW (and
// a WeightDelta's scale·Δb to the bias); a DoRA branch rescales the weight
// as fused so far (dora.go). LoRAs on Linear targets, and on Conv2d targets
// whose branch has a 1×1 down or up convolution, can be fused, as can every
// weight-delta and DoRA branch; other plans are refused before anything
// changes.
func Fuse(s *tensor.Scope, m *core.Chain, plan *sdk.Plan, files map[string]*weights.File) (*Fused, error) {
	for i, p := range plan.Patches {
		if p.Kind == InsertKind {
			return nil, fmt.Errorf("patch %d (%s): insert patches add layers, they cannot be fused into weights; apply them instead", i, p.Target)
		}
	}
	work, err := prepare(s, m, plan, files)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, w := range work {
			core.ReleaseParams(w.branch)
		}
	}()
	c := s.Child()
	defer c.Close()
	type update struct {
		slot  **tensor.Tensor
		value *tensor.Tensor
	}
	var updates []update
	pending := map[**tensor.Tensor]*tensor.Tensor{} // several branches on one weight apply in order
	change := func(slot **tensor.Tensor, next func(cur *tensor.Tensor) *tensor.Tensor) {
		cur, seen := pending[slot]
		if !seen {
			cur = *slot
			updates = append(updates, update{slot: slot})
		}
		pending[slot] = next(cur)
	}
	add := func(slot **tensor.Tensor, delta *tensor.Tensor) {
		change(slot, func(cur *tensor.Tensor) *tensor.Tensor { return c.Add(cur, c.ToDType(delta, cur.DType())) })
	}
	for _, w := range work {
		if d, ok := w.branch.(*core.DoraBranch); ok {
			if err := fuseDora(c, w.target, d, change); err != nil {
				return nil, fmt.Errorf("fuse %s: %w", w.patch.Target, err)
			}
			continue
		}
		if d, ok := w.branch.(*core.DeltaBranch); ok {
			weight, bias, err := targetSlots(w.target)
			if err != nil {
				return nil, fmt.Errorf("fuse %s: %w", w.patch.Target, err)
			}
			dw, db := d.Delta(c)
			add(weight, c.Scale(dw, d.Scale))
			if db != nil {
				add(bias, c.Scale(db, d.Scale))
			}
			continue
		}
		slot, delta, err := loraDelta(c, w.target, w.branch.(*core.Chain))
		if err != nil {
			return nil, fmt.Errorf("fuse %s: %w", w.patch.Target, err)
		}
		add(slot, delta)
	}
	if err := c.TakeErr(); err != nil {
		return nil, fmt.Errorf("fuse: %w", err)
	}
	f := &Fused{originals: map[**tensor.Tensor]*tensor.Tensor{}, Report: plan.Report}
	for _, u := range updates {
		f.originals[u.slot] = *u.slot
		*u.slot = c.Escape(c.Contiguous(pending[u.slot]))
	}
	return f, c.Err()
}

// Unfuse puts the original weights back.
func (f *Fused) Unfuse() error {
	if f.originals == nil {
		return errors.New("unfuse: already unfused")
	}
	for slot, orig := range f.originals {
		(*slot).Drop()
		*slot = orig
	}
	f.originals = nil
	return nil
}

// targetSlots are a Linear's or Conv2d's weight and bias fields.
func targetSlots(target core.Module) (weight, bias **tensor.Tensor, err error) {
	switch t := target.(type) {
	case *core.Linear:
		return &t.Weight, &t.Bias, nil
	case *core.Conv2d:
		return &t.Weight, &t.Bias, nil
	}
	return nil, nil, fmt.Errorf("cannot fuse into %s", core.Describe(target))
}

// loraDelta is the weight change a LoRA branch stands for, and the target
// weight slot it applies to.
func loraDelta(s *tensor.Scope, target core.Module, branch *core.Chain) (**tensor.Tensor, *tensor.Tensor, error) {
	kids := branch.Children()
	scale := core.LoraScale(branch)
	switch t := target.(type) {
	case *core.Linear:
		down, up := kids[0].(*core.Linear), kids[1].(*core.Linear)
		return &t.Weight, s.Scale(s.Matmul(up.Weight, down.Weight), scale), nil
	case *core.Conv2d:
		down, up := kids[0].(*core.Conv2d), kids[1].(*core.Conv2d)
		// The down convolution may carry the target's stride (LoCon on a
		// downsampler) when the up one is 1x1: both then sample the same
		// positions and the sum is one convolution.
		one := [2]int64{1, 1}
		if up.Stride != one || (down.Stride != one && (up.Kernel != one || down.Stride != t.Stride)) {
			return nil, nil, fmt.Errorf("a strided LoRA convolution cannot be fused (down stride %v, up stride %v, target stride %v)", down.Stride, up.Stride, t.Stride)
		}
		r := down.Out
		switch {
		case down.Kernel == one && down.Stride == one && t.Stride == one:
			// delta[o,i,h,w] = Σr up[o,r,h,w]·down[r,i]
			kh, kw := up.Kernel[0], up.Kernel[1]
			if up.Kernel != t.Kernel || up.Padding != t.Padding {
				return nil, nil, fmt.Errorf("up kernel %v padding %v differ from the target's %v %v", up.Kernel, up.Padding, t.Kernel, t.Padding)
			}
			u := s.Reshape(s.Permute(up.Weight, 0, 2, 3, 1), up.Out*kh*kw, r)
			d := s.Reshape(down.Weight, r, down.In)
			delta := s.Permute(s.Reshape(s.Matmul(u, d), up.Out, kh, kw, down.In), 0, 3, 1, 2)
			return &t.Weight, s.Scale(delta, scale), nil
		case up.Kernel == one:
			// delta[o,i,h,w] = Σr up[o,r]·down[r,i,h,w]
			kh, kw := down.Kernel[0], down.Kernel[1]
			if down.Kernel != t.Kernel || down.Padding != t.Padding || down.Stride != t.Stride {
				return nil, nil, fmt.Errorf("down kernel %v padding %v stride %v differ from the target's %v %v %v", down.Kernel, down.Padding, down.Stride, t.Kernel, t.Padding, t.Stride)
			}
			u := s.Reshape(up.Weight, up.Out, r)
			d := s.Reshape(down.Weight, r, down.In*kh*kw)
			return &t.Weight, s.Scale(s.Reshape(s.Matmul(u, d), up.Out, down.In, kh, kw), scale), nil
		}
		return nil, nil, fmt.Errorf("a LoRA with two %v/%v convolutions is not a single convolution; apply it at run time", down.Kernel, up.Kernel)
	}
	return nil, nil, fmt.Errorf("cannot fuse into %s", core.Describe(target))
}
