package spec

import (
	"fmt"
	"sort"
	"strings"
	"testing/fstest"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// Explanation is the error index's entry for one code (`refinersd explain
// RFN-S012`, docs/errors.md): what causes it, a spec that gets it, and how
// to fix it. The example is real: Run builds it (and plans it against
// Weights, for the plan codes), and a test checks it gets its own code.
type Explanation struct {
	Code  string
	Title string
	Cause string
	// Example is a spec file, example.yaml; Files are other files next to
	// it (imports); Set are overrides, as --set gives them.
	Example string
	Files   map[string]string
	Set     map[string]string
	// Weights, when set, is a weights file's header (key → float32 shape)
	// the built example is planned against.
	Weights map[string][]int64
	Fix     string
}

// ExampleFile is the name the example spec is given.
const ExampleFile = "example.yaml"

// Run builds the example as `refinersd inspect` (or, with Weights, `plan`)
// would, and returns the error it gets.
func (e *Explanation) Run() error {
	fsys := fstest.MapFS{ExampleFile: {Data: []byte(e.Example)}}
	for name, src := range e.Files {
		fsys[name] = &fstest.MapFile{Data: []byte(src)}
	}
	s, err := LoadFS(fsys, ExampleFile)
	if err != nil {
		return err
	}
	m, err := s.Build(e.Set)
	if err != nil || e.Weights == nil {
		return err
	}
	var header []weights.Info
	for k, shape := range e.Weights {
		header = append(header, weights.Info{Key: k, DType: tensor.Float32, Shape: shape})
	}
	sort.Slice(header, func(i, j int) bool { return header[i].Key < header[j].Key })
	if errs := Plan(m, header, "").Errors("weights.safetensors"); len(errs) > 0 {
		return errs
	}
	return nil
}

// Explain returns the entry of a code (case-insensitive; "S012" and "12"
// are RFN-S012).
func Explain(code string) (*Explanation, bool) {
	c := strings.ToUpper(strings.TrimSpace(code))
	c = strings.TrimPrefix(c, "RFN-")
	c = strings.TrimPrefix(c, "S")
	for len(c) < 3 {
		c = "0" + c
	}
	for _, e := range explanations {
		if e.Code == "RFN-S"+c {
			return e, true
		}
	}
	return nil, false
}

// Explanations lists every entry, by code.
func Explanations() []*Explanation { return explanations }

// Text is the entry as `refinersd explain` prints it: cause, example, the
// error the example gets, fix.
func (e *Explanation) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s\n\n%s\n\nExample (%s", e.Code, e.Title, wrap(e.Cause), ExampleFile)
	if len(e.Set) > 0 {
		keys := make([]string, 0, len(e.Set))
		for k := range e.Set {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, ", --set %s=%s", k, e.Set[k])
		}
	}
	if e.Weights != nil {
		b.WriteString(", planned against a weights file")
	}
	b.WriteString("):\n\n")
	for _, line := range strings.Split(strings.TrimRight(e.Example, "\n"), "\n") {
		b.WriteString("    " + line + "\n")
	}
	if err := e.Run(); err != nil {
		b.WriteString("\ngets:\n\n")
		for _, line := range strings.Split(err.Error(), "\n") {
			b.WriteString("    " + line + "\n")
		}
	}
	fmt.Fprintf(&b, "\nFix: %s\n", wrap(e.Fix))
	return b.String()
}

// wrap breaks text into lines of at most 78 columns.
func wrap(text string) string {
	var b strings.Builder
	col := 0
	for i, w := range strings.Fields(text) {
		if i > 0 {
			if col+1+len([]rune(w)) > 78 {
				b.WriteString("\n")
				col = 0
			} else {
				b.WriteString(" ")
				col++
			}
		}
		b.WriteString(w)
		col += len([]rune(w))
	}
	return b.String()
}

// The index. Each example is the smallest spec that gets its code.
var explanations = []*Explanation{
	{Code: CodeYAML, Title: "the file is not valid YAML",
		Cause:   "The YAML parser could not read the file: an unclosed bracket or quote, a tab used for indentation, or a line indented inconsistently with its siblings. The message is the parser's, with the line it stopped at.",
		Example: "refiners: 1\nlayers:\n  - Linear: {in_features: 4, out_features: 8\n",
		Fix:     "Close the bracket or quote, indent with spaces only, and keep items of one list at one indentation. `refinersd fmt` prints a valid file back in canonical form once it parses."},
	{Code: CodeVersion, Title: "missing or unsupported `refiners:` version",
		Cause:   "Every spec starts with `refiners: 1`, the version of the spec format it is written in. It is missing, the file is empty, or it names a version this build does not read.",
		Example: "layers:\n  - Linear: {in_features: 4, out_features: 8}\n",
		Fix:     "Add `refiners: 1` as the first line."},
	{Code: CodeUnknownKey, Title: "unknown key in the document, a block or a parameter",
		Cause:   "A top-level key (refiners, name, params, imports, blocks, kind, args, provider, description, layers), a key of a block, or of a parameter's {default, doc} mapping is not one the format knows: usually a typo.",
		Example: "refiners: 1\ndescripton: a linear probe\nlayers:\n  - Linear: {in_features: 4, out_features: 8}\n",
		Fix:     "Use the key the message suggests; docs/specs.md lists every key."},
	{Code: CodeShape, Title: "a node has the wrong YAML shape",
		Cause:   "A value is a mapping where a list is expected, a list where a mapping is expected, or a list item is not `Type`, `Type: {args}` or `Type: [children]`; or a required part (`layers:`) is missing.",
		Example: "refiners: 1\nlayers:\n  Linear: {in_features: 4, out_features: 8}\n",
		Fix:     "layers is a list: each item starts with `- `. params and blocks are mappings of name: value."},
	{Code: CodeUnknownLayer, Title: "unknown layer type",
		Cause:   "A layer item names a type that is neither a registered layer (refinersd layers lists them), a block of the spec or of its imports, nor a plugin type `plugin/Type`. Names are case-sensitive and spelt as in Refiners.",
		Example: "refiners: 1\nlayers:\n  - Lienar: {in_features: 4, out_features: 8}\n",
		Fix:     "Use the name the message suggests, define a block of that name, or import the file that defines it."},
	{Code: CodePluginMissing, Title: "a plugin layer type whose plugin is not installed",
		Cause:   "A type written `plugin/Type` comes from the installed plugin `plugin`, which is not installed in the plugins folder (--plugins-dir, $REFINERS_PLUGINS).",
		Example: "refiners: 1\nlayers:\n  - example/Scaled: {factor: 3}\n",
		Fix:     "Install the plugin (`refinersd plugins install BINARY`, then `refinersd plugins list`), or point --plugins-dir at the folder it is installed in."},
	{Code: CodeUnknownArg, Title: "unknown argument for a layer",
		Cause:   "A layer or block was given an argument it does not take: usually a typo, or an argument of a similarly named layer. Arguments have Refiners' names (`refinersd layers TYPE`).",
		Example: "refiners: 1\nlayers:\n  - Conv2d: {in_channels: 3, out_channels: 8, kernal_size: 3}\n",
		Fix:     "Use the argument the message suggests; `refinersd layers TYPE` lists a layer's arguments, a block's are its params."},
	{Code: CodeArgType, Title: "argument of the wrong type",
		Cause:   "An argument's value (after evaluating ${...}) is not of the type the layer declares: a string or a fraction for an integer, a number for a boolean, a single value for a list.",
		Example: "refiners: 1\nlayers:\n  - Linear: {in_features: 4, out_features: 2.5}\n",
		Fix:     "Give a value of the declared type (`refinersd layers TYPE`). For sizes computed from parameters, use // (integer division), not /, which gives a float."},
	{Code: CodeMissingArg, Title: "required argument missing",
		Cause:   "A layer's required argument, a block's required parameter (declared with no default: `name: null`), or a spec's required parameter was not given.",
		Example: "refiners: 1\nlayers:\n  - Linear: {in_features: 4}\n",
		Fix:     "Give the argument. A spec's required parameter is given with --set name=value."},
	{Code: CodeBadLayer, Title: "the layer rejected its arguments",
		Cause:   "Each argument is well typed, but together they do not make a layer: channels not divisible by groups, an embedding dim not divisible by the heads, an odd size where an even one is needed. When the layer is in a block used several times, each use that fails is named under the error.",
		Example: "refiners: 1\nblocks:\n  Block:\n    params: {channels: null, groups: 5}\n    layers:\n      - GroupNorm: {channels: \"${channels}\", num_groups: \"${groups}\"}\nlayers:\n  - Block: {channels: 16}\n  - Block: {channels: 20}\n  - Block: {channels: 16}\n  - Block: {channels: 16, groups: 4}\n",
		Fix:     "Change the arguments as the message says; for a block, at the use sites listed (or change the block's default)."},
	{Code: CodeChildren, Title: "children given to a layer that takes none",
		Cause:   "Only chains (Chain, Residual, Sum, Parallel, Concatenate, ...) have children; a leaf layer was given a list, or a block (which has its own layers) was given children.",
		Example: "refiners: 1\nlayers:\n  - Linear: [ReLU]\n",
		Fix:     "Wrap the layers in a chain: `- Chain: [Linear: {...}, ReLU]`, or list them one after another."},
	{Code: CodeUnknownParam, Title: "an expression names an unknown parameter",
		Cause:   "A ${...} expression uses a name that is not a parameter in scope. In a block, the scope is the block's params and the spec's top-level params (not the caller's); in a repeated item, also `index`.",
		Example: "refiners: 1\nparams: {dim: 8}\nlayers:\n  - Linear: {in_features: \"${dimm}\", out_features: 4}\n",
		Fix:     "Use the name the message suggests, or declare the parameter (params: {name: default})."},
	{Code: CodeExpr, Title: "an expression does not parse or evaluate",
		Cause:   "A ${...} expression has a syntax error, divides by zero, overflows int64, or mixes types (a string in arithmetic). Expressions have numbers, parameters, + - * / // %, unary minus, parentheses and comparisons.",
		Example: "refiners: 1\nparams: {dim: 8, heads: 0}\nlayers:\n  - Linear: {in_features: \"${dim}\", out_features: \"${dim // heads}\"}\n",
		Fix:     "Correct the expression; guard a division with a parameter that cannot be 0."},
	{Code: CodeDuplicate, Title: "something defined or given twice",
		Cause:   "A block, a parameter, a key, or an argument appears twice; or a block has the name of a core layer; or two imports define the same block.",
		Example: "refiners: 1\nparams: {dim: 8, dim: 16}\nlayers:\n  - Linear: {in_features: \"${dim}\", out_features: 4}\n",
		Fix:     "Keep one definition; rename a block that shadows a layer type."},
	{Code: CodeImport, Title: "an import cannot be read, or imports form a cycle",
		Cause:   "An imported file does not exist, is not a regular file, is over 4 MiB, leaves the spec's folder (absolute paths, .., links out), or imports the file that imports it.",
		Example: "refiners: 1\nimports: [common.yaml]\nlayers:\n  - Block\n",
		Fix:     "Import files by paths relative to the importing file, inside the spec's folder (or one allowed with --allow-imports DIR); break cycles by moving shared blocks to a third file."},
	{Code: CodeRepeat, Title: "bad repeat",
		Cause:   "`repeat:` must evaluate to a non-negative integer (or a boolean: 1 or 0), at most 10000; and a spec builds at most 100000 layers.",
		Example: "refiners: 1\nparams: {n: 2}\nlayers:\n  - Linear: {in_features: 4, out_features: 4, repeat: \"${n - 3}\"}\n",
		Fix:     "Make the count a non-negative integer; `repeat: ${flag}` makes an optional layer."},
	{Code: CodeOverride, Title: "an override names an unknown parameter or has a bad value",
		Cause:   "--set name=value (or a model's `set:` in the daemon's store) names a parameter the spec does not declare at its top level, or its value is not a single YAML value.",
		Example: "refiners: 1\nparams: {dim: 8}\nlayers:\n  - Linear: {in_features: \"${dim}\", out_features: 4}\n",
		Set:     map[string]string{"dimm": "16"},
		Fix:     "Use a parameter the spec declares at its top level (`refinersd inspect SPEC` with no --set shows the defaults); blocks' params are set by the spec, not the command line."},
	{Code: CodeRecursion, Title: "a block contains itself with the same parameters",
		Cause:   "A block uses itself, directly or through others, with the same parameter values: building it would never end.",
		Example: "refiners: 1\nblocks:\n  Tower:\n    params: {n: 2}\n    layers:\n      - ReLU\n      - Tower: {n: \"${n}\"}\nlayers:\n  - Tower\n",
		Fix:     "Change a parameter at each level and stop on it: `- Tower: {n: \"${n - 1}\", repeat: \"${n > 1}\"}`."},
	{Code: CodeWeightMissing, Title: "plan: a parameter has no tensor in the weights",
		Cause:   "The model the spec declares has a parameter whose key (the dotted path, e.g. Chain.Linear_1.weight) is not in the weights file: the spec and the file describe different models, the keys have a prefix, or the file is in another layout.",
		Example: "refiners: 1\nlayers:\n  - Linear: {in_features: 4, out_features: 8}\n",
		Weights: map[string][]int64{"Linear.weight": {8, 4}},
		Fix:     "Check the spec's structure against the file (`refinersd plan` prints both side by side); pass --prefix if the file's keys have one; convert foreign files with `refinersd convert`."},
	{Code: CodeWeightShape, Title: "plan: a tensor has the wrong shape or dtype",
		Cause:   "The weights file has the key, but its shape differs from what the spec's arguments give (often a size parameter), or it is not a floating-point tensor.",
		Example: "refiners: 1\nlayers:\n  - Linear: {in_features: 4, out_features: 8}\n",
		Weights: map[string][]int64{"Linear.weight": {8, 6}, "Linear.bias": {8}},
		Fix:     "Set the parameter that gives the size (--set), or correct the layer's arguments."},
	{Code: CodeWeightExtra, Title: "plan: the weights hold a tensor the model does not use",
		Cause:   "A key of the weights file (under --prefix) matches no parameter of the model: a layer the spec lacks, a bias the spec turns off, or a file of a larger model.",
		Example: "refiners: 1\nlayers:\n  - Linear: {in_features: 4, out_features: 8, bias: false}\n",
		Weights: map[string][]int64{"Linear.weight": {8, 4}, "Linear.bias": {8}},
		Fix:     "Add the missing layer or turn its bias on; if the file holds several models, select one with --prefix."},
}
