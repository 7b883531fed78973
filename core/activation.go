package core

import (
	"fmt"

	"github.com/refiners-go/refiners/core/tensor"
)

// Activation is an element-wise function with no parameters.
type Activation struct {
	name string
	args string
	fn   func(f *Frame, x *tensor.Tensor) *tensor.Tensor
}

func (a *Activation) TypeName() string { return a.name }
func (a *Activation) Describe() string { return a.name + "(" + a.args + ")" }

func (a *Activation) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	return unary(f, a.name, in, func(x *tensor.Tensor) *tensor.Tensor { return a.fn(f, x) })
}

// NewReLU is max(x, 0).
func NewReLU() *Activation {
	return &Activation{name: "ReLU", fn: func(f *Frame, x *tensor.Tensor) *tensor.Tensor { return f.ReLU(x) }}
}

// NewSiLU is x·sigmoid(x).
func NewSiLU() *Activation {
	return &Activation{name: "SiLU", fn: func(f *Frame, x *tensor.Tensor) *tensor.Tensor { return f.SiLU(x) }}
}

// NewSigmoid is 1/(1+e^-x).
func NewSigmoid() *Activation {
	return &Activation{name: "Sigmoid", fn: func(f *Frame, x *tensor.Tensor) *tensor.Tensor { return f.Sigmoid(x) }}
}

// NewTanh is tanh(x).
func NewTanh() *Activation {
	return &Activation{name: "Tanh", fn: func(f *Frame, x *tensor.Tensor) *tensor.Tensor { return f.Tanh(x) }}
}

// NewSin is sin(x), used by sinusoidal embeddings.
func NewSin() *Activation {
	return &Activation{name: "Sin", fn: func(f *Frame, x *tensor.Tensor) *tensor.Tensor { return f.Sin(x) }}
}

// NewCos is cos(x).
func NewCos() *Activation {
	return &Activation{name: "Cos", fn: func(f *Frame, x *tensor.Tensor) *tensor.Tensor { return f.Cos(x) }}
}

// GeLU approximations.
const (
	GeLUExact   = "none"
	GeLUTanh    = "tanh"
	GeLUSigmoid = "sigmoid"
)

// NewGeLU is the Gaussian error linear unit: exact ("none"), with the tanh
// approximation, or with the sigmoid approximation x·sigmoid(1.702x).
func NewGeLU(approximation string) (*Activation, error) {
	switch approximation {
	case GeLUExact, GeLUTanh:
		return &Activation{name: "GeLU", args: geluArgs(approximation), fn: func(f *Frame, x *tensor.Tensor) *tensor.Tensor {
			return f.GeLU(x, approximation)
		}}, nil
	case GeLUSigmoid:
		return &Activation{name: "GeLU", args: geluArgs(approximation), fn: approximateGeLU}, nil
	}
	return nil, fmt.Errorf("GeLU: unknown approximation %q (want none, tanh or sigmoid)", approximation)
}

// geluArgs is empty whatever the approximation: Refiners prints GeLU()
// for all three, and tree prints are kept identical to Refiners'.
func geluArgs(string) string { return "" }

// NewApproximateGeLU is x·sigmoid(1.702x).
func NewApproximateGeLU() *Activation {
	return &Activation{name: "ApproximateGeLU", fn: approximateGeLU}
}

func approximateGeLU(f *Frame, x *tensor.Tensor) *tensor.Tensor {
	return f.Mul(x, f.Sigmoid(f.Scale(x, 1.702)))
}

// GLU splits the last dim in halves x, gate and returns x·act(gate).
type GLU struct {
	Act Module
}

// NewGLU gates with the given activation.
func NewGLU(act Module) *GLU { return &GLU{Act: act} }

func (l *GLU) Describe() string { return "GLU()" }

// Submodules shows the activation as the GLU's child in the tree print.
func (l *GLU) Submodules() []Module { return []Module{l.Act} }

func (l *GLU) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	x, err := one("GLU", in)
	if err != nil {
		return nil, err
	}
	halves := f.Chunk(x, 2, -1)
	if f.Err() != nil {
		return nil, f.Err()
	}
	gate, err := l.Act.Forward(f, halves[1])
	if err != nil {
		return nil, fmt.Errorf("GLU activation: %w", err)
	}
	return Tensors{f.Mul(halves[0], gate[0])}, f.Err()
}
