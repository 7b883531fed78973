package spec

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/refiners-go/refiners/core"
)

// env is a scope of parameter values; lookups fall back to the parent.
type env struct {
	vars   map[string]value
	parent *env
}

func (e *env) get(name string) (value, bool) {
	for s := e; s != nil; s = s.parent {
		if v, ok := s.vars[name]; ok {
			return v, true
		}
	}
	return nil, false
}

func (e *env) names() []string {
	var out []string
	for s := e; s != nil; s = s.parent {
		for n := range s.vars {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// Limits that keep a hostile or mistaken spec from exhausting memory: the
// largest real models have a few thousand layers.
const (
	maxRepeat = 10_000
	maxLayers = 100_000
)

// builder turns a loaded spec into modules, collecting every error.
type builder struct {
	spec   *Spec
	errs   Errors
	layers int // layer items instantiated so far
	// Blocks being instantiated: by name and parameter values, and by
	// name. A block depends only on its parameters (and the spec's), so
	// meeting the same block with the same values again inside itself is
	// a recursion that never ends.
	active map[string]bool
	depth  map[string]int
	// uses are the blocks being instantiated, outermost first, as
	// "Block at file:line:col (params)": an error inside a block names the
	// use it happened in.
	uses []string
	// lint, when set, records what Lint checks on the built model, and
	// where each layer comes from.
	lint *buildRecord
}

func (b *builder) errf(file string, n *yaml.Node, code, format string, args ...any) {
	e := &Error{File: file, Code: code, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Col = n.Line, n.Column
	}
	if len(b.uses) > 0 {
		chain := slices.Clone(b.uses)
		slices.Reverse(chain)
		e.Uses = []string{strings.Join(chain, ", in ")}
	}
	b.errs = append(b.errs, e)
}

// Build makes the model the spec declares. overrides set parameters by name
// (values in YAML syntax, e.g. "768" or "true"), like `--set dim=768`.
func (s *Spec) Build(overrides map[string]string) (*core.Chain, error) {
	return s.build(overrides, nil)
}

// BuildWithSources is Build that also says where the spec declares each
// layer it made: file:line:col of the item's type (for a layer in a block,
// in the block; for a block's chain, the use).
func (s *Spec) BuildWithSources(overrides map[string]string) (*core.Chain, map[core.Module]string, error) {
	rec := newRecord()
	m, err := s.build(overrides, rec)
	if err != nil {
		return nil, nil, err
	}
	sources := make(map[core.Module]string, len(rec.origin))
	for mod, o := range rec.origin {
		sources[mod] = fmt.Sprintf("%s:%d:%d", o.file, o.node.Line, o.node.Column)
	}
	return m, sources, nil
}

func (s *Spec) build(overrides map[string]string, lint *buildRecord) (*core.Chain, error) {
	b := &builder{spec: s, active: map[string]bool{}, depth: map[string]int{}, lint: lint}
	top := &env{vars: map[string]value{}}
	known := map[string]bool{}
	for _, p := range s.Params {
		known[p.Name] = true
	}
	names := make([]string, 0, len(overrides))
	for n := range overrides {
		names = append(names, n)
	}
	sort.Strings(names)
	given := map[string]value{}
	for _, n := range names {
		if !known[n] {
			params := make([]string, 0, len(s.Params))
			for _, p := range s.Params {
				params = append(params, p.Name)
			}
			b.errs = append(b.errs, &Error{File: s.File, Code: CodeOverride, Msg: fmt.Sprintf("override %q: the spec has no such parameter%s", n, suggest(n, params))})
			continue
		}
		var node yaml.Node
		if err := yaml.Unmarshal([]byte(overrides[n]), &node); err != nil || len(node.Content) != 1 || node.Content[0].Kind != yaml.ScalarNode {
			b.errs = append(b.errs, &Error{File: s.File, Code: CodeOverride, Msg: fmt.Sprintf("override %s=%q is not a single value", n, overrides[n])})
			continue
		}
		v, ok := b.eval(s.File, node.Content[0], top)
		if ok {
			given[n] = v
		}
	}
	b.bindParams(s.File, s.Params, given, nil, top)
	var root *core.Chain
	if s.layers != nil {
		children := b.items(s.File, s.layers, top)
		if s.Unwrap {
			c, ok := onlyChain(children)
			if !ok && len(b.errs) == 0 {
				b.errf(s.File, s.layers, CodeShape, "unwrap: the single layer must be a chain (a layer with children), got %s", describeModules(children))
			}
			if len(b.errs) > 0 {
				return nil, b.errs.sorted()
			}
			if _, ok := core.ParamCount(c); !ok {
				b.errf(s.File, s.layers, CodeBadLayer, "the model declares more than %d parameters", int64(math.MaxInt64))
				return nil, b.errs.sorted()
			}
			return c, nil
		}
		if s.Name == "" && s.Kind == core.Sequence {
			root = core.NewChain(children...)
		} else {
			root = core.NewNamed(s.Name, s.Kind, children...)
		}
		root.Args = b.interpolate(s.File, s.layers, s.Args, top)
		root.Provider = s.Provider
		if _, ok := core.ParamCount(root); !ok && len(b.errs) == 0 {
			b.errf(s.File, s.layers, CodeBadLayer, "the model declares more than %d parameters", int64(math.MaxInt64))
		}
	}
	if len(b.errs) > 0 {
		return nil, b.errs.sorted()
	}
	return root, nil
}

// bindParams evaluates declared parameters in order into e: a given value
// wins, else the default (which may use earlier parameters); a required
// parameter without a value is an error at `at`.
func (b *builder) bindParams(file string, params []*Param, given map[string]value, at *yaml.Node, e *env) {
	for _, p := range params {
		if v, ok := given[p.Name]; ok {
			e.vars[p.Name] = v
			continue
		}
		if p.Default == nil {
			if at != nil {
				b.errf(file, at, CodeMissingArg, "missing required parameter %q (declared at %s)", p.Name, p.Position)
			} else {
				b.errs = append(b.errs, &Error{File: file, Code: CodeMissingArg, Msg: fmt.Sprintf("missing required parameter %q (declared at %s); set it with --set %s=...", p.Name, p.Position, p.Name)})
			}
			continue
		}
		if v, ok := b.eval(file, p.Default, e); ok {
			e.vars[p.Name] = v
		}
	}
}

var placeholder = regexp.MustCompile(`\$\{([^}]*)\}`)

// deref follows YAML aliases (*name) to the anchored node.
func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// eval turns a scalar node into a value, evaluating "${...}" expressions.
func (b *builder) eval(file string, n *yaml.Node, e *env) (value, bool) {
	n = deref(n)
	if n.Kind != yaml.ScalarNode {
		b.errf(file, n, CodeArgType, "want a single value, got a %s", kindName(n))
		return nil, false
	}
	switch n.Tag {
	case "!!null":
		return nil, true
	case "!!int":
		var i int64
		if err := n.Decode(&i); err != nil {
			b.errf(file, n, CodeArgType, "bad integer %q", n.Value)
			return nil, false
		}
		return i, true
	case "!!float":
		var f float64
		if err := n.Decode(&f); err != nil {
			b.errf(file, n, CodeArgType, "bad number %q", n.Value)
			return nil, false
		}
		return f, true
	case "!!bool":
		var v bool
		if err := n.Decode(&v); err != nil {
			b.errf(file, n, CodeArgType, "bad boolean %q", n.Value)
			return nil, false
		}
		return v, true
	}
	m := placeholder.FindAllStringSubmatchIndex(n.Value, -1)
	if len(m) == 0 {
		return n.Value, true
	}
	if len(m) == 1 && m[0][0] == 0 && m[0][1] == len(n.Value) {
		return b.expr(file, n, n.Value[m[0][2]:m[0][3]], e)
	}
	return b.interpolate(file, n, n.Value, e), true
}

func (b *builder) expr(file string, n *yaml.Node, src string, e *env) (value, bool) {
	v, err := evalExpr(src, e.get)
	if err != nil {
		if u, ok := err.(*unknownParam); ok {
			b.errf(file, n, CodeUnknownParam, "unknown parameter %q in ${%s}%s", u.name, src, suggest(u.name, e.names()))
		} else {
			b.errf(file, n, CodeExpr, "${%s}: %v", src, err)
		}
		return nil, false
	}
	return v, true
}

// interpolate replaces each ${...} in text with its value.
func (b *builder) interpolate(file string, n *yaml.Node, text string, e *env) string {
	return placeholder.ReplaceAllStringFunc(text, func(m string) string {
		v, ok := b.expr(file, n, m[2:len(m)-1], e)
		if !ok {
			return m
		}
		if bv, isBool := v.(bool); isBool {
			if bv {
				return "True"
			}
			return "False"
		}
		return fmt.Sprint(v)
	})
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	}
	return "value"
}

// items builds a list of layer items.
func (b *builder) items(file string, list *yaml.Node, e *env) []core.Module {
	list = deref(list)
	if list.Kind != yaml.SequenceNode {
		return nil
	}
	var out []core.Module
	for _, it := range list.Content {
		out = append(out, b.item(file, it, e)...)
	}
	return out
}

// item builds one layer item (several with repeat).
func (b *builder) item(file string, n *yaml.Node, e *env) []core.Module {
	n = deref(n)
	var typeNode, body *yaml.Node
	switch {
	case n.Kind == yaml.ScalarNode && n.Tag == "!!str":
		typeNode = n
	case n.Kind == yaml.MappingNode && len(n.Content) == 2:
		typeNode, body = n.Content[0], deref(n.Content[1])
	default:
		b.errf(file, n, CodeShape, "a layer item is `Type: {args}`, `Type: [children]` or `Type`")
		return nil
	}
	name := typeNode.Value

	// Split the body into args, children, repeat and provider.
	args := map[string]*yaml.Node{}
	var argOrder []*yaml.Node
	var children, repeat, provider *yaml.Node
	if body != nil {
		switch body.Kind {
		case yaml.SequenceNode:
			children = body
		case yaml.MappingNode:
			for i := 0; i+1 < len(body.Content); i += 2 {
				k, v := body.Content[i], deref(body.Content[i+1])
				if _, dup := args[k.Value]; dup || (k.Value == "layers" && children != nil) {
					b.errf(file, k, CodeDuplicate, "argument %q given twice", k.Value)
					continue
				}
				switch k.Value {
				case "layers":
					children = v
				case "repeat":
					repeat = v
				case "provider":
					provider = v
				default:
					args[k.Value] = v
					argOrder = append(argOrder, k)
				}
			}
		case yaml.ScalarNode:
			if body.Tag != "!!null" {
				b.errf(file, body, CodeShape, "%s: want {args} or [children], got %q", name, body.Value)
				return nil
			}
		}
	}

	count := int64(1)
	if repeat != nil {
		v, ok := b.eval(file, repeat, e)
		if bv, isBool := v.(bool); isBool { // `repeat: ${a != b}` makes an optional layer
			v = map[bool]int64{true: 1, false: 0}[bv]
		}
		c, isInt := v.(int64)
		if ok && (!isInt || c < 0) {
			b.errf(file, repeat, CodeRepeat, "repeat must be a non-negative integer, got %v", v)
			return nil
		}
		if !ok {
			return nil
		}
		if c > maxRepeat {
			b.errf(file, repeat, CodeRepeat, "repeat %d is over the limit of %d", c, maxRepeat)
			return nil
		}
		count = c
	}
	var out []core.Module
	for i := int64(0); i < count; i++ {
		if b.layers++; b.layers > maxLayers {
			b.errf(file, typeNode, CodeRepeat, "the spec builds more than %d layers%s", maxLayers, b.recursing())
			return out
		}
		ie := e
		if repeat != nil {
			ie = &env{vars: map[string]value{"index": i}, parent: e}
		}
		m := b.instance(file, typeNode, name, args, argOrder, children, provider, ie)
		if m == nil {
			return out // the first copy's errors say it all
		}
		out = append(out, m)
	}
	return out
}

// instance builds one copy of an item.
func (b *builder) instance(file string, typeNode *yaml.Node, name string, args map[string]*yaml.Node, argOrder []*yaml.Node, children, provider *yaml.Node, e *env) core.Module {
	if blk, ok := b.spec.Blocks[name]; ok {
		return b.block(file, typeNode, blk, args, argOrder, children, provider, e)
	}
	t, ok := core.LookupLayer(name)
	if !ok {
		if plugin, _, namespaced := strings.Cut(name, "/"); namespaced {
			b.errf(file, typeNode, CodePluginMissing, "layer type %q is provided by plugin %q, which is not installed (see `refinersd plugins list`)", name, plugin)
			b.errs[len(b.errs)-1].Plugin = plugin
			return nil
		}
		candidates := core.LayerTypes()
		for n := range b.spec.Blocks {
			candidates = append(candidates, n)
		}
		b.errf(file, typeNode, CodeUnknownLayer, "unknown layer type %q%s", name, suggest(name, candidates))
		return nil
	}
	if children != nil && !t.Children {
		b.errf(file, children, CodeChildren, "%s takes no children", name)
		return nil
	}
	values := map[string]any{}
	okArgs := true
	meant := map[string]bool{} // required args an unknown, misspelt arg stands for
	for _, k := range argOrder {
		spec := argSpec(t, k.Value)
		if spec == nil {
			names := make([]string, len(t.Args))
			for i, a := range t.Args {
				names[i] = a.Name
			}
			hint := suggest(k.Value, names)
			if hint != "" {
				meant[strings.TrimSuffix(strings.TrimPrefix(hint, " (did you mean "), "?)")] = true
			}
			if hint == "" {
				hint = fmt.Sprintf(" (%s takes: %s)", name, strings.Join(names, ", "))
				if len(names) == 0 {
					hint = fmt.Sprintf(" (%s takes no arguments)", name)
				}
			}
			b.errf(file, k, CodeUnknownArg, "unknown argument %q for %s%s", k.Value, name, hint)
			okArgs = false
			continue
		}
		v, ok := b.arg(file, name, spec, args[k.Value], e)
		if !ok {
			okArgs = false
			continue
		}
		values[k.Value] = v
		if b.lint != nil && !spec.Required && spec.Kind != core.ModuleArg {
			b.lint.arg(file, k, args[k.Value], name, spec.Default, v)
		}
	}
	for _, a := range t.Args {
		if _, given := args[a.Name]; a.Required && !given && !meant[a.Name] {
			b.errf(file, typeNode, CodeMissingArg, "%s: missing required argument %q (%v)", name, a.Name, a.Kind)
			okArgs = false
		}
	}
	var kids []core.Module
	if children != nil {
		if children.Kind != yaml.SequenceNode {
			b.errf(file, children, CodeShape, "%s: layers must be a list", name)
			return nil
		}
		kids = b.items(file, children, e)
	}
	if !okArgs {
		return nil
	}
	m, err := t.New(values, kids)
	if err != nil {
		b.errf(file, typeNode, CodeBadLayer, "%v", err)
		return nil
	}
	if b.lint != nil {
		b.lint.layer(m, name, file, typeNode)
	}
	if provider != nil {
		c, isChain := m.(*core.Chain)
		if !isChain {
			b.errf(file, provider, CodeUnknownArg, "provider is for chains; %s is not one", name)
			return nil
		}
		c.Provider = b.boolean(file, provider, e)
	}
	return m
}

func (b *builder) boolean(file string, n *yaml.Node, e *env) bool {
	v, ok := b.eval(file, n, e)
	bv, isBool := v.(bool)
	if ok && !isBool {
		b.errf(file, n, CodeArgType, "want true or false, got %v", v)
	}
	return bv
}

// signature identifies a block's parameter values.
func signature(vars map[string]value) string {
	names := make([]string, 0, len(vars))
	for n := range vars {
		names = append(names, n)
	}
	sort.Strings(names)
	var sb strings.Builder
	for _, n := range names {
		fmt.Fprintf(&sb, "%s=%#v\x00", n, vars[n])
	}
	return sb.String()
}

func describeParams(vars map[string]value) string {
	if len(vars) == 0 {
		return " (it has none)"
	}
	names := make([]string, 0, len(vars))
	for n := range vars {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s=%v", n, vars[n])
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// recursing names the deepest block recursion in progress, for the layer
// limit's message.
func (b *builder) recursing() string {
	name, deepest := "", 1
	for n, d := range b.depth {
		if d > deepest || d == deepest && name != "" && n < name {
			name, deepest = n, d
		}
	}
	if name == "" {
		return ""
	}
	return fmt.Sprintf(" (block %s recurses %d deep)", name, deepest)
}

func argSpec(t *core.LayerType, name string) *core.ArgSpec {
	for i := range t.Args {
		if t.Args[i].Name == name {
			return &t.Args[i]
		}
	}
	return nil
}

// arg evaluates and type-checks one argument.
func (b *builder) arg(file, layer string, a *core.ArgSpec, n *yaml.Node, e *env) (any, bool) {
	bad := func(got any) (any, bool) {
		b.errf(file, n, CodeArgType, "%s.%s: want %v, got %v", layer, a.Name, a.Kind, describeValue(got))
		return nil, false
	}
	switch a.Kind {
	case core.ModuleArg:
		ms := b.item(file, n, e)
		if len(ms) != 1 {
			return nil, false
		}
		return ms[0], true
	case core.IntsArg:
		n = deref(n)
		if n.Kind != yaml.SequenceNode {
			v, ok := b.eval(file, n, e)
			if !ok {
				return nil, false
			}
			return bad(v)
		}
		out := make([]int64, 0, len(n.Content))
		for _, it := range n.Content {
			v, ok := b.eval(file, it, e)
			if !ok {
				return nil, false
			}
			i, isInt := asInt(v)
			if !isInt {
				b.errf(file, it, CodeArgType, "%s.%s: want integers, got %v", layer, a.Name, describeValue(v))
				return nil, false
			}
			out = append(out, i)
		}
		return out, true
	}
	if n = deref(n); n.Kind != yaml.ScalarNode {
		b.errf(file, n, CodeArgType, "%s.%s: want %v, got a %s", layer, a.Name, a.Kind, kindName(n))
		return nil, false
	}
	v, ok := b.eval(file, n, e)
	if !ok {
		return nil, false
	}
	switch a.Kind {
	case core.IntArg:
		if i, isInt := asInt(v); isInt {
			return i, true
		}
	case core.FloatArg:
		if f, isNum := toFloat(v); isNum {
			return f, true
		}
	case core.BoolArg:
		if _, isBool := v.(bool); isBool {
			return v, true
		}
	case core.StringArg:
		if _, isStr := v.(string); isStr {
			return v, true
		}
	}
	return bad(v)
}

func asInt(v value) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case float64:
		// In range first: converting an out-of-range float is not defined.
		if x >= -(1<<63) && x < 1<<63 && x == math.Trunc(x) {
			return int64(x), true
		}
	}
	return 0, false
}

func describeValue(v any) string {
	switch v.(type) {
	case nil:
		return "nothing"
	case string:
		return fmt.Sprintf("the string %q", v)
	}
	return fmt.Sprintf("%v (%T)", v, v)
}

// block instantiates a block: its params bound from args, its layers built
// in its own scope over the spec's parameters.
func (b *builder) block(file string, typeNode *yaml.Node, blk *Block, args map[string]*yaml.Node, argOrder []*yaml.Node, children, provider *yaml.Node, e *env) core.Module {
	if children != nil {
		b.errf(file, children, CodeChildren, "block %s defines its own layers; it takes no children", blk.Name)
		return nil
	}
	declared := map[string]bool{}
	names := make([]string, len(blk.Params))
	for i, p := range blk.Params {
		declared[p.Name] = true
		names[i] = p.Name
	}
	given := map[string]value{}
	ok := true
	for _, k := range argOrder {
		if !declared[k.Value] {
			b.errf(file, k, CodeUnknownArg, "unknown argument %q for block %s%s", k.Value, blk.Name, suggest(k.Value, names))
			ok = false
			continue
		}
		v, good := b.eval(file, args[k.Value], e)
		if !good {
			ok = false
			continue
		}
		given[k.Value] = v
		if b.lint != nil {
			b.lint.blockArg(file, k, args[k.Value], blk, v)
		}
	}
	if !ok {
		return nil
	}
	// A block sees its own parameters over the spec's top-level ones, not
	// the caller's locals: its meaning does not depend on where it is used.
	top := e
	for top.parent != nil {
		top = top.parent
	}
	be := &env{vars: map[string]value{}, parent: top}
	before := len(b.errs)
	b.bindParams(blk.File, blk.Params, given, typeNode, be)
	if len(b.errs) > before {
		return nil
	}
	key := blk.Name + "\x00" + signature(be.vars)
	if b.active[key] {
		b.errf(file, typeNode, CodeRecursion, "block %s is recursive: it contains itself with the same parameters%s, so it never ends (a recursion must change a parameter and stop on it, e.g. repeat: ${n > 0})",
			blk.Name, describeParams(be.vars))
		return nil
	}
	b.active[key] = true
	b.depth[blk.Name]++
	b.uses = append(b.uses, fmt.Sprintf("%s at %s:%d:%d%s", blk.Name, file, typeNode.Line, typeNode.Column, strings.TrimPrefix(describeParams(be.vars), " (it has none)")))
	defer func() {
		delete(b.active, key)
		b.depth[blk.Name]--
		b.uses = b.uses[:len(b.uses)-1]
	}()
	kids := b.items(blk.File, blk.layers, be)
	if len(b.errs) > before {
		return nil
	}
	c := core.NewNamed(blk.Name, blk.Kind, kids...)
	c.Args = b.interpolate(blk.File, blk.node, blk.Args, be)
	if b.lint != nil {
		b.lint.layer(c, blk.Name, file, typeNode)
	}
	c.Provider = blk.Provider
	if provider != nil {
		c.Provider = b.boolean(file, provider, e)
	}
	return c
}

// onlyChain returns the single module of mods when it is a chain.
func onlyChain(mods []core.Module) (*core.Chain, bool) {
	if len(mods) != 1 {
		return nil, false
	}
	c, ok := mods[0].(*core.Chain)
	return c, ok
}

// describeModules names mods' types, for errors.
func describeModules(mods []core.Module) string {
	if len(mods) == 0 {
		return "no layer"
	}
	names := make([]string, len(mods))
	for i, m := range mods {
		names[i] = core.TypeName(m)
	}
	return strings.Join(names, ", ")
}
