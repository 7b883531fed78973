package core

import (
	"fmt"

	"github.com/refiners-go/refiners/core/tensor"
)

// Linear is y = x Wᵀ + b with W shaped [out, in].
type Linear struct {
	In, Out int64
	UseBias bool
	Precision
	Weight *tensor.Tensor
	Bias   *tensor.Tensor
}

// NewLinear declares a Linear layer; weights come from a state dict or Init.
func NewLinear(in, out int64, bias bool) *Linear {
	return &Linear{In: in, Out: out, UseBias: bias}
}

func (l *Linear) Params() []Param {
	ps := []Param{{Name: "weight", Shape: []int64{l.Out, l.In}, DType: l.DType, Value: &l.Weight}}
	if l.UseBias {
		ps = append(ps, Param{Name: "bias", Shape: []int64{l.Out}, DType: l.DType, Value: &l.Bias})
	}
	return ps
}

func (l *Linear) Describe() string {
	return weighted(describe("Linear", "in_features", l.In, "out_features", l.Out), l.Params()[0])
}

func (l *Linear) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if err := loaded(l); err != nil {
		return nil, err
	}
	return unary(f, "Linear", in, func(x *tensor.Tensor) *tensor.Tensor { return f.Linear(x, l.Weight, l.Bias) })
}

// loaded reports the first parameter of m that has no tensor yet.
func loaded(m Weighted) error {
	for _, p := range m.Params() {
		if !(*p.Value).Valid() {
			return fmt.Errorf("parameter %q is not loaded", p.Name)
		}
	}
	return nil
}
