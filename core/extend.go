package core

import "github.com/refiners-go/refiners/core/tensor"

// What a package outside core needs to add layers: model packages
// (models/sd15, models/clip, ...) write their model-specific layers with
// these and register them in init(), so that core itself stays generic.
// A program (or a test) that builds specs using them imports the model
// package, usually through models/all.

// RegisterLeaf registers a layer type without children; build reads its
// arguments from a.
func RegisterLeaf(name, doc string, args []ArgSpec, build func(a *Args) (Module, error)) {
	leaf(name, doc, args, build)
}

// RequiredArg declares an argument a description must give.
func RequiredArg(name string, k ArgKind, doc string) ArgSpec { return req(name, k, doc) }

// OptionalArg declares an argument with a default.
func OptionalArg(name string, k ArgKind, def any, doc string) ArgSpec { return opt(name, k, def, doc) }

// AtLeast bounds an integer argument (or each of a list of them) from
// below: sizes positive, paddings non-negative.
func AtLeast(min int64, s ArgSpec) ArgSpec { return atLeast(min, s) }

// DescribeArgs formats "Name(k1=v1, k2=v2)" from alternating keys and
// values, as Refiners prints a module's constructor arguments.
func DescribeArgs(name string, kv ...any) string { return describe(name, kv...) }

// DescribeWeighted appends the device and dtype of a weighted module's
// first parameter to its description, as Refiners prints them.
func DescribeWeighted(base string, p Param) string { return weighted(base, p) }

// OneInput checks that a layer got exactly one input.
func OneInput(name string, in Tensors) (*tensor.Tensor, error) { return one(name, in) }

// Unary runs the body of a one-input, one-output layer.
func Unary(f *Frame, name string, in Tensors, body func(x *tensor.Tensor) *tensor.Tensor) (Tensors, error) {
	return unary(f, name, in, body)
}

// HoldForCall returns a handle on t that lives until the current call
// (core.Forward) ends, for values a layer keeps in a context for later
// layers of the same call.
func (f *Frame) HoldForCall(t *tensor.Tensor) *tensor.Tensor {
	h := f.Escape(f.ShallowCopy(t))
	if h.Valid() {
		f.run.owned = append(f.run.owned, h)
	}
	return h
}
