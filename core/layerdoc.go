package core

import (
	"fmt"
	"sort"
)

// LayerDoc is a layer type's reference documentation beyond its
// arguments: which Refiners class it stands for, what it takes and gives,
// and which contexts it reads or writes. Model packages document their
// layers next to their registrations (Document, in init); the layer
// reference (`refinersd layers`, docs/layers.md) is generated from these.
type LayerDoc struct {
	// Refiners is the Refiners 0.4.0 class (or construct) the layer is,
	// e.g. "fl.Linear" or "UseContext(...).compose(...)".
	Refiners string
	// Inputs and Outputs describe the tensors in and out, with shapes.
	Inputs, Outputs string
	// Reads and Writes name the contexts used, as "context/key" (or how the
	// arguments name them).
	Reads, Writes []string
	// Args documents arguments registered without a doc.
	Args map[string]string
}

var layerDocs = map[string]LayerDoc{}

// Document adds the reference documentation of a layer type (registered
// before or after: docs are looked up by name). Documenting a name twice
// is a programming error.
func Document(name string, d LayerDoc) {
	if _, dup := layerDocs[name]; dup {
		panic("core: layer type " + name + " documented twice")
	}
	layerDocs[name] = d
}

// DocumentAll adds the documentation of several layer types.
func DocumentAll(docs map[string]LayerDoc) {
	names := make([]string, 0, len(docs))
	for n := range docs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		Document(n, docs[n])
	}
}

// DocOf returns the reference documentation of a layer type.
func DocOf(name string) (LayerDoc, bool) {
	d, ok := layerDocs[name]
	return d, ok
}

// ArgDoc is the documentation of argument i: its own, else the one the
// layer's LayerDoc gives.
func (t *LayerType) ArgDoc(i int) string {
	if d := t.Args[i].Doc; d != "" {
		return d
	}
	return layerDocs[t.Name].Args[t.Args[i].Name]
}

// Undocumented lists what the reference lacks for registered layer types:
// a LayerDoc without a Refiners name, inputs or outputs, arguments without
// a doc, and docs of arguments or layers that do not exist. A test keeps
// it empty, so a new layer is documented when it is registered.
func Undocumented() []string {
	var out []string
	for _, name := range LayerTypes() {
		t := registry[name]
		d, ok := layerDocs[name]
		if !ok {
			out = append(out, name+": no LayerDoc (core.Document)")
			continue
		}
		if t.Doc == "" {
			out = append(out, name+": no summary")
		}
		if d.Refiners == "" || d.Inputs == "" || d.Outputs == "" {
			out = append(out, name+": LayerDoc lacks Refiners, Inputs or Outputs")
		}
		declared := map[string]bool{}
		for i, a := range t.Args {
			declared[a.Name] = true
			if t.ArgDoc(i) == "" {
				out = append(out, fmt.Sprintf("%s.%s: no doc", name, a.Name))
			}
		}
		for a := range d.Args {
			if !declared[a] {
				out = append(out, fmt.Sprintf("%s: documents %s, which it does not take", name, a))
			}
		}
	}
	for name := range layerDocs {
		if _, ok := registry[name]; !ok {
			out = append(out, name+": documented but not registered")
		}
	}
	sort.Strings(out)
	return out
}
