package convert

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Options tune a conversion.
type Options struct {
	// Component, when set, converts only that component (the others found
	// are still accounted for).
	Component string
	// DType is the output dtype (float32, float16, bfloat16); empty keeps
	// the source's (the one most of the component's bytes have).
	DType string
	// EMA takes the U-Net's EMA weights (model_ema.*) of an original
	// checkpoint that has both, as diffusers' --extract_ema does.
	EMA bool
	// Lenient reports source keys that no component uses instead of
	// failing.
	Lenient bool
	// AllowClasses lists extra classes ("module.Name") a pickle may hold,
	// read as inert records and ignored.
	AllowClasses []string
	// Variant picks a diffusers weights variant (fp16: model.fp16.safetensors).
	Variant string
	// Params sets spec parameters the tensors' shapes do not tell and no
	// config.json gives (a single-file checkpoint has none): keys
	// "<component>.<parameter>", e.g. "unet.num_heads".
	Params map[string]string
}

// Found is a component found in a source, ready to convert.
type Found struct {
	Part   *Part
	Table  *Table
	Layout *Layout
	Prefix string // the prefix its names carry in the part
	EMA    bool
	// Sources holds, for each row of the table, its source tensor.
	Sources []*tensorRef
	// Params are the spec parameters the tensors' shapes and the source's
	// config imply (every rule of the table).
	Params map[string]string
	// DType is the source's floating-point type (the one most bytes have).
	DType     string
	NumParams int64
}

// Component is the component's name.
func (f *Found) Component() string { return f.Table.Component }

// SourceBytes is the size of the component's tensors in the source.
func (f *Found) SourceBytes() int64 {
	var n int64
	for _, s := range f.Sources {
		n += s.numel() * int64(dtypeSize(s.dtype))
	}
	return n
}

func dtypeSize(st string) int {
	switch st {
	case "F64", "I64":
		return 8
	case "F32", "I32":
		return 4
	case "F16", "BF16", "I16":
		return 2
	}
	return 1
}

// claims lists the source keys the component uses.
func (f *Found) claims() []string {
	out := make([]string, len(f.Sources))
	for i, s := range f.Sources {
		out[i] = s.key
	}
	return out
}

// Detection is what a source holds: components, and the keys accounted
// for otherwise.
type Detection struct {
	Source *Source
	Found  []*Found
	// Ignored are keys of known non-weights (a noise schedule, EMA copies
	// not converted, CLIP position ids), per part.
	Ignored []string
	// Unused are keys no component uses and no rule ignores: an error
	// unless Options.Lenient.
	Unused []string
}

// candidate is one way to read a part as a component.
type candidate struct {
	table   *Table
	layout  *Layout
	prefix  string
	ema     bool
	present int
	missing []string // source names not found
}

func (c *candidate) complete() bool { return c.present == len(c.table.Rows) }

func (c *candidate) name(r *Row) string {
	n := c.prefix + r.Name(c.layout.Name)
	if c.ema {
		return emaName(c.layout.EMAPrefix, n)
	}
	return n
}

func (c *candidate) String() string {
	return fmt.Sprintf("%s (%s layout%s)", c.table.Component, c.layout.Name, prefixNote(c.prefix, c.ema))
}

func prefixNote(prefix string, ema bool) string {
	switch {
	case ema:
		return ", EMA weights"
	case prefix != "":
		return ", " + prefix + "*"
	}
	return ""
}

// Detect finds the components of every part of the source. Every source
// key must end up used by a component or ignored by a rule of its layout;
// every tensor of a component must be present.
func Detect(src *Source, o Options) (*Detection, error) {
	d := &Detection{Source: src}
	for key := range o.Params {
		comp, _, _ := strings.Cut(key, ".")
		if _, ok := TableOf(comp); !ok {
			return nil, fmt.Errorf("convert: --param %s: want <component>.<parameter>, component one of %s", key, strings.Join(componentOrder, ", "))
		}
	}
	if o.Component != "" {
		if _, ok := TableOf(o.Component); !ok {
			return nil, fmt.Errorf("convert: unknown component %q (want one of %s)", o.Component, strings.Join(componentOrder, ", "))
		}
	}
	for _, p := range src.Parts {
		found, ignored, unused, err := detectPart(p, o)
		if err != nil {
			return nil, err
		}
		d.Found = append(d.Found, found...)
		d.Ignored = append(d.Ignored, ignored...)
		d.Unused = append(d.Unused, unused...)
	}
	if len(d.Unused) > 0 && !o.Lenient {
		return nil, fmt.Errorf("convert: %s: %d tensors are used by no component: %s (convert with --lenient to leave them out)",
			src.Path, len(d.Unused), firstN(d.Unused, 8))
	}
	if o.Component != "" {
		var keep []*Found
		for _, f := range d.Found {
			if f.Component() == o.Component {
				keep = append(keep, f)
			}
		}
		if len(keep) == 0 {
			return nil, fmt.Errorf("convert: %s holds no %s (found: %s)", src.Path, o.Component, d.components())
		}
		d.Found = keep
	}
	return d, nil
}

func (d *Detection) components() string {
	var names []string
	for _, f := range d.Found {
		names = append(names, f.Component())
	}
	if len(names) == 0 {
		return "nothing"
	}
	return strings.Join(names, ", ")
}

// detectPart reads one key space.
func detectPart(p *Part, o Options) ([]*Found, []string, []string, error) {
	var cands []*candidate
	hint := knownClasses[p.Class]
	for _, t := range tables {
		if hint != "" && t.Component != hint {
			continue
		}
		var best *candidate
		for _, l := range t.Layouts {
			for _, prefix := range l.Prefixes {
				for _, ema := range []bool{false, true} {
					// EMA names drop the prefix's first segment: only
					// prefixed keys have one.
					if ema && (l.EMAPrefix == "" || !o.EMA || prefix == "") {
						continue
					}
					c := &candidate{table: t, layout: l, prefix: prefix, ema: ema}
					for _, r := range t.Rows {
						if _, ok := p.tensors[c.name(r)]; ok {
							c.present++
						} else {
							c.missing = append(c.missing, c.name(r))
						}
					}
					if best == nil || c.present > best.present || c.present == best.present && ema {
						best = c
					}
				}
			}
		}
		if best != nil && best.present > 0 {
			cands = append(cands, best)
		}
	}
	// Complete matches first, the largest first (a U-Net file matches
	// most of the ControlNet table too; a ControlNet file most of the
	// U-Net's); a key serves one component.
	slices.SortStableFunc(cands, func(a, b *candidate) int {
		if a.complete() != b.complete() {
			if a.complete() {
				return -1
			}
			return 1
		}
		return cmp.Compare(b.present, a.present)
	})
	claimed := map[string]bool{}
	var found []*Found
	var chosen []*candidate
	for _, c := range cands {
		if !c.complete() {
			continue
		}
		overlap := false
		for _, r := range c.table.Rows {
			if claimed[c.name(r)] {
				overlap = true
				break
			}
		}
		if overlap {
			continue
		}
		f, err := newFound(p, c, o)
		if err != nil {
			return nil, nil, nil, err
		}
		for _, k := range f.claims() {
			claimed[k] = true
		}
		found = append(found, f)
		chosen = append(chosen, c)
	}
	// A large partial match whose keys no complete one took is a
	// component with tensors missing: say so rather than call its keys
	// unused.
	for _, c := range cands {
		if c.complete() || 2*c.present < len(c.table.Rows) {
			continue
		}
		fresh := 0
		for _, r := range c.table.Rows {
			if _, ok := p.tensors[c.name(r)]; ok && !claimed[c.name(r)] {
				fresh++
			}
		}
		if 2*fresh >= len(c.table.Rows) {
			return nil, nil, nil, fmt.Errorf("convert: %s looks like a %s, but %d of its %d tensors are missing: %s",
				p.label(), c, len(c.missing), len(c.table.Rows), firstN(c.missing, 6))
		}
	}
	if len(found) == 0 {
		return nil, nil, nil, unknownLayout(p, cands)
	}
	for _, c := range chosen {
		if o.EMA && c.layout.EMAPrefix != "" && !c.ema {
			return nil, nil, nil, fmt.Errorf("convert: %s: --ema, but its %s has no EMA weights (%s*)", p.label(), c.table.Component, c.layout.EMAPrefix)
		}
	}
	var ignoredKeys, unused []string
	for _, k := range p.keys {
		if claimed[k] {
			continue
		}
		if ignoredBy(chosen, k) {
			ignoredKeys = append(ignoredKeys, p.qualify(k))
		} else {
			unused = append(unused, p.qualify(k))
		}
	}
	return found, ignoredKeys, unused, nil
}

// qualify names a key with its part.
func (p *Part) qualify(k string) string {
	if p.Name != "" {
		return p.Name + "/" + k
	}
	return k
}

// ignoredBy reports whether a chosen layout's rules ignore key: its ignore
// patterns, and, when the EMA copy was converted, the regular weights.
func ignoredBy(chosen []*candidate, key string) bool {
	for _, c := range chosen {
		if ignored(c.layout.Ignore, key) || c.ema && strings.HasPrefix(key, c.prefix) {
			return true
		}
	}
	return false
}

// unknownLayout explains a part no table matches.
func unknownLayout(p *Part, cands []*candidate) error {
	var b strings.Builder
	fmt.Fprintf(&b, "convert: %s: no known layout matches its %d tensors", p.label(), len(p.keys))
	if p.Class != "" {
		fmt.Fprintf(&b, " (config.json says %s)", p.Class)
	}
	if len(cands) > 0 {
		c := cands[0]
		for _, x := range cands[1:] {
			if 2*x.present*len(c.table.Rows) > 2*c.present*len(x.table.Rows) {
				c = x
			}
		}
		fmt.Fprintf(&b, "; closest: %s with %d of %d tensors, missing %s", c, c.present, len(c.table.Rows), firstN(c.missing, 5))
	}
	var unmatched []string
	for _, k := range p.keys {
		known := false
		for _, c := range cands {
			for _, r := range c.table.Rows {
				if c.name(r) == k {
					known = true
					break
				}
			}
		}
		if !known {
			unmatched = append(unmatched, k)
		}
	}
	if len(unmatched) > 0 {
		fmt.Fprintf(&b, "; first unmatched keys: %s", firstN(unmatched, 5))
	}
	return fmt.Errorf("%s", b.String())
}

func firstN(keys []string, n int) string {
	if len(keys) <= n {
		return strings.Join(keys, ", ")
	}
	return strings.Join(keys[:n], ", ") + fmt.Sprintf(", ... (%d more)", len(keys)-n)
}

// newFound binds a complete candidate's rows to tensors and checks them.
func newFound(p *Part, c *candidate, o Options) (*Found, error) {
	f := &Found{Part: p, Table: c.table, Layout: c.layout, Prefix: c.prefix, EMA: c.ema, Params: map[string]string{}}
	bytesOf := map[string]int64{}
	for _, r := range c.table.Rows {
		src := p.tensors[c.name(r)]
		if _, err := targetShape(r, c.layout.Name, src.shape); err != nil {
			return nil, fmt.Errorf("convert: %s: %s: %w", p.label(), src.key, err)
		}
		f.Sources = append(f.Sources, src)
		f.NumParams += src.numel()
		bytesOf[src.dtype] += src.numel()
	}
	best := int64(-1)
	for _, dt := range []string{"F32", "F16", "BF16", "F64"} {
		if bytesOf[dt] > best {
			f.DType, best = dt, bytesOf[dt]
		}
	}
	for name, rule := range c.table.Params {
		v, err := f.param(rule)
		if err != nil {
			return nil, fmt.Errorf("convert: %s: %s parameter %s: %w", p.label(), c.table.Component, name, err)
		}
		f.Params[name] = v
	}
	for key, v := range o.Params {
		comp, name, ok := strings.Cut(key, ".")
		if !ok || comp != c.table.Component {
			continue
		}
		if _, known := c.table.Params[name]; !known {
			return nil, fmt.Errorf("convert: --param %s: %s has no parameter %s (it has %s)", key, comp, name, strings.Join(slices.Sorted(maps.Keys(c.table.Params)), ", "))
		}
		f.Params[name] = v
	}
	return f, nil
}

// targetShape is the Refiners shape of a source tensor: the same, but for
// the original layout's 1x1 convolutions, whose two unit dimensions go.
func targetShape(r *Row, layout string, shape []int64) ([]int64, error) {
	if layout != "original" || !r.Conv1x1 {
		return shape, nil
	}
	switch {
	case len(shape) == 4 && shape[2] == 1 && shape[3] == 1:
		return shape[:2], nil
	case len(shape) == 2: // already a linear (some re-saved checkpoints)
		return shape, nil
	}
	return nil, fmt.Errorf("shape %v is neither a 1x1 convolution nor a linear", shape)
}

// param evaluates one spec parameter rule.
func (f *Found) param(rule ParamRule) (string, error) {
	if rule.Key != "" {
		for i, r := range f.Table.Rows {
			if r.Refiners == rule.Key {
				shape, _ := targetShape(r, f.Layout.Name, f.Sources[i].shape)
				if rule.Dim >= len(shape) {
					return "", fmt.Errorf("%s has shape %v", f.Sources[i].key, shape)
				}
				return strconv.FormatInt(shape[rule.Dim], 10), nil
			}
		}
		return "", fmt.Errorf("no tensor %s in the table", rule.Key)
	}
	v, ok := f.Part.Config[rule.Config]
	if !ok {
		return strconv.FormatFloat(rule.Default, 'g', -1, 64), nil
	}
	switch x := v.(type) {
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), nil
	case []any: // per-block values (attention_head_dim): all must agree
		if len(x) > 0 {
			if first, ok := x[0].(float64); ok && !slices.ContainsFunc(x, func(e any) bool { return e != x[0] }) {
				return strconv.FormatFloat(first, 'g', -1, 64), nil
			}
		}
	}
	return "", fmt.Errorf("config.json %s = %v is not supported", rule.Config, v)
}
