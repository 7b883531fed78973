package core

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/refiners-go/refiners/core/tensor"
)

// Kind says how a Chain combines its children.
type Kind int

const (
	// Sequence feeds each child's outputs to the next child.
	Sequence Kind = iota
	// Residual runs the children in sequence and adds the input.
	Residual
	// Sum gives every child the same inputs and adds their outputs.
	Sum
	// Parallel gives every child the same inputs and returns all outputs.
	Parallel
	// Distribute gives child i input i and returns all outputs.
	Distribute
	// Passthrough runs the children in sequence for their side effects
	// (setting contexts) and returns its inputs.
	Passthrough
	// Concatenate is Parallel followed by a cat along Dim.
	Concatenate
	// Matmul multiplies the outputs of its two children.
	Matmul
)

var kindInfo = [...]struct{ typeName, tag string }{
	Sequence:    {"Chain", "CHAIN"},
	Residual:    {"Residual", "RES"},
	Sum:         {"Sum", "SUM"},
	Parallel:    {"Parallel", "PAR"},
	Distribute:  {"Distribute", "DISTR"},
	Passthrough: {"Passthrough", "PASS"},
	Concatenate: {"Concatenate", "CAT"},
	Matmul:      {"Matmul", "MATMUL"},
}

func (k Kind) String() string { return kindInfo[k].typeName }

// Chain is an inner node of the model tree. Its children are named by type,
// with _1, _2, ... suffixes where a type repeats (Linear_1, Linear_2), and
// those names make the state-dict keys.
type Chain struct {
	kind     Kind
	typeName string // "" means the kind's own name
	// Dim is the concatenation axis of a Concatenate chain.
	Dim int64
	// Args are the constructor arguments the tree print shows for a named
	// chain, e.g. "embedding_dim=8, num_heads=2".
	Args string
	// Label names the chain among its siblings where the type does not,
	// e.g. a LoRA's name in its adapter. It is not part of keys.
	Label string
	// Provider makes the chain a context scope: values set below it stay
	// below it, and lookups from below see them before outer values.
	Provider bool
	// Own are parameters the chain itself holds besides its children's,
	// keyed <chain path>.<name> before the children's keys (Refiners: a
	// Chain's register_parameter, e.g. SAM MaskEncoder's
	// no_mask_embedding). Value points at the holder's field, as for a
	// layer's Params.
	Own []Param

	children []Module
	keys     []string
	parent   *Chain
	defaults Contexts      // set with SetContext; seen by every call
	adapter  *adapterState // non-nil for adapters (see NewAdapter)
}

// NewChain makes a Sequence chain.
func NewChain(children ...Module) *Chain { return newKind(Sequence, children) }

// NewResidual makes a Residual chain.
func NewResidual(children ...Module) *Chain { return newKind(Residual, children) }

// NewSum makes a Sum chain.
func NewSum(children ...Module) *Chain { return newKind(Sum, children) }

// NewParallel makes a Parallel chain.
func NewParallel(children ...Module) *Chain { return newKind(Parallel, children) }

// NewDistribute makes a Distribute chain.
func NewDistribute(children ...Module) *Chain { return newKind(Distribute, children) }

// NewPassthrough makes a Passthrough chain.
func NewPassthrough(children ...Module) *Chain { return newKind(Passthrough, children) }

// NewConcatenate makes a Concatenate chain joining outputs along dim.
func NewConcatenate(dim int64, children ...Module) *Chain {
	c := newKind(Concatenate, children)
	c.Dim = dim
	return c
}

// NewMatmul makes a Matmul chain of exactly two children.
func NewMatmul(input, other Module) *Chain { return newKind(Matmul, []Module{input, other}) }

// NewNamed makes a chain of the given kind with its own type name, the Go
// counterpart of subclassing a Refiners Chain (TransformerLayer, ...).
func NewNamed(typeName string, kind Kind, children ...Module) *Chain {
	c := newKind(kind, children)
	c.typeName = typeName
	return c
}

func newKind(k Kind, children []Module) *Chain {
	c := &Chain{kind: k}
	c.setChildren(children)
	return c
}

// Kind says how the chain combines its children.
func (c *Chain) Kind() Kind { return c.kind }

// TypeName is the chain's name in keys and prints.
func (c *Chain) TypeName() string {
	if c.typeName != "" {
		return c.typeName
	}
	return kindInfo[c.kind].typeName
}

// Tag is the short marker the tree print shows, e.g. RES for Residual.
func (c *Chain) Tag() string { return kindInfo[c.kind].tag }

// Describe is the chain's one-line description.
func (c *Chain) Describe() string {
	if c.kind == Concatenate && c.Args == "" {
		return fmt.Sprintf("%s(dim=%d)", c.TypeName(), c.Dim)
	}
	return c.TypeName() + "(" + c.Args + ")"
}

// Parent is the chain holding c, or nil for a root.
func (c *Chain) Parent() *Chain { return c.parent }

// Len is the number of children.
func (c *Chain) Len() int { return len(c.children) }

// Children returns the children in order (a copy of the list).
func (c *Chain) Children() []Module { return append([]Module(nil), c.children...) }

// Keys returns the children's names in order.
func (c *Chain) Keys() []string { return append([]string(nil), c.keys...) }

// At returns child i; negative i counts from the end.
func (c *Chain) At(i int) (Module, error) {
	if i < 0 {
		i += len(c.children)
	}
	if i < 0 || i >= len(c.children) {
		return nil, fmt.Errorf("%s: index %d out of range [0, %d)", c.TypeName(), i, len(c.children))
	}
	return c.children[i], nil
}

// Child returns the child with the given key.
func (c *Chain) Child(key string) (Module, error) {
	for i, k := range c.keys {
		if k == key {
			return c.children[i], nil
		}
	}
	return nil, fmt.Errorf("%s has no child %q (children: %v)", c.TypeName(), key, c.keys)
}

// KeyOf returns the key of child m in c.
func (c *Chain) KeyOf(m Module) (string, bool) {
	for i, ch := range c.children {
		if ch == m {
			return c.keys[i], true
		}
	}
	return "", false
}

func (c *Chain) indexOf(m Module) int {
	for i, ch := range c.children {
		if ch == m {
			return i
		}
	}
	return -1
}

// setChildren installs children, regenerates keys and parent links.
func (c *Chain) setChildren(children []Module) {
	c.children = children
	c.keys = uniqueKeys(children)
	for _, m := range children {
		if sub, ok := m.(*Chain); ok {
			sub.parent = c
		}
	}
}

// uniqueKeys names children by type; a type that appears more than once
// gets _1, _2, ... in order, a type that appears once keeps its bare name.
func uniqueKeys(children []Module) []string {
	count := map[string]int{}
	for _, m := range children {
		count[TypeName(m)]++
	}
	seen := map[string]int{}
	keys := make([]string, len(children))
	for i, m := range children {
		name := TypeName(m)
		if count[name] > 1 {
			seen[name]++
			keys[i] = name + "_" + strconv.Itoa(seen[name])
		} else {
			keys[i] = name
		}
	}
	return keys
}

// SetContext stores a default value seen by every call of this chain's
// tree (a call's own Contexts and values set during the call come first).
// The chain keeps value as given; a tensor stays owned by the caller.
func (c *Chain) SetContext(context, key string, value any) {
	if c.defaults == nil {
		c.defaults = Contexts{}
	}
	if c.defaults[context] == nil {
		c.defaults[context] = map[string]any{}
	}
	c.defaults[context][key] = value
}

// Forward runs the children as the chain's kind says.
func (c *Chain) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	switch c.kind {
	case Sequence, Passthrough:
		out, err := c.sequence(f, in)
		if err != nil || c.kind == Sequence {
			return out, err
		}
		for _, t := range out {
			f.releaseUnless(t, in)
		}
		return in, nil
	case Residual:
		x, err := one("Residual", in)
		if err != nil {
			return nil, err
		}
		out, err := c.sequence(f, in)
		if err != nil {
			return nil, err
		}
		if len(out) != 1 {
			return nil, fmt.Errorf("Residual: children returned %d outputs, want 1", len(out))
		}
		y := f.Add(out[0], x)
		f.releaseUnless(out[0], in)
		return Tensors{y}, f.Err()
	case Sum:
		var acc *tensor.Tensor
		for i := range c.children {
			out, err := c.call(f, i, in)
			if err != nil {
				return nil, err
			}
			for _, t := range out {
				if acc == nil {
					acc = t
					continue
				}
				next := f.Add(acc, t)
				f.releaseUnless(acc, in)
				f.releaseUnless(t, in)
				acc = next
			}
		}
		if acc == nil {
			return nil, fmt.Errorf("%s: no outputs to add", c.TypeName())
		}
		return Tensors{acc}, f.Err()
	case Parallel, Concatenate:
		var all Tensors
		for i := range c.children {
			out, err := c.call(f, i, in)
			if err != nil {
				return nil, err
			}
			all = append(all, out...)
		}
		if c.kind == Parallel {
			return all, nil
		}
		y := f.Cat(all, c.Dim)
		for _, t := range all {
			f.releaseUnless(t, in)
		}
		return Tensors{y}, f.Err()
	case Distribute:
		if len(in) != len(c.children) {
			return nil, fmt.Errorf("%s: %d inputs for %d children", c.TypeName(), len(in), len(c.children))
		}
		var all Tensors
		for i := range c.children {
			out, err := c.call(f, i, in[i:i+1])
			if err != nil {
				return nil, err
			}
			all = append(all, out...)
		}
		return all, nil
	case Matmul:
		if len(c.children) != 2 {
			return nil, fmt.Errorf("%s: needs 2 children, has %d", c.TypeName(), len(c.children))
		}
		a, err := c.call(f, 0, in)
		if err != nil {
			return nil, err
		}
		b, err := c.call(f, 1, in)
		if err != nil {
			return nil, err
		}
		if len(a) != 1 || len(b) != 1 {
			return nil, fmt.Errorf("%s: children must return one tensor each", c.TypeName())
		}
		return Tensors{f.Matmul(a[0], b[0])}, f.Err()
	}
	return nil, fmt.Errorf("chain kind %d not implemented", c.kind)
}

// sequence feeds outputs forward, releasing each intermediate as soon as
// the next child has consumed it, like reference counting would.
func (c *Chain) sequence(f *Frame, in Tensors) (Tensors, error) {
	cur := in
	for i := range c.children {
		if err := f.ctx.Err(); err != nil {
			return nil, err
		}
		out, err := c.call(f, i, cur)
		if err != nil {
			return nil, err
		}
		if i > 0 {
			for _, t := range cur {
				f.releaseUnless(t, append(out, in...))
			}
		}
		cur = out
	}
	return cur, nil
}

// call runs child i in its own frame, and moves its outputs into f.
func (c *Chain) call(f *Frame, i int, in Tensors) (Tensors, error) {
	cf := f.enter(c)
	if f.run.trace != nil {
		cf.path = c.keys[i]
		if f.path != "" {
			cf.path = f.path + "." + c.keys[i]
		}
	}
	out, err := c.children[i].Forward(cf, in...)
	if err == nil {
		err = cf.Err()
	}
	if err != nil {
		cf.TakeErr() // returned below, with the child's key
		var ret *returnSignal
		if errors.As(err, &ret) {
			cf.Close(ret.out...) // an early Return carries its outputs up
			return nil, err
		}
		cf.Close()
		return nil, inLayer(c.keys[i], err)
	}
	cf.Close(out...)
	if f.run.trace != nil {
		f.run.trace(cf.path, c.children[i], out)
	}
	if f.parent == nil && f.run.progress != nil {
		f.run.progress(Progress{Done: i + 1, Total: len(c.children), Layer: c.keys[i]})
	}
	return out, nil
}

// releaseUnless drops t now if f owns it and it is not one of keep.
func (f *Frame) releaseUnless(t *tensor.Tensor, keep Tensors) {
	for _, k := range keep {
		if k == t {
			return
		}
	}
	f.Release(t)
}
