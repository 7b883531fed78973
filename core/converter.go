package core

import (
	"fmt"

	"github.com/refiners-go/refiners/core/tensor"
)

func init() {
	leaf("Converter", "casts its inputs to the device and/or dtype of its parent chain's first weights", []ArgSpec{
		opt("set_device", BoolArg, true, ""), opt("set_dtype", BoolArg, true, ""),
	}, func(a *Args) (Module, error) {
		return &Converter{SetDevice: a.Bool("set_device"), SetDType: a.Bool("set_dtype")}, nil
	})
}

// Converter casts its inputs to the device and/or dtype of the first
// weights in its parent chain, e.g. float32 features to a bfloat16 model.
type Converter struct {
	SetDevice, SetDType bool
}

func (l *Converter) Describe() string {
	var kv []any
	if !l.SetDevice {
		kv = append(kv, "set_device", false)
	}
	if !l.SetDType {
		kv = append(kv, "set_dtype", false)
	}
	return describe("Converter", kv...)
}

func (l *Converter) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if f.chain == nil {
		return nil, fmt.Errorf("Converter: no parent chain to take a device and dtype from")
	}
	var ref *Param
	f.chain.Walk(func(m Module, _ *Chain, _ string) bool {
		if w, ok := m.(Weighted); ok && ref == nil {
			if ps := w.Params(); len(ps) > 0 {
				ref = &ps[0]
			}
		}
		return ref == nil
	})
	if ref == nil {
		return nil, fmt.Errorf("Converter: parent %s has no weights to take a device and dtype from", f.chain.TypeName())
	}
	dtype, device := ref.DType, tensor.CPU
	if w := *ref.Value; w.Valid() {
		dtype, device = w.DType(), w.Device()
	}
	out := make(Tensors, len(in))
	for i, x := range in {
		y := x
		if l.SetDevice && y.Device() != device {
			y = f.To(y, device)
		}
		if l.SetDType && y.DType() != dtype {
			y = f.ToDType(y, dtype)
		}
		out[i] = y
	}
	return out, f.Err()
}
