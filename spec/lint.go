package spec

import (
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/refiners-go/refiners/core"
)

// Finding is one lint warning: the spec builds, but something in it is
// probably not what its writer meant.
type Finding struct {
	File      string
	Line, Col int
	// Check is the kind of finding: unused-param, unused-block, shadowed,
	// default-arg or unreachable-weights.
	Check string
	Msg   string
}

func (f Finding) String() string {
	return fmt.Sprintf("%s:%d:%d: %s: %s", f.File, f.Line, f.Col, f.Check, f.Msg)
}

// Lint checks a spec (`refinersd lint`): parameters and blocks never used,
// names that shadow others, arguments equal to their defaults, and layers
// whose weights cannot reach the output (after a Return, or feeding only
// layers that ignore their input, with no context written on the way).
// The spec is built (with overrides) to check arguments as evaluated; a
// spec that does not build gets its build errors instead.
func (s *Spec) Lint(overrides map[string]string) ([]Finding, error) {
	l := &linter{spec: s, rec: newRecord()}
	root, err := s.build(overrides, l.rec)
	if err != nil {
		return nil, err
	}
	l.params()
	l.blocks()
	l.defaults()
	if root != nil {
		l.reach(root, true)
	}
	seen := map[Finding]bool{}
	var out []Finding
	for _, f := range l.found {
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
	return out, nil
}

type linter struct {
	spec  *Spec
	rec   *buildRecord
	found []Finding
}

func (l *linter) add(file string, n *yaml.Node, check, format string, v ...any) {
	f := Finding{File: file, Check: check, Msg: fmt.Sprintf(format, v...)}
	if n != nil {
		f.Line, f.Col = n.Line, n.Column
	}
	l.found = append(l.found, f)
}

// buildRecord is what the builder notes for Lint and BuildWithSources: each argument's values
// over every instance, and where each built layer comes from.
type buildRecord struct {
	args   map[*yaml.Node]*argUse
	order  []*yaml.Node
	origin map[core.Module]origin
}

func newRecord() *buildRecord {
	return &buildRecord{args: map[*yaml.Node]*argUse{}, origin: map[core.Module]origin{}}
}

type argUse struct {
	file       string
	layer      string
	def        any
	allDefault bool
}

type origin struct {
	typeName string // the registered type or block name
	file     string
	node     *yaml.Node
}

// arg notes the value of an argument written as a plain value (one with
// an expression says it follows a parameter, whatever it is now).
func (r *buildRecord) arg(file string, k, n *yaml.Node, layer string, def, v any) {
	if hasExpr(n) {
		return
	}
	u, ok := r.args[k]
	if !ok {
		u = &argUse{file: file, layer: layer, def: def, allDefault: true}
		r.args[k] = u
		r.order = append(r.order, k)
	}
	u.allDefault = u.allDefault && sameValue(v, def)
}

// blockArg notes a block argument against the parameter's default, when
// that default is a plain value.
func (r *buildRecord) blockArg(file string, k, n *yaml.Node, blk *Block, v any) {
	for _, p := range blk.Params {
		if p.Name != k.Value || p.Default == nil {
			continue
		}
		d := deref(p.Default)
		if d.Kind != yaml.ScalarNode || strings.Contains(d.Value, "${") {
			return
		}
		var def any
		b := &builder{}
		def, ok := b.eval(blk.File, d, &env{vars: map[string]value{}})
		if ok {
			r.arg(file, k, n, "block "+blk.Name, def, v)
		}
	}
}

func hasExpr(n *yaml.Node) bool {
	n = deref(n)
	if n == nil {
		return false
	}
	if n.Kind == yaml.ScalarNode && strings.Contains(n.Value, "${") {
		return true
	}
	for _, c := range n.Content {
		if hasExpr(c) {
			return true
		}
	}
	return false
}

func (r *buildRecord) layer(m core.Module, typeName, file string, n *yaml.Node) {
	r.origin[m] = origin{typeName: typeName, file: file, node: n}
}

func sameValue(v, def any) bool {
	switch d := def.(type) {
	case float64:
		f, ok := toFloat(v)
		return ok && f == d
	case int64:
		i, ok := asInt(v)
		return ok && i == d
	case []int64:
		got, ok := v.([]int64)
		return ok && slices.Equal(got, d)
	case nil:
		return false
	}
	return reflect.DeepEqual(v, def)
}

// defaults reports arguments that equal their default in every instance.
func (l *linter) defaults() {
	for _, k := range l.rec.order {
		u := l.rec.args[k]
		if u.allDefault {
			l.add(u.file, k, "default-arg", "%s of %s is its default (%v): leave it out", k.Value, u.layer, formatValue(u.def))
		}
	}
}

func formatValue(v any) string {
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprint(v)
}

var identifier = regexp.MustCompile(`[A-Za-z_][A-Za-z0-9_]*`)

// refs lists the parameter names the ${...} expressions under n use.
func refs(n *yaml.Node, into map[string]bool) {
	if n == nil {
		return
	}
	if n.Kind == yaml.ScalarNode {
		refsIn(n.Value, into)
	}
	for _, c := range n.Content {
		refs(c, into)
	}
}

func refsIn(text string, into map[string]bool) {
	for _, m := range placeholder.FindAllStringSubmatch(text, -1) {
		for _, id := range identifier.FindAllString(m[1], -1) {
			if id != "true" && id != "false" {
				into[id] = true
			}
		}
	}
}

// params reports unused and shadowing parameters.
func (l *linter) params() {
	s := l.spec
	top := map[string]*Param{}
	for _, p := range s.Params {
		top[p.Name] = p
	}
	used := map[string]bool{} // top-level parameters used
	// The spec's own expressions: its layers, args and defaults (a
	// default's use of itself does not count).
	refs(s.layers, used)
	refsIn(s.Args, used)
	for _, p := range s.Params {
		r := map[string]bool{}
		refs(p.Default, r)
		delete(r, p.Name)
		for n := range r {
			used[n] = true
		}
	}
	for _, name := range l.blockNames() {
		b := s.Blocks[name]
		own := map[string]bool{}
		for _, p := range b.Params {
			own[p.Name] = true
		}
		r := map[string]bool{}
		refs(b.layers, r)
		refsIn(b.Args, r)
		for _, p := range b.Params {
			d := map[string]bool{}
			refs(p.Default, d)
			for n := range d {
				if n == p.Name {
					used[n] = true // the default reads the spec's own
				} else {
					r[n] = true
				}
			}
		}
		for n := range r {
			if !own[n] {
				used[n] = true
			}
		}
		for _, p := range b.Params {
			switch {
			case !r[p.Name]:
				l.add(b.File, p.key, "unused-param", "parameter %s of block %s is never used", p.Name, b.Name)
			case top[p.Name] != nil && p.Default != nil && !followsOuter(p):
				// A required parameter is given at each use, and a default
				// of ${name} follows the spec's: only another default hides
				// the spec's value.
				l.add(b.File, p.key, "shadowed", "parameter %s of block %s shadows the spec's parameter %s (%s): inside %s, ${%s} is the block's default %s unless a use gives it, whatever --set %s=... says; give it at each use, or default it to ${%s}",
					p.Name, b.Name, p.Name, top[p.Name].Position, b.Name, p.Name, deref(p.Default).Value, p.Name, p.Name)
			}
			l.badName(b.File, p)
		}
	}
	for _, p := range s.Params {
		if !used[p.Name] && s.layers != nil && p.Name != "true" && p.Name != "false" {
			l.add(s.File, p.key, "unused-param", "parameter %s is never used", p.Name)
		}
		l.badName(s.File, p)
	}
}

// followsOuter reports whether a block parameter's default uses the
// spec's parameter of the same name.
func followsOuter(p *Param) bool {
	r := map[string]bool{}
	refs(p.Default, r)
	return r[p.Name]
}

// badName reports parameter names an expression cannot reach.
func (l *linter) badName(file string, p *Param) {
	switch p.Name {
	case "index":
		l.add(file, p.key, "shadowed", "parameter index is hidden by repeat's index inside repeated items: rename it")
	case "true", "false":
		l.add(file, p.key, "shadowed", "parameter %s cannot be used: ${%s} is the boolean", p.Name, p.Name)
	}
}

func (l *linter) blockNames() []string {
	names := make([]string, 0, len(l.spec.Blocks))
	for n := range l.spec.Blocks {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// blocks reports the spec file's blocks that no layer reaches.
func (l *linter) blocks() {
	s := l.spec
	if s.layers == nil {
		return // a block library: its blocks are for the specs importing it
	}
	reached := map[string]bool{}
	var visit func(list *yaml.Node)
	visit = func(list *yaml.Node) {
		walkItems(list, func(typeName string) {
			if b, ok := s.Blocks[typeName]; ok && !reached[typeName] {
				reached[typeName] = true
				visit(b.layers)
			}
		})
	}
	visit(s.layers)
	for _, name := range l.blockNames() {
		if b := s.Blocks[name]; b.File == s.File && !reached[name] {
			l.add(b.File, b.node, "unused-block", "block %s is never used", name)
		}
	}
}

// walkItems calls f with the type name of each layer item in list, its
// children and its layer arguments (a GLU's activation).
func walkItems(list *yaml.Node, f func(typeName string)) {
	list = deref(list)
	if list == nil || list.Kind != yaml.SequenceNode {
		return
	}
	for _, it := range list.Content {
		walkItem(it, f)
	}
}

func walkItem(it *yaml.Node, f func(string)) {
	it = deref(it)
	switch {
	case it.Kind == yaml.ScalarNode:
		f(it.Value)
	case it.Kind == yaml.MappingNode && len(it.Content) == 2:
		name, body := it.Content[0].Value, deref(it.Content[1])
		f(name)
		switch body.Kind {
		case yaml.SequenceNode:
			walkItems(body, f)
		case yaml.MappingNode:
			t, _ := core.LookupLayer(name)
			for i := 0; i+1 < len(body.Content); i += 2 {
				k, v := body.Content[i].Value, body.Content[i+1]
				if k == "layers" {
					walkItems(v, f)
				} else if t != nil && argSpec(t, k) != nil && argSpec(t, k).Kind == core.ModuleArg {
					walkItem(v, f)
				}
			}
		}
	}
}

// reach walks the built model from the output back: a layer whose output
// is not needed and that writes no context does not affect anything, and
// its weights are reported. needed says whether m's output is used. It
// returns whether m uses its input.
func (l *linter) reach(m core.Module, needed bool) bool {
	c, isChain := m.(*core.Chain)
	if !needed && !l.writes(m) {
		if hasParams(m) {
			l.unreachable(m, "its output is not used and it writes no context")
		}
		return false
	}
	if !isChain {
		return !l.ignoresInput(m)
	}
	children := c.Children()
	switch c.Kind() {
	case core.Sequence, core.Residual, core.Passthrough:
		for i, child := range children {
			if l.typeOf(child) == "Return" {
				for _, dead := range children[i+1:] {
					if hasParams(dead) {
						l.unreachable(dead, "it comes after a Return, so it never runs")
					}
				}
				children = children[:i+1]
				break
			}
		}
		need := needed && c.Kind() != core.Passthrough
		if len(children) > 0 && l.typeOf(children[len(children)-1]) == "Return" {
			need = true // what reaches a Return is the call's output
		}
		for i := len(children) - 1; i >= 0; i-- {
			need = l.reach(children[i], need)
		}
		return need || c.Kind() != core.Sequence
	default: // the children run side by side on the chain's input
		uses := false
		for _, child := range children {
			if l.reach(child, needed) {
				uses = true
			}
		}
		return uses
	}
}

func (l *linter) unreachable(m core.Module, why string) {
	o, ok := l.rec.origin[m]
	if !ok {
		return
	}
	l.add(o.file, o.node, "unreachable-weights", "the weights of this %s cannot reach the output: %s", o.typeName, why)
}

func (l *linter) typeOf(m core.Module) string {
	if o, ok := l.rec.origin[m]; ok {
		return o.typeName
	}
	return core.TypeName(m)
}

// writes reports whether m, or a layer in it, writes a context.
func (l *linter) writes(m core.Module) bool {
	if d, ok := core.DocOf(l.typeOf(m)); ok && len(d.Writes) > 0 {
		return true
	}
	if c, ok := m.(*core.Chain); ok {
		for _, child := range c.Children() {
			if l.writes(child) {
				return true
			}
		}
	}
	return false
}

func (l *linter) ignoresInput(m core.Module) bool {
	d, ok := core.DocOf(l.typeOf(m))
	return ok && strings.HasPrefix(d.Inputs, "ignored")
}

func hasParams(m core.Module) bool { return len(core.StateDict(m)) > 0 }
