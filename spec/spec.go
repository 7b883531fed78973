// Package spec reads model specs: YAML files that declare a model as a tree
// of layers, with parameters, expressions, reusable blocks, repetition and
// imports. Build turns a spec into a core.Chain. Every problem is reported
// with file:line:col and a stable code (RFN-Sxxx), all of them in one pass
// where possible.
//
// A spec:
//
//	refiners: 1                  # format version (required)
//	name: CLIPTextEncoder        # type name of the root chain (optional)
//	params:                      # parameters, overridable by the caller
//	  dim: 768
//	  ffn: {default: "${dim * 4}", doc: "feed-forward width"}
//	imports: [common.yaml]       # blocks defined in other files
//	blocks:                      # named, parameterised chains
//	  TransformerLayer:
//	    params: {dim: null, heads: 12}   # null: required
//	    kind: Sequence                   # how children combine (default Sequence)
//	    layers:
//	      - Residual:
//	          - LayerNorm: {normalized_shape: "${dim}"}
//	          - SelfAttention: {embedding_dim: "${dim}", num_heads: "${heads}"}
//	layers:                      # the root chain's children
//	  - TransformerLayer: {dim: "${dim}", repeat: 12}
//	  - LayerNorm: {normalized_shape: "${dim}"}
//
// A layer item is `Type: {args}`, `Type: [children]`, `Type:` or `Type`.
// In args, `repeat: N` repeats the item N times (the copy's number is the
// parameter `index`; a boolean counts as 1 or 0, so `repeat: ${a != b}`
// makes a layer optional), `layers: [...]` gives children together with other
// args, and `provider: true` makes a chain a context scope. Types are core
// layers under their Refiners names, blocks, or plugin types written
// `plugin/Type`.
package spec

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"gopkg.in/yaml.v3"

	"github.com/refiners-go/refiners/core"
)

// Version is the spec format version this package reads.
const Version = 1

// chainDef is what a spec's root and a block both declare: a chain's kind,
// printed args, context scoping, doc, parameters and layers.
type chainDef struct {
	Kind     core.Kind
	Args     string
	Provider bool
	Doc      string
	Params   []*Param
	layers   *yaml.Node
}

// chainKeys are the keys a chainDef reads.
var chainKeys = []string{"params", "kind", "args", "provider", "description", "layers"}

// Spec is a parsed spec file with its imports resolved.
type Spec struct {
	chainDef
	File string
	Name string
	// Unwrap makes the model its single layer itself (which must be a
	// chain), so that the keys carry no name of it: for a part whose
	// Refiners state dict is one layer's own, such as SegmentAnything's
	// mask_encoder (a MaskEncoder with its own no_mask_embedding).
	Unwrap bool
	Blocks map[string]*Block
	// Files lists every file read to make this spec: its own first, then
	// its imports, each once, as the loader named them.
	Files []string
}

// Param is a declared parameter.
type Param struct {
	Name     string
	Default  *yaml.Node // nil: required
	Doc      string
	Position string
	key      *yaml.Node // the name, where lint points
}

// Block is a named, parameterised chain.
type Block struct {
	chainDef
	Name string
	File string
	node *yaml.Node
}

var kinds = map[string]core.Kind{
	"Sequence": core.Sequence, "Chain": core.Sequence, "Residual": core.Residual, "Sum": core.Sum,
	"Parallel": core.Parallel, "Distribute": core.Distribute, "Passthrough": core.Passthrough,
	"Concatenate": core.Concatenate, "Matmul": core.Matmul,
}

// MaxFileSize is the largest spec file read, imports included (real specs
// are a few kilobytes): a spec is read whole, so its size is bounded.
const MaxFileSize = 4 << 20

// Options widen where a spec loaded from the file system may import from.
type Options struct {
	// ImportDirs are folders, besides the main spec file's own, that
	// imports may reach (an explicit allow-list).
	ImportDirs []string
}

// loader reads files and records errors.
type loader struct {
	errs    Errors
	loading map[string]bool  // files being read, for import cycles
	parsed  map[string]*Spec // files read, by cycle key: each is parsed once (nil: it failed)
	fsys    fs.FS            // where imports are read from; nil: the OS
	roots   []string         // with the OS: folders imports must stay in (absolute, cleaned)
	files   []string         // every file read, in order
}

func newLoader(fsys fs.FS) *loader {
	return &loader{loading: map[string]bool{}, parsed: map[string]*Spec{}, fsys: fsys}
}

// osLoader reads from the OS, confining imports to the folder of main and
// to the allowed folders.
func osLoader(main string, o Options) (*loader, error) {
	l := newLoader(nil)
	for _, d := range append([]string{filepath.Dir(main)}, o.ImportDirs...) {
		abs, err := filepath.Abs(d)
		if err != nil {
			return nil, err
		}
		l.roots = append(l.roots, abs)
		if real, err := filepath.EvalSymlinks(abs); err == nil && real != abs {
			l.roots = append(l.roots, real)
		}
	}
	return l, nil
}

// resolve names the file rel imports from file, and the key that detects
// cycles. Imports are relative paths; they cannot leave the fs.FS's root,
// or, on the OS, the main spec's folder and the allowed ones (symbolic
// links included).
func (l *loader) resolve(file, rel string) (string, string, error) {
	if l.fsys != nil {
		p := path.Join(path.Dir(file), rel)
		if path.IsAbs(rel) || !fs.ValidPath(p) {
			return "", "", fmt.Errorf("import %s leaves the spec's file set", rel)
		}
		return p, p, nil
	}
	if filepath.IsAbs(rel) {
		return "", "", fmt.Errorf("import %s: an absolute path; imports are relative to the importing file and stay in the spec's folder", rel)
	}
	p := filepath.Join(filepath.Dir(file), rel)
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", "", err
	}
	if !l.inRoots(abs) {
		return "", "", fmt.Errorf("import %s leaves the spec's folder %s (imports stay in the folder of the spec they start from, or one allowed explicitly)", rel, l.roots[0])
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil && !l.inRoots(real) {
		return "", "", fmt.Errorf("import %s is a link to %s, outside the spec's folder %s", rel, real, l.roots[0])
	}
	return p, abs, nil
}

func (l *loader) inRoots(abs string) bool {
	for _, r := range l.roots {
		if rel, err := filepath.Rel(r, abs); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

// read reads one spec file: a regular file (not a device, a FIFO or a
// folder) of at most MaxFileSize bytes.
func (l *loader) read(p string) ([]byte, error) {
	var f fs.File
	var err error
	if l.fsys == nil {
		// Non-blocking, so that opening a FIFO does not wait for a writer;
		// it is refused below as not a regular file.
		f, err = os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	} else {
		f, err = l.fsys.Open(p)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readBounded(f)
}

// noFiles is a file system with no files.
type noFiles struct{}

func (noFiles) Open(name string) (fs.File, error) {
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

func readBounded(f fs.File) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	if st.Size() > MaxFileSize {
		return nil, fmt.Errorf("%d bytes: larger than a spec may be (%d bytes)", st.Size(), MaxFileSize)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("larger than a spec may be (%d bytes)", MaxFileSize)
	}
	return b, nil
}

func (l *loader) errf(file string, n *yaml.Node, code, format string, args ...any) {
	e := &Error{File: file, Code: code, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Col = n.Line, n.Column
	}
	l.errs = append(l.errs, e)
}

// Load reads a spec file and the files it imports, which must be in its
// folder. The error, if any, is an Errors listing every problem found.
func Load(path string) (*Spec, error) { return LoadWith(path, Options{}) }

// LoadWith is Load with imports also allowed from o.ImportDirs.
func LoadWith(path string, o Options) (*Spec, error) {
	l, err := osLoader(path, o)
	if err != nil {
		return nil, Errors{{File: path, Code: CodeImport, Msg: fmt.Sprintf("cannot read spec: %v", err)}}
	}
	src, err := l.read(path)
	if err != nil {
		return nil, Errors{{File: path, Code: CodeImport, Msg: fmt.Sprintf("cannot read spec: %v", err)}}
	}
	return parseWith(l, path, src)
}

// LoadFS reads the spec file name from fsys, and its imports from fsys
// too: a spec stored as a set of files cannot reach outside that set.
func LoadFS(fsys fs.FS, name string) (*Spec, error) {
	l := newLoader(fsys)
	src, err := l.read(name)
	if err != nil {
		return nil, Errors{{File: name, Code: CodeImport, Msg: fmt.Sprintf("cannot read spec: %v", err)}}
	}
	return parseWith(l, name, src)
}

// Parse reads a spec from src; path names it in errors and anchors imports,
// which must stay in path's folder.
func Parse(path string, src []byte) (*Spec, error) {
	l, err := osLoader(path, Options{})
	if err != nil {
		return nil, Errors{{File: path, Code: CodeImport, Msg: fmt.Sprintf("cannot read spec: %v", err)}}
	}
	return parseWith(l, path, src)
}

func parseWith(l *loader, name string, src []byte) (*Spec, error) {
	s := l.parse(name, src, false)
	if len(l.errs) > 0 {
		return nil, l.errs.sorted()
	}
	s.Files = l.files
	return s, nil
}

// parse reads one file. An imported file is a block library: it needs no
// layers of its own.
func (l *loader) parse(path string, src []byte, imported bool) *Spec {
	abs := path
	if l.fsys == nil {
		abs, _ = filepath.Abs(path)
	}
	l.loading[abs] = true
	defer delete(l.loading, abs)
	if !slices.Contains(l.files, path) {
		l.files = append(l.files, path)
	}

	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		line := 0
		msg := err.Error()
		fmt.Sscanf(strings.TrimPrefix(msg, "yaml: "), "line %d:", &line)
		l.errs = append(l.errs, &Error{File: path, Line: line, Col: 1, Code: CodeYAML, Msg: msg})
		return nil
	}
	if len(doc.Content) == 0 {
		l.errf(path, nil, CodeVersion, "empty spec: want at least `refiners: %d` and `layers:`", Version)
		return nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		l.errf(path, root, CodeShape, "a spec is a mapping with refiners, params, blocks and layers")
		return nil
	}
	s := &Spec{File: path, Blocks: map[string]*Block{}}
	version := false
	var imports, unwrap *yaml.Node
	l.fields(path, root, "spec", append([]string{"refiners", "name", "unwrap", "imports", "blocks"}, chainKeys...),
		func(key string, k, v *yaml.Node) {
			switch key {
			case "refiners":
				version = true
				if v.Kind != yaml.ScalarNode || v.Value != fmt.Sprint(Version) {
					l.errf(path, v, CodeVersion, "unsupported spec version %q (this build reads refiners: %d)", v.Value, Version)
				}
			case "name":
				s.Name = l.scalar(path, v, "name")
			case "unwrap":
				s.Unwrap = l.boolean(path, v, "unwrap")
				unwrap = v
			case "imports":
				imports = v
			case "blocks":
				l.blocks(path, v, s.Blocks)
			default:
				l.chainField(path, key, v, &s.chainDef)
			}
		})
	if !version {
		l.errf(path, root, CodeVersion, "missing `refiners: %d` (the spec format version)", Version)
	}
	if s.layers == nil && !imported {
		l.errf(path, root, CodeShape, "missing `layers:` (the model's layers)")
	}
	if s.Unwrap {
		if s.layers != nil && s.layers.Kind == yaml.SequenceNode && len(s.layers.Content) != 1 {
			l.errf(path, unwrap, CodeShape, "unwrap: the model is its single layer itself, but layers has %d items", len(s.layers.Content))
		}
		if s.Kind != core.Sequence || s.Args != "" || s.Provider {
			l.errf(path, unwrap, CodeShape, "unwrap: the root is the layer itself, so kind, args and provider do not apply")
		}
	}
	if imports != nil {
		l.imports(path, imports, s.Blocks)
	}
	return s
}

// chainField reads one of chainKeys into d.
func (l *loader) chainField(file, key string, v *yaml.Node, d *chainDef) {
	switch key {
	case "params":
		d.Params = l.params(file, v)
	case "kind":
		d.Kind = l.kind(file, v)
	case "args":
		d.Args = l.scalar(file, v, "args")
	case "provider":
		d.Provider = l.boolean(file, v, "provider")
	case "description":
		d.Doc = l.scalar(file, v, "description")
	case "layers":
		if v.Kind != yaml.SequenceNode {
			l.errf(file, v, CodeShape, "layers must be a list of layer items")
		}
		d.layers = v
	}
}

// fields walks a mapping, rejecting unknown keys with a suggestion.
func (l *loader) fields(file string, m *yaml.Node, what string, known []string, f func(key string, k, v *yaml.Node)) {
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if seen[k.Value] {
			l.errf(file, k, CodeDuplicate, "%q given twice in %s", k.Value, what)
			continue
		}
		seen[k.Value] = true
		ok := false
		for _, name := range known {
			if k.Value == name {
				ok = true
			}
		}
		if !ok {
			l.errf(file, k, CodeUnknownKey, "unknown key %q in %s%s", k.Value, what, suggest(k.Value, known))
			continue
		}
		f(k.Value, k, v)
	}
}

func (l *loader) scalar(file string, n *yaml.Node, what string) string {
	if n.Kind != yaml.ScalarNode {
		l.errf(file, n, CodeShape, "%s must be a string", what)
		return ""
	}
	return n.Value
}

func (l *loader) boolean(file string, n *yaml.Node, what string) bool {
	var b bool
	if n.Kind != yaml.ScalarNode || n.Decode(&b) != nil {
		l.errf(file, n, CodeArgType, "%s must be true or false, got %q", what, n.Value)
	}
	return b
}

func (l *loader) kind(file string, n *yaml.Node) core.Kind {
	name := l.scalar(file, n, "kind")
	k, ok := kinds[name]
	if !ok && name != "" {
		names := make([]string, 0, len(kinds))
		for n := range kinds {
			names = append(names, n)
		}
		l.errf(file, n, CodeShape, "unknown kind %q%s", name, suggest(name, names))
	}
	return k
}

// params reads `name: default` or `name: {default: ..., doc: ...}` pairs.
func (l *loader) params(file string, n *yaml.Node) []*Param {
	if n.Kind != yaml.MappingNode {
		l.errf(file, n, CodeShape, "params must be a mapping of name: default")
		return nil
	}
	var out []*Param
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if seen[k.Value] {
			l.errf(file, k, CodeDuplicate, "parameter %q declared twice", k.Value)
			continue
		}
		seen[k.Value] = true
		p := &Param{Name: k.Value, Position: fmt.Sprintf("%s:%d:%d", file, k.Line, k.Column), key: k}
		switch {
		case v.Kind == yaml.MappingNode:
			p.Default = nil
			l.fields(file, v, "parameter "+k.Value, []string{"default", "doc"}, func(key string, _, dv *yaml.Node) {
				if key == "default" {
					p.Default = dv
				} else {
					p.Doc = l.scalar(file, dv, "doc")
				}
			})
		case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
			// required
		case v.Kind == yaml.ScalarNode:
			p.Default = v
		default:
			l.errf(file, v, CodeShape, "parameter %q: want a default value or {default, doc}", k.Value)
		}
		out = append(out, p)
	}
	return out
}

func (l *loader) blocks(file string, n *yaml.Node, into map[string]*Block) {
	if n.Kind != yaml.MappingNode {
		l.errf(file, n, CodeShape, "blocks must be a mapping of name: definition")
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if prev, dup := into[k.Value]; dup {
			l.errf(file, k, CodeDuplicate, "block %q already defined at %s:%d:%d", k.Value, prev.File, prev.node.Line, prev.node.Column)
			continue
		}
		if _, builtin := core.LookupLayer(k.Value); builtin {
			l.errf(file, k, CodeDuplicate, "block %q has the name of a core layer", k.Value)
			continue
		}
		if v.Kind != yaml.MappingNode {
			l.errf(file, v, CodeShape, "block %q must be a mapping with params, kind and layers", k.Value)
			continue
		}
		b := &Block{Name: k.Value, File: file, node: k}
		l.fields(file, v, "block "+k.Value, chainKeys, func(key string, _, bv *yaml.Node) {
			l.chainField(file, key, bv, &b.chainDef)
		})
		if b.layers == nil {
			l.errf(file, k, CodeShape, "block %q has no layers", k.Value)
		}
		into[k.Value] = b
	}
}

func (l *loader) imports(file string, n *yaml.Node, into map[string]*Block) {
	if n.Kind != yaml.SequenceNode {
		l.errf(file, n, CodeShape, "imports must be a list of spec files")
		return
	}
	for _, item := range n.Content {
		rel := l.scalar(file, item, "import")
		if rel == "" {
			continue
		}
		path, abs, err := l.resolve(file, rel)
		if err != nil {
			l.errf(file, item, CodeImport, "%v", err)
			continue
		}
		if l.loading[abs] {
			l.errf(file, item, CodeImport, "import cycle: %s imports itself through %s", rel, file)
			continue
		}
		// A file imported along several paths (a diamond) is read and
		// parsed once: its blocks are the same blocks wherever they arrive.
		sub, seen := l.parsed[abs]
		if !seen {
			src, err := l.read(path)
			if err != nil {
				l.errf(file, item, CodeImport, "cannot import %s: %v", rel, err)
				l.parsed[abs] = nil
				continue
			}
			sub = l.parse(path, src, true)
			l.parsed[abs] = sub
		}
		if sub == nil {
			continue
		}
		for name, b := range sub.Blocks {
			if prev, dup := into[name]; dup && prev != b {
				l.errf(file, item, CodeDuplicate, "import %s redefines block %q (defined at %s:%d:%d)", rel, name, prev.File, prev.node.Line, prev.node.Column)
				continue
			}
			into[name] = b
		}
	}
}

// AddLibrary makes the blocks of a block library (a spec file without
// layers, given as YAML) available to this spec under "namespace/Name" —
// how layer types contributed by a plugin become usable in specs.
func (s *Spec) AddLibrary(namespace, file string, src []byte) error {
	// A library comes from a plugin, not from a folder: it imports nothing.
	l := newLoader(noFiles{})
	lib := l.parse(file, src, true)
	if len(l.errs) > 0 {
		return l.errs.sorted()
	}
	for name, b := range lib.Blocks {
		full := namespace + "/" + name
		if _, dup := s.Blocks[full]; dup {
			return fmt.Errorf("%s: block %s is defined twice", file, full)
		}
		s.Blocks[full] = b
	}
	return nil
}
