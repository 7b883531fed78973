package core

import (
	"fmt"
	"strings"
)

// An adapter is a Chain that wraps a target module. Injecting it puts the
// adapter where the target was (the target lives on as the adapter's
// child); ejecting puts the target back, so the tree, its keys and its
// weights are exactly what they were. Adapters stack: an adapter may target
// another adapter, or a chain that contains one.
type adapterState struct {
	target   Module
	injected bool
}

// NewAdapter makes an adapter chain of the given type name and kind around
// target. The children are the adapter's body and must include target
// (e.g. NewSum-like: target plus a low-rank branch). The target is not
// moved until Inject.
func NewAdapter(typeName string, kind Kind, target Module, children ...Module) (*Chain, error) {
	found := false
	for _, m := range children {
		if m == target {
			found = true
		}
	}
	if !found {
		return nil, fmt.Errorf("adapter %s: the target %s must be one of its children", typeName, Describe(target))
	}
	c := &Chain{kind: kind, typeName: typeName, adapter: &adapterState{target: target}}
	// The target keeps its place (and parent) in the host tree until Inject.
	var keep *Chain
	if sub, ok := target.(*Chain); ok {
		keep = sub.parent
	}
	c.setChildren(children)
	if sub, ok := target.(*Chain); ok {
		sub.parent = keep
	}
	return c, nil
}

// IsAdapter reports whether c was made by NewAdapter.
func (c *Chain) IsAdapter() bool { return c.adapter != nil }

// Target is the module an adapter wraps (nil for a plain chain).
func (c *Chain) Target() Module {
	if c.adapter == nil {
		return nil
	}
	return c.adapter.target
}

// Injected reports whether the adapter is currently in a tree.
func (c *Chain) Injected() bool { return c.adapter != nil && c.adapter.injected }

// Inject puts the adapter in place of its target, which must be somewhere
// under root (or be a child of root).
func (c *Chain) Inject(root *Chain) error {
	if c.adapter == nil {
		return fmt.Errorf("%s is not an adapter", c.TypeName())
	}
	if c.adapter.injected {
		return fmt.Errorf("adapter %s is already injected", c.TypeName())
	}
	target := c.adapter.target
	parent, ok := root.ParentOf(target)
	if !ok {
		return fmt.Errorf("adapter %s: target %s is not in %s", c.TypeName(), Describe(target), root.TypeName())
	}
	i := parent.indexOf(target)
	children := append([]Module(nil), parent.children...)
	children[i] = c
	parent.setChildren(children)
	if sub, ok := target.(*Chain); ok {
		sub.parent = c
	}
	c.adapter.injected = true
	return nil
}

// Eject puts the target back where the adapter is, restoring the tree.
func (c *Chain) Eject() error {
	if c.adapter == nil {
		return fmt.Errorf("%s is not an adapter", c.TypeName())
	}
	if !c.adapter.injected {
		return fmt.Errorf("adapter %s is not injected", c.TypeName())
	}
	parent := c.parent
	if parent == nil {
		return fmt.Errorf("adapter %s has no parent to eject from", c.TypeName())
	}
	i := parent.indexOf(c)
	children := append([]Module(nil), parent.children...)
	children[i] = c.adapter.target
	parent.setChildren(children) // also re-parents a chain target
	c.parent = nil
	c.adapter.injected = false
	return nil
}

// unwrap returns the module an injected adapter (or a stack of them)
// stands in for; other modules are returned as they are.
func unwrap(m Module) Module {
	for {
		a, ok := m.(*Chain)
		if !ok || a.adapter == nil || !a.adapter.injected {
			return m
		}
		m = a.adapter.target
	}
}

// WalkBase walks the tree as it would be with every adapter ejected: paths
// are the base model's (injecting an adapter moves its target under it and
// renames siblings, as in Refiners), modules are the live ones, and an
// adapted layer is visited as itself. Plans address layers by these paths,
// so they stay valid however many adapters are in place.
func (c *Chain) WalkBase(visit func(m Module, path string) bool) {
	c.walkBase("", visit)
}

func (c *Chain) walkBase(prefix string, visit func(Module, string) bool) {
	base := make([]Module, len(c.children))
	for i, m := range c.children {
		base[i] = unwrap(m)
	}
	for i, key := range uniqueKeys(base) {
		m := base[i]
		if !visit(m, prefix+key) {
			continue
		}
		if sub, ok := m.(*Chain); ok {
			sub.walkBase(prefix+key+".", visit)
		}
	}
}

// BaseLayer resolves a base-model path (see WalkBase).
func (c *Chain) BaseLayer(path string) (Module, error) {
	var found Module
	c.WalkBase(func(m Module, p string) bool {
		if p == path {
			found = m
		}
		return found == nil && strings.HasPrefix(path, p+".")
	})
	if found == nil {
		return nil, fmt.Errorf("the model has no layer %q", path)
	}
	return found, nil
}
