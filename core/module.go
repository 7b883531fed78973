// Package core is the model framework: a model is a tree of Modules whose
// inner nodes are Chains. Chains say how their children combine (in
// sequence, summed, in parallel, ...), contexts carry conditioning inputs to
// deeply nested layers, and adapters patch the tree and unpatch it exactly.
package core

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/refiners-go/refiners/core/tensor"
)

// Tensors is what flows between modules: a module takes a tuple of tensors
// and returns one, which a Chain spreads into its next child's inputs.
type Tensors = []*tensor.Tensor

// Module is a node of the model tree.
//
// Forward must return either new tensors it made in f or tensors it was given
// as inputs, never a tensor it keeps (a weight, a context value): hand out a
// f.ShallowCopy of those, so the receiver may always drop what it gets.
type Module interface {
	Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error)
}

// Described modules print their key arguments in the tree,
// e.g. "Linear(in_features=4, out_features=8)".
type Described interface {
	Describe() string
}

// Typed modules report the type name used in keys and prints; other modules
// use their Go type name.
type Typed interface {
	TypeName() string
}

// Weighted modules hold parameters.
type Weighted interface {
	Params() []Param
}

// Param is one named parameter slot of a module. Shape is what the module
// expects; Value points at the module's field so loading can fill it.
type Param struct {
	Name  string
	Shape []int64
	DType tensor.DType
	Value **tensor.Tensor
}

// TypeName is m's type name: the base of its key in a parent Chain.
func TypeName(m Module) string {
	if t, ok := m.(Typed); ok {
		return t.TypeName()
	}
	t := reflect.TypeOf(m)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.Name()
}

// Describe is m's one-line description.
func Describe(m Module) string {
	if d, ok := m.(Described); ok {
		return d.Describe()
	}
	return TypeName(m) + "()"
}

// Frame is one call of a module: the tensor scope its results go into, plus
// the chain of enclosing calls through which contexts are looked up. It
// embeds the scope, so layer code reads as a list of ops: f.Linear(x, w, b).
type Frame struct {
	*tensor.Scope
	ctx    context.Context
	parent *Frame
	chain  *Chain // the chain running this frame's module as a child; nil at the root
	run    *runState
	path   string // dotted path from the called module, kept only when tracing
}

// Context returns the cancellation context of the call.
func (f *Frame) Context() context.Context { return f.ctx }

// Contexts seed values for a call: context name → key → value.
type Contexts map[string]map[string]any

// Call holds the options of one top-level forward pass.
type Call struct {
	// Ctx cancels the pass between layers; nil means never.
	Ctx context.Context
	// Contexts seed the root's context store, as Chain.SetContext does but
	// for this call only.
	Contexts Contexts
	// Progress, if set, is called on the calling goroutine after each child
	// of the called chain returns: a long pass reports where it is.
	Progress func(Progress)
	// Trace, if set, is called after every layer below the called module
	// returns, with its dotted path from the called module and its outputs
	// (which it must not keep): what a model summary prints.
	Trace func(path string, m Module, out Tensors)
}

// Progress says how far a pass has come: Done of the called chain's Total
// children have run, the last one being Layer.
type Progress struct {
	Done, Total int
	Layer       string
}

// Forward runs m on in with no extra options.
func Forward(s *tensor.Scope, m Module, in ...*tensor.Tensor) (Tensors, error) {
	return Call{}.Forward(s, m, in...)
}

// Forward runs m on in. Outputs belong to s; everything else the pass made
// is released before it returns.
func (c Call) Forward(s *tensor.Scope, m Module, in ...*tensor.Tensor) (Tensors, error) {
	if err := s.Err(); err != nil {
		return nil, err // an earlier failure, not this pass's
	}
	ctx := c.Ctx
	if ctx == nil {
		ctx = context.Background()
	}
	run := &runState{stores: map[*Chain]Contexts{}, progress: c.Progress, trace: c.Trace}
	defer run.release()
	root := &Frame{Scope: s.Child(), ctx: ctx, run: run}
	for name, kv := range c.Contexts {
		for k, v := range kv {
			root.storeContext(nil, name, k, v)
		}
	}
	out, err := m.Forward(root, in...)
	var ret *returnSignal
	if errors.As(err, &ret) {
		out, err = ret.out, nil
	}
	if err == nil {
		err = root.Err()
	}
	if err != nil {
		root.TakeErr() // returned to the caller, not left in s
		root.Close()
		return nil, err
	}
	root.Close(out...)
	return out, nil
}

// runState is what one forward pass shares across its frames.
type runState struct {
	// stores holds values set during this pass, per providing chain (nil
	// for the root of the call).
	stores map[*Chain]Contexts
	// owned are tensor handles the stores hold; dropped when the pass ends.
	owned    []*tensor.Tensor
	progress func(Progress)
	trace    func(string, Module, Tensors)
}

func (r *runState) release() {
	for _, t := range r.owned {
		t.Drop()
	}
	r.owned = nil
}

// enter opens the frame for a child of chain c.
func (f *Frame) enter(c *Chain) *Frame {
	return &Frame{Scope: f.Scope.Child(), ctx: f.ctx, parent: f, chain: c, run: f.run}
}

// ForwardError says which layer of the tree a failure happened in.
type ForwardError struct {
	Path []string // keys from the called module down to the failing layer
	Err  error
}

func (e *ForwardError) Error() string {
	return fmt.Sprintf("forward %s: %v", strings.Join(e.Path, "."), e.Err)
}

func (e *ForwardError) Unwrap() error { return e.Err }

func inLayer(key string, err error) error {
	if fe, ok := err.(*ForwardError); ok {
		fe.Path = append([]string{key}, fe.Path...)
		return fe
	}
	return &ForwardError{Path: []string{key}, Err: err}
}

// one checks that a layer got exactly one input.
func one(name string, in Tensors) (*tensor.Tensor, error) {
	if len(in) != 1 {
		return nil, fmt.Errorf("%s takes 1 input, got %d", name, len(in))
	}
	return in[0], nil
}

// unary runs a one-input, one-output layer body.
func unary(f *Frame, name string, in Tensors, body func(x *tensor.Tensor) *tensor.Tensor) (Tensors, error) {
	x, err := one(name, in)
	if err != nil {
		return nil, err
	}
	y := body(x)
	if err := f.Err(); err != nil {
		return nil, err
	}
	return Tensors{y}, nil
}
