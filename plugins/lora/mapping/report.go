package mapping

import (
	"fmt"
	"strings"

	"github.com/refiners-go/refiners/sdk"
)

// What a plan made of each key, told the way a user reads a file: per
// component, how many keys were matched or skipped, and every key that was
// not used grouped by what it is and why, with a count and an example
// (never a bare "matches nothing").

// KeyGroup is a set of keys a plan does not use, for one reason.
type KeyGroup struct {
	// File is the file's ID, with several files.
	File string
	// Component is the part of the model the keys are for ("" when the
	// layout does not say).
	Component string
	// Kind is what the keys hold, read from their names (lora_mid.weight,
	// dora_scale, hada_w1_a, ...); empty when the group counts whole
	// modules.
	Kind string
	// Reason says why they are not used.
	Reason string
	// Keys are the keys (as in Unmatched); Modules counts the modules of a
	// module group. Example is a key, or a module group's first module.
	Keys    []string
	Modules int
	Example string
	// Along counts the other keys of their modules left out with them.
	Along int
}

func (g KeyGroup) String() string {
	var b strings.Builder
	if g.File != "" {
		b.WriteString(g.File + ": ")
	}
	if g.Component != "" {
		b.WriteString(g.Component + ": ")
	}
	if g.Kind != "" {
		n := len(g.Keys)
		fmt.Fprintf(&b, "%d `%s` %s: %s", n, g.Kind, strings.TrimPrefix(plural(n, "key"), fmt.Sprint(n)+" "), g.Reason)
	} else {
		fmt.Fprintf(&b, "%s (%s): %s", plural(g.Modules, "module"), plural(len(g.Keys), "key"), g.Reason)
	}
	if g.Along > 0 {
		fmt.Fprintf(&b, " (left out with the other %s of their modules)", plural(g.Along, "key"))
	}
	if g.Example != "" {
		b.WriteString(", e.g. " + g.Example)
	}
	return b.String()
}

// ComponentReport is how the keys for one component of a file were used.
type ComponentReport struct {
	File      string // the file's ID, with several files
	Component string // "unet", "text_encoder"; "" when the layout does not say
	Matched   int    // keys used by the plan
	Layers    int    // layers adapted
	Skipped   int    // keys for a component not being planned
	// SkipReason says why they were skipped.
	SkipReason string
	NotUsed    int // keys neither matched nor skipped (see Report.NotUsed)
}

func (c ComponentReport) String() string {
	var b strings.Builder
	if c.File != "" {
		b.WriteString(c.File + ": ")
	}
	name := c.Component
	if name == "" {
		name = "keys of no component"
	}
	b.WriteString(name + ": ")
	var parts []string
	if c.Matched > 0 {
		parts = append(parts, fmt.Sprintf("%s matched (%s adapted)", plural(c.Matched, "key"), plural(c.Layers, "layer")))
	}
	if c.Skipped > 0 {
		parts = append(parts, fmt.Sprintf("%s skipped (%s)", plural(c.Skipped, "key"), c.SkipReason))
	}
	if c.NotUsed > 0 {
		parts = append(parts, fmt.Sprintf("%s not used", plural(c.NotUsed, "key")))
	}
	b.WriteString(strings.Join(parts, ", "))
	return b.String()
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// Summary is the report in lines: each component's counts, then each
// group of keys not used.
func (r Report) Summary() []string {
	var out []string
	for _, c := range r.Components {
		out = append(out, c.String())
	}
	return append(out, groupLines(r.NotUsed)...)
}

// Notes are the lines worth a user's attention: the summary when a key
// was skipped or not used, else nothing.
func (r Report) Notes() []string {
	for _, c := range r.Components {
		if c.Skipped > 0 || c.NotUsed > 0 {
			return r.Summary()
		}
	}
	return nil
}

// keyKind is what a key holds, read from its name: the last dotted
// segment, or the last two when the last is weight or bias after a name
// (lora_unet_x.lora_mid.weight -> lora_mid.weight, out.2.bias -> bias).
func keyKind(key string) string {
	seg := strings.Split(key, ".")
	n := len(seg)
	if n >= 2 && (seg[n-1] == "weight" || seg[n-1] == "bias") && strings.Trim(seg[n-2], "0123456789") != "" {
		return seg[n-2] + "." + seg[n-1]
	}
	return seg[n-1]
}

// maxGroups bounds the groups a summary or an error lists (a model
// checkpoint passed as a LoRA has hundreds of kinds of keys).
const maxGroups = 8

// groupLines renders groups, the first maxGroups of them.
func groupLines(groups []KeyGroup) []string {
	var out []string
	for i, g := range groups {
		if i == maxGroups {
			keys := 0
			for _, h := range groups[i:] {
				keys += len(h.Keys) + h.Along
			}
			out = append(out, fmt.Sprintf("%d more groups of keys not used (%s; see the unmatched keys)", len(groups)-i, plural(keys, "key")))
			break
		}
		out = append(out, g.String())
	}
	return out
}

// moduleOf names a module as its keys do: the first key without its kind.
func moduleOf(m *module) string {
	if len(m.keys) == 0 {
		return m.name
	}
	return strings.TrimSuffix(m.keys[0], "."+keyKind(m.keys[0]))
}

// component is the report of one file's component, made on first use.
func (pl *planner) component(f *File, comp string) *ComponentReport {
	file := ""
	if pl.multi {
		file = f.ID
	}
	for i := range pl.report.Components {
		if c := &pl.report.Components[i]; c.File == file && c.Component == comp {
			return c
		}
	}
	pl.report.Components = append(pl.report.Components, ComponentReport{File: file, Component: comp})
	return &pl.report.Components[len(pl.report.Components)-1]
}

// group adds keys to the group of (file, component, kind, reason); example
// is used when the group is new.
func (pl *planner) group(f *File, comp, kind, reason, example string, keys []string, modules, along int) {
	file := ""
	if pl.multi {
		file = f.ID
	}
	pl.component(f, comp).NotUsed += len(keys) + along
	for i := range pl.report.NotUsed {
		g := &pl.report.NotUsed[i]
		if g.File == file && g.Component == comp && g.Kind == kind && g.Reason == reason {
			g.Keys = append(g.Keys, pl.labels(f, keys)...)
			g.Modules += modules
			g.Along += along
			return
		}
	}
	pl.report.NotUsed = append(pl.report.NotUsed, KeyGroup{File: file, Component: comp, Kind: kind, Reason: reason,
		Keys: pl.labels(f, keys), Modules: modules, Along: along, Example: pl.label(f, example)})
}

// notUnderstood reports keys no layout explains, grouped by kind.
func (pl *planner) notUnderstood(f *File, n *naming, keys []string) {
	pl.report.Unmatched = append(pl.report.Unmatched, pl.labels(f, keys)...)
	for _, k := range keys {
		comp := ""
		if n != nil {
			comp = n.componentOf(k)
		}
		pl.group(f, comp, keyKind(k), "not a kind of key this plugin version knows", k, []string{k}, 0, 0)
	}
}

// leftOut reports a module that is not used, for a reason that concerns
// the whole module.
func (pl *planner) leftOut(f *File, m *module, reason string) {
	pl.report.Unmatched = append(pl.report.Unmatched, pl.labels(f, m.keys)...)
	pl.group(f, m.component, "", reason, moduleOf(m), m.keys, 1, 0)
}

// refused reports a module left out for the keys of one role the plugin
// does not support: those keys are the group, the rest go along.
func (pl *planner) refused(f *File, m *module, role, reason string) {
	pl.report.Unmatched = append(pl.report.Unmatched, pl.labels(f, m.keys)...)
	key := m.tensors[role].Key
	pl.group(f, m.component, keyKind(key), reason, key, []string{key}, 1, len(m.keys)-1)
}

// skip reports a module for a component not being planned.
func (pl *planner) skip(f *File, m *module) {
	pl.report.Skipped = append(pl.report.Skipped, pl.labels(f, m.keys)...)
	c := pl.component(f, m.component)
	c.Skipped += len(m.keys)
	switch {
	case pl.o.Component != "":
		c.SkipReason = "the plan is for the " + pl.o.Component + " only"
	case pl.arch != nil:
		c.SkipReason = fmt.Sprintf("the model has no %s %s", pl.arch.Name, m.component)
	default:
		c.SkipReason = "not planned"
	}
}

// componentOf is the component a key's prefix names, when the naming
// tells.
func (n *naming) componentOf(key string) string {
	for _, p := range n.prefixes {
		if p.Component != "" && strings.HasPrefix(key, p.Prefix) {
			return p.Component
		}
	}
	if n.table != "" {
		for _, p := range n.prefixes {
			if p.Component == "" && strings.HasPrefix(key, p.Prefix+"text_model.") {
				return "text_encoder"
			}
		}
	}
	return ""
}

// SDK is the report as the protocol carries it: the per-component summary
// (Notes) follows the warnings, since the protocol has no field for it.
func (r Report) SDK() *sdk.Report {
	return &sdk.Report{
		Format: r.Format, Matched: r.Matched, Unmatched: r.Unmatched,
		ShapeMismatched: r.ShapeMismatched, Skipped: r.Skipped,
		Covered: r.Covered, Layers: r.Layers, EffectiveScales: r.EffectiveScales,
		Warnings: append(append([]string(nil), r.Warnings...), r.Notes()...),
	}
}
