package core

import (
	"fmt"

	"github.com/refiners-go/refiners/core/tensor"
)

// Contexts carry conditioning inputs (a text embedding, a timestep, a
// control image) from where they are known to the deeply nested layers that
// use them, without threading them through every layer in between.
//
// Scoping: a value set inside a call is stored at the nearest enclosing
// chain marked Provider (or the root of the call). A lookup walks outwards
// from the layer and takes the first provider that has the value, checking
// at each provider the values set during this call, then the chain's
// SetContext defaults. So a value set at the root reaches every layer, and
// two sibling provider chains never see each other's values.

// provider returns the chain that stores values set from f: the nearest
// enclosing Provider chain, or nil for the root of the call.
func (f *Frame) provider() *Chain {
	for fr := f; fr != nil; fr = fr.parent {
		if fr.chain != nil && fr.chain.Provider {
			return fr.chain
		}
	}
	return nil
}

// storeContext records a value for the rest of the call. Tensors are held
// through their own handle, released when the call ends.
func (f *Frame) storeContext(at *Chain, context, key string, value any) {
	if t, ok := value.(*tensor.Tensor); ok && t != nil {
		t = f.Escape(f.ShallowCopy(t))
		f.run.owned = append(f.run.owned, t)
		value = t
	}
	store := f.run.stores[at]
	if store == nil {
		store = Contexts{}
		f.run.stores[at] = store
	}
	if store[context] == nil {
		store[context] = map[string]any{}
	}
	store[context][key] = value
}

// SetContext stores a value visible, for the rest of this call, to every
// layer under the nearest provider.
func (f *Frame) SetContext(context, key string, value any) {
	f.storeContext(f.provider(), context, key, value)
}

// LookupContext finds a context value from f's position in the tree.
func (f *Frame) LookupContext(context, key string) (any, bool) {
	// Providers from the innermost out, then the root of the call.
	var chains []*Chain
	for fr := f; fr != nil; fr = fr.parent {
		if fr.chain != nil && fr.chain.Provider {
			chains = append(chains, fr.chain)
		}
	}
	chains = append(chains, nil)
	for _, c := range chains {
		if v, ok := f.run.stores[c][context][key]; ok {
			return v, true
		}
	}
	// Defaults set on chains, from the innermost enclosing chain out.
	for fr := f; fr != nil; fr = fr.parent {
		if fr.chain != nil {
			if v, ok := fr.chain.defaults[context][key]; ok {
				return v, true
			}
		}
	}
	return nil, false
}

// UseContext returns a tensor context value as a new handle in f.
func (f *Frame) UseContext(context, key string) (*tensor.Tensor, error) {
	v, ok := f.LookupContext(context, key)
	if !ok {
		return nil, fmt.Errorf("context %q has no key %q", context, key)
	}
	t, ok := v.(*tensor.Tensor)
	if !ok {
		return nil, fmt.Errorf("context %q key %q holds %T, not a tensor", context, key, v)
	}
	return f.ShallowCopy(t), f.Err()
}

// SetContext is a layer that stores its input in a context and passes it on.
// With Update, it stores Update(current value, input) instead, like
// Refiners' callback (e.g. to append the input's shape to a list).
type SetContext struct {
	Context, Key string
	Update       func(f *Frame, current any, x *tensor.Tensor) (any, error)
}

// NewSetContext makes a SetContext layer.
func NewSetContext(context, key string) *SetContext { return &SetContext{Context: context, Key: key} }

func (l *SetContext) Describe() string {
	return fmt.Sprintf("SetContext(context=%s, key=%s)", l.Context, l.Key)
}

func (l *SetContext) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	x, err := one("SetContext", in)
	if err != nil {
		return nil, err
	}
	if l.Update == nil {
		f.SetContext(l.Context, l.Key, x)
		return in, f.Err()
	}
	current, _ := f.LookupContext(l.Context, l.Key)
	v, err := l.Update(f, current, x)
	if err != nil {
		return nil, err
	}
	if v != current {
		f.SetContext(l.Context, l.Key, v)
	}
	return in, f.Err()
}

// UseContext is a layer that outputs a context value, ignoring its inputs.
// With Compose, it outputs Compose(value), like Refiners' compose (e.g. to
// pop a list).
type UseContext struct {
	Context, Key string
	Compose      func(f *Frame, value any) (*tensor.Tensor, error)
}

// NewUseContext makes a UseContext layer.
func NewUseContext(context, key string) *UseContext { return &UseContext{Context: context, Key: key} }

func (l *UseContext) Describe() string {
	return fmt.Sprintf("UseContext(context=%s, key=%s)", l.Context, l.Key)
}

func (l *UseContext) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if l.Compose != nil {
		v, ok := f.LookupContext(l.Context, l.Key)
		if !ok {
			return nil, fmt.Errorf("context %q has no key %q", l.Context, l.Key)
		}
		t, err := l.Compose(f, v)
		if err != nil {
			return nil, err
		}
		return Tensors{t}, f.Err()
	}
	t, err := f.UseContext(l.Context, l.Key)
	if err != nil {
		return nil, err
	}
	return Tensors{t}, nil
}
