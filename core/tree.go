package core

import (
	"fmt"
	"strconv"
	"strings"
)

// Tree operations. Children are renamed after every change, so keys always
// follow the Refiners rule (Linear, or Linear_1, Linear_2, ...).

// Insert puts m at index i; negative i counts from the end, -1 meaning
// after the last child (so Insert(-1, m) appends).
func (c *Chain) Insert(i int, m Module) error {
	n := len(c.children)
	if i < 0 {
		i = n + i + 1
	}
	if i < 0 || i > n {
		return fmt.Errorf("%s: insert index %d out of range [0, %d]", c.TypeName(), i, n)
	}
	if err := c.adoptable(m); err != nil {
		return err
	}
	children := make([]Module, 0, n+1)
	children = append(children, c.children[:i]...)
	children = append(children, m)
	children = append(children, c.children[i:]...)
	c.setChildren(children)
	return nil
}

// Append adds m after the last child.
func (c *Chain) Append(m Module) error { return c.Insert(-1, m) }

// adoptable refuses a chain that already has another parent: a subtree
// lives in one place, or its keys and context scoping would be ambiguous.
func (c *Chain) adoptable(m Module) error {
	if sub, ok := m.(*Chain); ok {
		if sub.parent != nil {
			return fmt.Errorf("%s already belongs to %s; remove it there first or copy it", sub.TypeName(), sub.parent.TypeName())
		}
		for p := c; p != nil; p = p.parent {
			if p == sub {
				return fmt.Errorf("inserting %s would make a cycle", sub.TypeName())
			}
		}
	}
	return nil
}

// Pop removes and returns child i (negative counts from the end).
func (c *Chain) Pop(i int) (Module, error) {
	m, err := c.At(i)
	if err != nil {
		return nil, err
	}
	c.detach(c.indexOf(m))
	return m, nil
}

// Remove takes m out of the chain.
func (c *Chain) Remove(m Module) error {
	i := c.indexOf(m)
	if i < 0 {
		return fmt.Errorf("%s is not a child of %s", Describe(m), c.TypeName())
	}
	c.detach(i)
	return nil
}

func (c *Chain) detach(i int) {
	m := c.children[i]
	children := append(append([]Module(nil), c.children[:i]...), c.children[i+1:]...)
	c.setChildren(children)
	if sub, ok := m.(*Chain); ok {
		sub.parent = nil
	}
}

// Replace puts m in place of old.
func (c *Chain) Replace(old, m Module) error {
	i := c.indexOf(old)
	if i < 0 {
		return fmt.Errorf("%s is not a child of %s", Describe(old), c.TypeName())
	}
	if m == old {
		return nil
	}
	if err := c.adoptable(m); err != nil {
		return err
	}
	children := append([]Module(nil), c.children...)
	children[i] = m
	c.setChildren(children)
	if sub, ok := old.(*Chain); ok && sub != m {
		sub.parent = nil
	}
	return nil
}

// InsertBeforeType inserts m before the first child of the given type name.
func (c *Chain) InsertBeforeType(typeName string, m Module) error {
	for i, ch := range c.children {
		if TypeName(ch) == typeName {
			return c.Insert(i, m)
		}
	}
	return fmt.Errorf("%s has no child of type %s", c.TypeName(), typeName)
}

// InsertAfterType inserts m after the first child of the given type name.
func (c *Chain) InsertAfterType(typeName string, m Module) error {
	for i, ch := range c.children {
		if TypeName(ch) == typeName {
			return c.Insert(i+1, m)
		}
	}
	return fmt.Errorf("%s has no child of type %s", c.TypeName(), typeName)
}

// Walk calls visit for every module below c, depth first, with its parent
// and dotted path relative to c. Returning false from visit skips the
// module's own children.
func (c *Chain) Walk(visit func(m Module, parent *Chain, path string) bool) {
	c.walk("", visit)
}

func (c *Chain) walk(prefix string, visit func(Module, *Chain, string) bool) {
	for i, m := range c.children {
		path := prefix + c.keys[i]
		if !visit(m, c, path) {
			continue
		}
		if sub, ok := m.(*Chain); ok {
			sub.walk(path+".", visit)
		}
	}
}

// Find returns the first module below c (depth first) for which match is true.
func (c *Chain) Find(match func(Module) bool) (Module, *Chain, bool) {
	var found Module
	var parent *Chain
	c.Walk(func(m Module, p *Chain, _ string) bool {
		if found == nil && match(m) {
			found, parent = m, p
		}
		return found == nil
	})
	return found, parent, found != nil
}

// FindType returns the first module of the given type name below c.
func (c *Chain) FindType(typeName string) (Module, error) {
	m, _, ok := c.Find(func(m Module) bool { return TypeName(m) == typeName })
	if !ok {
		return nil, fmt.Errorf("no %s in %s", typeName, c.TypeName())
	}
	return m, nil
}

// Layers returns every module of the given type name below c.
func (c *Chain) Layers(typeName string) []Module {
	var out []Module
	c.Walk(func(m Module, _ *Chain, _ string) bool {
		if TypeName(m) == typeName {
			out = append(out, m)
		}
		return true
	})
	return out
}

// ParentOf returns the chain below c (or c itself) that holds m.
func (c *Chain) ParentOf(m Module) (*Chain, bool) {
	if c.indexOf(m) >= 0 {
		return c, true
	}
	_, p, ok := c.Find(func(x Module) bool { return x == m })
	return p, ok
}

// Layer resolves a dotted path of keys or indices ("Chain_1.2.Linear").
func (c *Chain) Layer(path string) (Module, error) {
	var cur Module = c
	for _, part := range strings.Split(path, ".") {
		ch, ok := cur.(*Chain)
		if !ok {
			return nil, fmt.Errorf("layer %q: %s is not a chain", path, Describe(cur))
		}
		var next Module
		var err error
		if i, convErr := strconv.Atoi(part); convErr == nil {
			next, err = ch.At(i)
		} else {
			next, err = ch.Child(part)
		}
		if err != nil {
			return nil, fmt.Errorf("layer %q: %w", path, err)
		}
		cur = next
	}
	return cur, nil
}

// PathOf returns the dotted key path from c down to m.
func (c *Chain) PathOf(m Module) (string, bool) {
	var out string
	c.Walk(func(x Module, _ *Chain, path string) bool {
		if x == m && out == "" {
			out = path
		}
		return out == ""
	})
	return out, out != ""
}

// StructuralCopy copies the tree of chains; leaves (and so weights) are
// shared. The copy can be adapted without touching the original.
func (c *Chain) StructuralCopy() *Chain {
	cp := &Chain{kind: c.kind, typeName: c.typeName, Dim: c.Dim, Args: c.Args, Label: c.Label, Provider: c.Provider}
	children := make([]Module, len(c.children))
	for i, m := range c.children {
		if sub, ok := m.(*Chain); ok {
			children[i] = sub.StructuralCopy()
		} else {
			children[i] = m
		}
		if c.adapter != nil && m == c.adapter.target {
			// The copy adapts the copied target, with its own state.
			cp.adapter = &adapterState{target: children[i], injected: c.adapter.injected}
		}
	}
	cp.setChildren(children)
	for name, kv := range c.defaults {
		for k, v := range kv {
			cp.SetContext(name, k, v)
		}
	}
	return cp
}
