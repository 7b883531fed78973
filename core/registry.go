package core

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// The registry maps layer type names (as Refiners spells them) to their
// declared arguments and constructors. Specs, the conformance runner and
// the JSON Schema generator all build layers through it, so a layer's
// arguments are declared once.

// ArgKind is the type of a layer argument.
type ArgKind int

const (
	IntArg ArgKind = iota
	FloatArg
	BoolArg
	StringArg
	IntsArg
	ModuleArg
)

func (k ArgKind) String() string {
	return [...]string{"int", "float", "bool", "string", "list of ints", "layer"}[k]
}

// ArgSpec declares one argument.
type ArgSpec struct {
	Name     string
	Kind     ArgKind
	Required bool
	Default  any
	Doc      string
	// Bounded integers (and lists of them) must be at least Min: sizes are
	// positive, paddings non-negative. Building never divides by a zero a
	// spec supplied.
	Bounded bool
	Min     int64
}

// atLeast bounds an integer argument from below.
func atLeast(min int64, s ArgSpec) ArgSpec {
	s.Bounded, s.Min = true, min
	return s
}

// LayerType is a registered layer.
type LayerType struct {
	Name string
	Doc  string
	Args []ArgSpec
	// Children says the layer is a chain whose children are given in the
	// description.
	Children bool
	Build    func(a *Args, children []Module) (Module, error)
}

var registry = map[string]*LayerType{}

// Register adds a layer type; registering a name twice is a programming
// error.
func Register(t *LayerType) {
	if _, dup := registry[t.Name]; dup {
		panic("core: layer type " + t.Name + " registered twice")
	}
	registry[t.Name] = t
}

// LookupLayer returns a registered layer type.
func LookupLayer(name string) (*LayerType, bool) {
	t, ok := registry[name]
	return t, ok
}

// LayerTypes lists registered type names, sorted.
func LayerTypes() []string {
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Args reads a layer's arguments, checking them against its ArgSpecs. The
// first problem is kept (like a scope's sticky error) and reported by Err
// together with any unknown argument.
type Args struct {
	layer  *LayerType
	values map[string]any
	err    error
}

func (a *Args) spec(name string, kind ArgKind) *ArgSpec {
	for i := range a.layer.Args {
		if s := &a.layer.Args[i]; s.Name == name {
			if s.Kind != kind {
				panic(fmt.Sprintf("core: %s.%s read as %v, declared %v", a.layer.Name, name, kind, s.Kind))
			}
			return s
		}
	}
	panic(fmt.Sprintf("core: %s reads undeclared argument %s", a.layer.Name, name))
}

func (a *Args) fail(format string, v ...any) {
	if a.err == nil {
		a.err = fmt.Errorf("%s: "+format, append([]any{a.layer.Name}, v...)...)
	}
}

func (a *Args) raw(name string, kind ArgKind) (any, bool) {
	s := a.spec(name, kind)
	v, ok := a.values[name]
	if !ok || v == nil {
		if s.Required {
			a.fail("missing required argument %s (%v)", name, kind)
		}
		return s.Default, false
	}
	return v, true
}

// Int reads an integer argument.
func (a *Args) Int(name string) int64 {
	v, _ := a.raw(name, IntArg)
	n, ok := toInt(v)
	if !ok {
		a.fail("argument %s: want an integer, got %v", name, v)
	}
	return a.bound(name, n)
}

// bound checks n against the argument's minimum. Out of bounds, it records
// the failure and returns the minimum, so a constructor never divides by a
// bad size before the failure is reported (the layer is discarded anyway).
func (a *Args) bound(name string, n int64) int64 {
	if s := a.spec(name, a.kindOf(name)); s.Bounded && n < s.Min {
		a.fail("argument %s must be at least %d, got %d", name, s.Min, n)
		return s.Min
	}
	return n
}

func (a *Args) kindOf(name string) ArgKind {
	for _, s := range a.layer.Args {
		if s.Name == name {
			return s.Kind
		}
	}
	return IntArg
}

// Float reads a number.
func (a *Args) Float(name string) float64 {
	v, _ := a.raw(name, FloatArg)
	switch x := v.(type) {
	case float64:
		return x
	case int:
		return float64(x)
	case int64:
		return float64(x)
	}
	a.fail("argument %s: want a number, got %v", name, v)
	return 0
}

// Bool reads a boolean.
func (a *Args) Bool(name string) bool {
	v, _ := a.raw(name, BoolArg)
	b, ok := v.(bool)
	if !ok {
		a.fail("argument %s: want true or false, got %v", name, v)
	}
	return b
}

// String reads a string.
func (a *Args) String(name string) string {
	v, _ := a.raw(name, StringArg)
	s, ok := v.(string)
	if !ok {
		a.fail("argument %s: want a string, got %v", name, v)
	}
	return s
}

// Ints reads a list of integers.
func (a *Args) Ints(name string) []int64 {
	v, _ := a.raw(name, IntsArg)
	if v == nil {
		return nil
	}
	list, ok := v.([]any)
	if !ok {
		if ints, ok := v.([]int64); ok {
			out := make([]int64, len(ints))
			for i, n := range ints {
				out[i] = a.bound(name, n)
			}
			return out
		}
		a.fail("argument %s: want a list of integers, got %v", name, v)
		return nil
	}
	out := make([]int64, len(list))
	for i, x := range list {
		n, ok := toInt(x)
		if !ok {
			a.fail("argument %s[%d]: want an integer, got %v", name, i, x)
		}
		out[i] = a.bound(name, n)
	}
	return out
}

// Module builds a nested layer argument (e.g. GLU's activation).
func (a *Args) Module(name string) Module {
	v, _ := a.raw(name, ModuleArg)
	if v == nil {
		return nil
	}
	if m, ok := v.(Module); ok {
		return m
	}
	desc, ok := v.(map[string]any)
	if !ok {
		a.fail("argument %s: want a layer description, got %v", name, v)
		return nil
	}
	m, err := BuildLayer(desc)
	if err != nil {
		a.fail("argument %s: %v", name, err)
	}
	return m
}

// Err reports the first argument problem, or an unknown argument.
func (a *Args) Err() error {
	if a.err != nil {
		return a.err
	}
	var unknown []string
	for k := range a.values {
		found := false
		for _, s := range a.layer.Args {
			if s.Name == k {
				found = true
			}
		}
		if !found {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("%s: unknown argument %s (arguments: %s)", a.layer.Name, strings.Join(unknown, ", "), a.layer.argNames())
	}
	return nil
}

func (t *LayerType) argNames() string {
	names := make([]string, len(t.Args))
	for i, s := range t.Args {
		names[i] = s.Name
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func toInt(v any) (int64, bool) {
	switch x := v.(type) {
	case int:
		return int64(x), true
	case int64:
		return x, true
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return int64(x), true
		}
	}
	return 0, false
}

// BuildLayer builds a layer from a description: {"type": Name, <args>,
// "children": [descriptions]} with numbers as float64 or int (as JSON and
// YAML decoders give them).
func BuildLayer(desc map[string]any) (Module, error) {
	name, ok := desc["type"].(string)
	if !ok {
		return nil, fmt.Errorf("layer description without a type: %v", desc)
	}
	t, ok := registry[name]
	if !ok {
		return nil, fmt.Errorf("unknown layer type %q", name)
	}
	values := map[string]any{}
	var children []Module
	for k, v := range desc {
		switch k {
		case "type":
		case "children":
			if !t.Children {
				return nil, fmt.Errorf("%s takes no children", name)
			}
			list, ok := v.([]any)
			if !ok {
				return nil, fmt.Errorf("%s: children must be a list", name)
			}
			for i, c := range list {
				cd, ok := c.(map[string]any)
				if !ok {
					return nil, fmt.Errorf("%s: child %d is not a layer description", name, i)
				}
				m, err := BuildLayer(cd)
				if err != nil {
					return nil, fmt.Errorf("%s child %d: %w", name, i, err)
				}
				children = append(children, m)
			}
		default:
			values[k] = v
		}
	}
	return t.New(values, children)
}

// New builds the layer from argument values (numbers as int64 or float64,
// lists of ints as []int64 or []any, nested layers as Modules or
// descriptions) and children.
func (t *LayerType) New(values map[string]any, children []Module) (Module, error) {
	if len(children) > 0 && !t.Children {
		return nil, fmt.Errorf("%s takes no children", t.Name)
	}
	a := &Args{layer: t, values: values}
	m, err := t.Build(a, children)
	if err == nil {
		err = a.Err()
	}
	if err != nil {
		return nil, err
	}
	return m, nil
}
