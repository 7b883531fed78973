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
	return unary(f, "Linear", in, func(x *tensor.Tensor) *tensor.Tensor {
		if s := x.Shape(); len(s) == 0 || s[len(s)-1] != l.In {
			f.Failf("Linear(in_features=%d): input of shape %s, whose last dim is not %d", l.In, FormatShape(s), l.In)
			return nil
		}
		return f.Linear(x, l.Weight, l.Bias)
	})
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

// NewMultiLinear is Refiners' MultiLinear: numLayers Linear layers with a
// ReLU between each two, input_dim → inner_dim → … → output_dim, as a chain
// named MultiLinear (keys Linear_1, ReLU_1, …, Linear_<numLayers>).
func NewMultiLinear(inputDim, outputDim, innerDim, numLayers int64) (*Chain, error) {
	if numLayers < 1 {
		return nil, fmt.Errorf("MultiLinear: num_layers must be at least 1, got %d", numLayers)
	}
	var layers []Module
	for i := int64(0); i < numLayers-1; i++ {
		in := innerDim
		if i == 0 {
			in = inputDim
		}
		layers = append(layers, NewLinear(in, innerDim, true), NewReLU())
	}
	// As in Refiners, the last layer reads inner_dim features, also when
	// there is a single layer.
	layers = append(layers, NewLinear(innerDim, outputDim, true))
	return NewNamed("MultiLinear", Sequence, layers...), nil
}
