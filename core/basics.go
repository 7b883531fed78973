package core

import (
	"fmt"

	"github.com/refiners-go/refiners/core/tensor"
)

// Identity returns its inputs.
type Identity struct{}

func NewIdentity() *Identity { return &Identity{} }

func (*Identity) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) { return in, nil }

// GetArg returns input Index.
type GetArg struct{ Index int }

func NewGetArg(i int) *GetArg { return &GetArg{Index: i} }

func (l *GetArg) Describe() string { return describe("GetArg", "index", l.Index) }

func (l *GetArg) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if l.Index < 0 || l.Index >= len(in) {
		return nil, fmt.Errorf("GetArg: index %d with %d inputs", l.Index, len(in))
	}
	return Tensors{in[l.Index]}, nil
}

// Shape is a family of parameter-free shape layers; each is a small struct
// so that it prints and names like its Refiners counterpart.

// Flatten merges dims Start..End.
type Flatten struct{ Start, End int64 }

func NewFlatten(start, end int64) *Flatten { return &Flatten{Start: start, End: end} }

func (l *Flatten) Describe() string {
	var kv []any
	if l.Start != 0 {
		kv = append(kv, "start_dim", l.Start)
	}
	if l.End != -1 {
		kv = append(kv, "end_dim", l.End)
	}
	return describe("Flatten", kv...)
}

func (l *Flatten) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	return unary(f, "Flatten", in, func(x *tensor.Tensor) *tensor.Tensor { return f.Flatten(x, l.Start, l.End) })
}

// Unflatten splits Dim into Sizes or, when Sizes is empty, into the sizes
// given by its second input (an int64 tensor), as Refiners' Unflatten.
type Unflatten struct {
	Dim   int64
	Sizes []int64
}

func NewUnflatten(dim int64, sizes ...int64) *Unflatten { return &Unflatten{Dim: dim, Sizes: sizes} }

func (l *Unflatten) Describe() string { return describe("Unflatten", "dim", l.Dim) }

func (l *Unflatten) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if len(l.Sizes) > 0 {
		return unary(f, "Unflatten", in, func(x *tensor.Tensor) *tensor.Tensor { return f.Unflatten(x, l.Dim, l.Sizes...) })
	}
	if len(in) != 2 {
		return nil, fmt.Errorf("Unflatten without sizes takes x and sizes, got %d inputs", len(in))
	}
	sizes := f.Int64s(in[1])
	if f.Err() != nil {
		return nil, f.Err()
	}
	return Tensors{f.Unflatten(in[0], l.Dim, sizes...)}, f.Err()
}

// Reshape keeps the batch dim and reshapes the rest to Shape.
type Reshape struct{ Shape []int64 }

func NewReshape(shape ...int64) *Reshape { return &Reshape{Shape: shape} }

func (l *Reshape) Describe() string { return describe("Reshape", "shape", l.Shape) }

func (l *Reshape) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	return unary(f, "Reshape", in, func(x *tensor.Tensor) *tensor.Tensor {
		return f.Reshape(x, append([]int64{x.Shape()[0]}, l.Shape...)...)
	})
}

// Transpose swaps two dims.
type Transpose struct{ Dim0, Dim1 int64 }

func NewTranspose(a, b int64) *Transpose { return &Transpose{Dim0: a, Dim1: b} }

func (l *Transpose) Describe() string { return describe("Transpose", "dim0", l.Dim0, "dim1", l.Dim1) }

func (l *Transpose) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	return unary(f, "Transpose", in, func(x *tensor.Tensor) *tensor.Tensor { return f.Transpose(x, l.Dim0, l.Dim1) })
}

// Permute reorders dims.
type Permute struct{ Dims []int64 }

func NewPermute(dims ...int64) *Permute { return &Permute{Dims: dims} }

func (l *Permute) Describe() string { return describe("Permute", "dims", l.Dims) }

func (l *Permute) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	return unary(f, "Permute", in, func(x *tensor.Tensor) *tensor.Tensor { return f.Permute(x, l.Dims...) })
}

// Squeeze removes Dim if it has size 1.
type Squeeze struct{ Dim int64 }

func NewSqueeze(dim int64) *Squeeze { return &Squeeze{Dim: dim} }

func (l *Squeeze) Describe() string { return describe("Squeeze", "dim", l.Dim) }

func (l *Squeeze) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	return unary(f, "Squeeze", in, func(x *tensor.Tensor) *tensor.Tensor { return f.Squeeze(x, l.Dim) })
}

// Unsqueeze inserts a dim of size 1.
type Unsqueeze struct{ Dim int64 }

func NewUnsqueeze(dim int64) *Unsqueeze { return &Unsqueeze{Dim: dim} }

func (l *Unsqueeze) Describe() string { return describe("Unsqueeze", "dim", l.Dim) }

func (l *Unsqueeze) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	return unary(f, "Unsqueeze", in, func(x *tensor.Tensor) *tensor.Tensor { return f.Unsqueeze(x, l.Dim) })
}

// Slicing takes Start:End:Step along Dim with Python's index semantics.
type Slicing struct{ Dim, Start, End, Step int64 }

// SliceToEnd is an End meaning "to the end of the dim".
const SliceToEnd = int64(1<<63 - 1)

func NewSlicing(dim, start, end, step int64) *Slicing {
	return &Slicing{Dim: dim, Start: start, End: end, Step: step}
}

func (l *Slicing) Describe() string {
	var kv []any
	for _, a := range []struct {
		name     string
		v, unset int64
	}{{"dim", l.Dim, 0}, {"start", l.Start, 0}, {"end", l.End, SliceToEnd}, {"step", l.Step, 1}} {
		if a.v != a.unset {
			kv = append(kv, a.name, a.v)
		}
	}
	return describe("Slicing", kv...)
}

func (l *Slicing) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	return unary(f, "Slicing", in, func(x *tensor.Tensor) *tensor.Tensor { return f.Slice(x, l.Dim, l.Start, l.End, l.Step) })
}

// Chunk splits its input into Chunks parts along Dim.
type Chunk struct{ Chunks, Dim int64 }

func NewChunk(chunks, dim int64) *Chunk { return &Chunk{Chunks: chunks, Dim: dim} }

func (l *Chunk) Describe() string { return describe("Chunk", "chunks", l.Chunks, "dim", l.Dim) }

func (l *Chunk) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	x, err := one("Chunk", in)
	if err != nil {
		return nil, err
	}
	return f.Chunk(x, l.Chunks, l.Dim), f.Err()
}

// Multiply is x·Scale + Bias.
type Multiply struct{ Scale, Bias float64 }

func NewMultiply(scale, bias float64) *Multiply { return &Multiply{Scale: scale, Bias: bias} }

func (l *Multiply) Describe() string {
	var kv []any
	if l.Scale != 1 {
		kv = append(kv, "scale", l.Scale)
	}
	if l.Bias != 0 {
		kv = append(kv, "bias", l.Bias)
	}
	return describe("Multiply", kv...)
}

func (l *Multiply) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	return unary(f, "Multiply", in, func(x *tensor.Tensor) *tensor.Tensor {
		return f.AddScalar(f.Scale(x, l.Scale), l.Bias)
	})
}

// Parameter outputs a learned tensor of shape Dims, expanded over the batch
// of its input.
type Parameter struct {
	Dims []int64
	Precision
	Weight *tensor.Tensor
}

func NewParameter(dims ...int64) *Parameter { return &Parameter{Dims: dims} }

func (l *Parameter) Params() []Param {
	return []Param{{Name: "weight", Shape: l.Dims, DType: l.DType, Value: &l.Weight}}
}

func (l *Parameter) Describe() string {
	return weighted(describe("Parameter", "dims", l.Dims), l.Params()[0])
}

func (l *Parameter) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if err := loaded(l); err != nil {
		return nil, err
	}
	return unary(f, "Parameter", in, func(x *tensor.Tensor) *tensor.Tensor {
		return f.Expand(l.Weight, append([]int64{x.Shape()[0]}, l.Dims...)...)
	})
}

// Func is a named parameter-free function: the Go counterpart of Refiners'
// Lambda. The name is what the tree print shows.
type Func struct {
	Name string
	Fn   func(f *Frame, in Tensors) (Tensors, error)
}

// NewFunc wraps fn as a layer.
func NewFunc(name string, fn func(f *Frame, in Tensors) (Tensors, error)) *Func {
	return &Func{Name: name, Fn: fn}
}

func (l *Func) TypeName() string { return "Lambda" }
func (l *Func) Describe() string { return "Lambda(" + l.Name + ")" }

func (l *Func) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) { return l.Fn(f, in) }

// Return ends the whole forward pass early with its input as the result,
// e.g. to read features out of the middle of a model.
type Return struct{}

func NewReturn() *Return { return &Return{} }

func (*Return) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	return nil, &returnSignal{out: in}
}

// returnSignal travels up as an error until Call.Forward turns it back into
// outputs.
type returnSignal struct{ out Tensors }

func (*returnSignal) Error() string { return "Return outside a forward call" }
