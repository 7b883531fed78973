package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/hosts"
	"github.com/refiners-go/refiners/sdk"
	"github.com/refiners-go/refiners/spec"
)

// setFlags collects repeated --set name=value flags.
type setFlags map[string]string

func (s setFlags) String() string { return fmt.Sprint(map[string]string(s)) }

func (s setFlags) Set(v string) error {
	name, val, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return fmt.Errorf("--set wants name=value, got %q", v)
	}
	s[name] = val
	return nil
}

// dirFlags collects repeated folder flags.
type dirFlags []string

func (d *dirFlags) String() string { return strings.Join(*d, ",") }

func (d *dirFlags) Set(v string) error {
	*d = append(*d, v)
	return nil
}

// specFlags are the flags every spec verb shares.
type specFlags struct {
	fs         *flag.FlagSet
	sets       setFlags
	importDirs dirFlags
	weights    *string
	prefix     *string
	pluginsDir *string
}

func newSpecFlags(verb string) *specFlags {
	fs := flag.NewFlagSet(verb, flag.ContinueOnError)
	f := &specFlags{fs: fs, sets: setFlags{}}
	fs.Var(f.sets, "set", "override a spec parameter: name=value (repeatable)")
	fs.Var(&f.importDirs, "allow-imports", "a folder the spec's imports may reach besides its own (repeatable)")
	f.weights = fs.String("weights", "", "safetensors weights file")
	f.prefix = fs.String("prefix", "", "prefix of the model's keys in the weights file")
	f.pluginsDir = fs.String("plugins-dir", defaultPluginsDir(), "plugins directory (for plugin/Type layers and --adapter)")
	return f
}

// parseInterleaved parses flags that may come before, between or after
// positional arguments (the flag package alone stops at the first
// positional one), and returns the positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) > 0 {
			positional, args = append(positional, args[0]), args[1:]
		}
	}
	return positional, nil
}

// parse takes the spec path (the one positional argument) and the flags.
func (f *specFlags) parse(args []string) (string, error) {
	pos, err := parseInterleaved(f.fs, args)
	if err != nil {
		return "", err
	}
	switch len(pos) {
	case 0:
		return "", fmt.Errorf("%s: which spec? (refinersd %s SPEC ...)", f.fs.Name(), f.fs.Name())
	case 1:
		return pos[0], nil
	}
	return "", fmt.Errorf("%s: one spec at a time, got %q", f.fs.Name(), pos)
}

// build builds the spec; layer types of installed plugins (plugin/Type)
// are fetched from those plugins only when the spec uses them.
func (f *specFlags) build(path string) (*core.Chain, error) {
	s, m, err := f.load(path)
	if err != nil || m != nil {
		return m, err
	}
	return s.Build(f.sets)
}

// load reads the spec and builds it once. When the build needs layer types
// of installed plugins, it adds their libraries to the spec and returns
// no model (the caller builds again); an error is a load or build error.
func (f *specFlags) load(path string) (*spec.Spec, *core.Chain, error) {
	s, err := spec.LoadWith(path, spec.Options{ImportDirs: f.importDirs})
	if err != nil {
		return nil, nil, err
	}
	m, err := s.Build(f.sets)
	missing := spec.MissingPlugins(err)
	if len(missing) == 0 {
		return s, m, err
	}
	h, herr := hosts.New(*f.pluginsDir, hosts.Options{})
	if herr != nil {
		return nil, nil, herr
	}
	defer h.Close()
	for _, name := range missing {
		d, derr := h.Describe(context.Background(), name)
		if sdk.CodeOf(derr) == sdk.NotFound {
			return nil, nil, err // not installed: the spec error says so
		}
		if derr != nil {
			return nil, nil, fmt.Errorf("%s uses layer types of plugin %s, which could not be asked for them: %w", path, name, derr)
		}
		for _, lt := range d.LayerTypes {
			if aerr := s.AddLibrary(name, "plugin "+name+" layer type "+lt.Name, []byte(lt.Spec)); aerr != nil {
				return nil, nil, aerr
			}
		}
	}
	return s, nil, nil
}

// lint reports what `spec.Lint` finds; findings make it fail, as go vet.
func lint(args []string, out io.Writer) error {
	f := newSpecFlags("lint")
	path, err := f.parse(args)
	if err != nil {
		return err
	}
	s, _, err := f.load(path)
	if err != nil {
		return err
	}
	findings, err := s.Lint(f.sets)
	if err != nil {
		return err
	}
	for _, fd := range findings {
		fmt.Fprintln(out, fd)
	}
	if len(findings) > 0 {
		return fmt.Errorf("lint: %d findings in %s", len(findings), path)
	}
	return nil
}

func inspect(args []string, out io.Writer) error {
	f := newSpecFlags("inspect")
	depth := f.fs.Int("depth", -1, "print only this many levels (-1: all)")
	var shapes shapeFlags
	f.fs.Var(&shapes, "input-shape", "run the model on zeros of this shape (e.g. 1,3,32,32; repeatable: input.0, input.1, ...) and print each layer's output shape and parameter count")
	inputDType := f.fs.String("input-dtype", "float32", "dtype of the --input-shape inputs: float32, or int64 for token ids")
	input := f.fs.String("input", "", "instead of --input-shape: run on this file's input.N and context.<name>.<key> tensors (as run reads them)")
	path, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(shapes) > 0 || *input != "" {
		if len(shapes) > 0 && *input != "" {
			return errors.New("inspect: --input-shape or --input, not both")
		}
		dt, err := tensor.ParseDType(*inputDType)
		if err != nil {
			return err
		}
		return summary(f, path, shapes, *input, dt, *depth, out)
	}
	m, err := f.build(path)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, core.Tree(m, *depth))
	fmt.Fprintf(out, "\n%d parameter tensors, %d parameters\n", len(core.StateDict(m)), core.CountParams(m))
	return nil
}

// shapeFlags collects repeated --input-shape flags.
type shapeFlags [][]int64

func (s *shapeFlags) String() string { return fmt.Sprint(*s) }

func (s *shapeFlags) Set(v string) error {
	var shape []int64
	for _, part := range strings.Split(v, ",") {
		n, err := strconv.ParseInt(strings.TrimSpace(part), 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("--input-shape wants sizes separated by commas, e.g. 1,3,32,32; got %q", v)
		}
		shape = append(shape, n)
	}
	*s = append(*s, shape)
	return nil
}

// summary runs the model once on zeros (zero weights too: only shapes
// matter) and prints, like torchinfo, each layer's output shape and
// parameter count; a layer that fails is named with where the spec
// declares it, after the rows of the layers that ran.
func summary(f *specFlags, path string, shapes [][]int64, input string, dt tensor.DType, depth int, out io.Writer) error {
	s, _, err := f.load(path)
	if err != nil {
		return err
	}
	m, sources, err := s.BuildWithSources(f.sets)
	if err != nil {
		return err
	}
	outputs := map[string]string{}
	ferr := tensor.Run(context.Background(), func(sc *tensor.Scope) error {
		for _, e := range core.StateDict(m) {
			*e.Value = sc.Escape(sc.Zeros(e.DType, e.Shape...))
		}
		defer core.ReleaseParams(m)
		inputs := make([]*tensor.Tensor, len(shapes))
		for i, shape := range shapes {
			inputs[i] = sc.Zeros(dt, shape...)
		}
		var contexts core.Contexts
		if input != "" {
			in, err := weights.Open(input)
			if err != nil {
				return err
			}
			defer in.Close()
			if inputs, contexts, err = readInputs(sc, in, input, tensor.Float32, tensor.CPU); err != nil {
				return err
			}
			shapes = shapes[:0]
			for _, t := range inputs {
				shapes = append(shapes, t.Shape())
			}
			dt = tensor.Float32
			if len(inputs) > 0 {
				dt = inputs[0].DType()
			}
		}
		if err := sc.Err(); err != nil {
			return err
		}
		call := core.Call{Contexts: contexts, Trace: func(p string, _ core.Module, o core.Tensors) { outputs[p] = shapesOf(o) }}
		res, err := call.Forward(sc, m, inputs...)
		if err == nil {
			outputs[""] = shapesOf(res)
		}
		return err
	})
	printSummary(out, m, outputs, depth)
	in := make([]string, len(shapes))
	for i, shape := range shapes {
		in[i] = core.FormatShape(shape)
	}
	if ferr != nil {
		var fe *core.ForwardError
		if errors.As(ferr, &fe) {
			where := strings.Join(fe.Path, ".")
			if l, err := m.Layer(where); err == nil {
				at := ""
				if src, ok := sources[l]; ok {
					at = ", declared at " + src
				}
				return fmt.Errorf("inspect: on input %s, the model fails at layer %s (%s%s): %w", strings.Join(in, ", "), where, core.Describe(l), at, fe.Err)
			}
		}
		return fmt.Errorf("inspect: on input %s: %w", strings.Join(in, ", "), ferr)
	}
	fmt.Fprintf(out, "\ninput %s %s -> output %s\n", strings.Join(in, ", "), dt, outputs[""])
	fmt.Fprintf(out, "%d parameter tensors, %s parameters (%s in float32)\n", len(core.StateDict(m)), thousands(core.CountParams(m)), byteSize(4*core.CountParams(m)))
	return nil
}

func shapesOf(ts core.Tensors) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = core.FormatShape(t.Shape())
	}
	return strings.Join(parts, ", ")
}

// printSummary prints one row per layer, in tree order, indented by depth:
// its output shapes ("--": it did not run) and its parameters (a chain's
// include its children's).
func printSummary(out io.Writer, m *core.Chain, outputs map[string]string, depth int) {
	type row struct{ name, shape, params string }
	add := func(rows []row, name string, level int, key string, x core.Module) []row {
		shape, ran := outputs[key]
		if !ran {
			shape = "--"
		}
		return append(rows, row{strings.Repeat("  ", level) + name, shape, thousands(core.CountParams(x))})
	}
	rows := add([]row{{"LAYER", "OUTPUT SHAPE", "PARAMS"}}, core.TypeName(m), 0, "", m)
	m.Walk(func(x core.Module, _ *core.Chain, p string) bool {
		level := strings.Count(p, ".") + 1
		if depth >= 0 && level > depth {
			return false
		}
		key := p[strings.LastIndex(p, ".")+1:]
		name := key
		if t := core.TypeName(x); !strings.HasPrefix(key, t) {
			name += " (" + t + ")"
		}
		rows = add(rows, name, level, p, x)
		return true
	})
	w := [3]int{}
	for _, r := range rows {
		w[0], w[1], w[2] = max(w[0], utf8.RuneCountInString(r.name)), max(w[1], len(r.shape)), max(w[2], len(r.params))
	}
	for _, r := range rows {
		fmt.Fprintf(out, "%-*s  %-*s  %*s\n", w[0], r.name, w[1], r.shape, w[2], r.params)
	}
}

// thousands writes n with commas: 1,234,567.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func plan(args []string, out io.Writer) error {
	f := newSpecFlags("plan")
	path, err := f.parse(args)
	if err != nil {
		return err
	}
	if *f.weights == "" {
		return errors.New("plan: --weights is required")
	}
	m, err := f.build(path)
	if err != nil {
		return err
	}
	header, err := weights.ReadFileHeader(*f.weights)
	if err != nil {
		return err
	}
	r := spec.PlanHeader(m, header, *f.prefix)
	r.Print(out)
	if errs := r.Errors(*f.weights); len(errs) > 0 {
		return errs
	}
	return nil
}

// checkOutput refuses, before any work, an output file that is one of the
// command's own input files, or whose folder does not exist.
func checkOutput(output string, inputs map[string]string) error {
	dir := filepath.Dir(output)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("--output %s: folder %s does not exist", output, dir)
	}
	out, err := os.Stat(output)
	if err != nil {
		return nil // a new file
	}
	names := make([]string, 0, len(inputs))
	for name := range inputs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if in, err := os.Stat(inputs[name]); err == nil && os.SameFile(in, out) {
			return fmt.Errorf("--output %s is %s (%s): it would be overwritten; write the output elsewhere", output, name, inputs[name])
		}
	}
	return nil
}

func runSpec(args []string, out io.Writer) error {
	f := newSpecFlags("run")
	input := f.fs.String("input", "", "safetensors file with input.0, input.1, ... and context.<name>.<key> tensors")
	output := f.fs.String("output", "", "safetensors file to write output.0, output.1, ... to")
	device := f.fs.String("device", "cpu", "cpu, cuda or cuda:N")
	dtype := f.fs.String("dtype", "float32", "dtype of the weights and of floating-point inputs: float32, bfloat16, float16")
	var adapters adapterFlags
	f.fs.Var(&adapters, "adapter", "PLUGIN:FILE[:PARAMS_JSON] — plan with an installed plugin and apply to the model for this run (repeatable)")
	fused := f.fs.Bool("fuse", false, "merge adapters into the weights instead of running them as branches")
	path, err := f.parse(args)
	if err != nil {
		return err
	}
	if *f.weights == "" || *input == "" || *output == "" {
		return errors.New("run: --weights, --input and --output are required")
	}
	if err := checkOutput(*output, map[string]string{"--weights": *f.weights, "--input": *input, "the spec": path}); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	dev, err := tensor.ParseDevice(*device)
	if err != nil {
		return err
	}
	dt, err := tensor.ParseDType(*dtype)
	if err != nil {
		return err
	}
	if err := tensor.Supports(dt, dev); err != nil {
		return fmt.Errorf("run: --dtype %s --device %s: %w", dt, dev, err)
	}
	m, err := f.build(path)
	if err != nil {
		return err
	}
	wf, err := weights.Open(*f.weights)
	if err != nil {
		return err
	}
	defer wf.Close()
	// Inputs are copied, not viewed: a copy sits at libtorch's own 64-byte
	// alignment, as the daemon's decoded inputs do, and some kernels take
	// alignment-dependent paths, so this keeps `run` and `serve` equal bit
	// for bit on the same inputs. (Weights are viewed on both.)
	in, err := weights.OpenWith(*input, weights.OpenOptions{Copy: true})
	if err != nil {
		return err
	}
	defer in.Close()
	return tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if dt != tensor.Float32 {
			if err := core.ToDType(s, m, dt); err != nil {
				return err
			}
		}
		if _, err := core.LoadState(s, m, wf, core.LoadOptions{Strict: true, Prefix: *f.prefix, Device: dev}); err != nil {
			return err
		}
		defer core.ReleaseParams(m)
		undo, err := applyAdapters(s, m, adapters, *f.pluginsDir, *fused, out)
		if err != nil {
			return err
		}
		defer undo()
		inputs, contexts, err := readInputs(s, in, *input, dt, dev)
		if err != nil {
			return err
		}
		call := core.Call{Contexts: contexts}
		outs, err := call.Forward(s, m, inputs...)
		if err != nil {
			return err
		}
		named := map[string]*tensor.Tensor{}
		for i, t := range outs {
			if t.Device() != tensor.CPU {
				t = s.To(t, tensor.CPU)
			}
			named["output."+strconv.Itoa(i)] = t
		}
		if err := weights.Save(s, *output, named, map[string]string{"spec": path}); err != nil {
			return err
		}
		for i, t := range outs {
			fmt.Fprintf(out, "output.%d %v %s\n", i, t.Shape(), t.DType())
		}
		return nil
	})
}

// initVerb writes weights for a spec, initialised as PyTorch's layers
// initialise theirs (core.InitLikeTorch): a model runs before any
// checkpoint exists, and with the same seed its weights are PyTorch's.
func initVerb(args []string, out io.Writer) error {
	f := newSpecFlags("init")
	output := f.fs.String("output", "", "safetensors file to write the weights to")
	seed := f.fs.Uint64("seed", 0, "seed of the generator (torch.manual_seed)")
	dtype := f.fs.String("dtype", "float32", "dtype of the weights: float32, bfloat16, float16")
	path, err := f.parse(args)
	if err != nil {
		return err
	}
	if *output == "" {
		return errors.New("init: --output is required")
	}
	if err := checkOutput(*output, map[string]string{"the spec": path}); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	dt, err := tensor.ParseDType(*dtype)
	if err != nil {
		return err
	}
	m, err := f.build(path)
	if err != nil {
		return err
	}
	return tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if err := core.InitLikeTorch(s, m, *seed); err != nil {
			return err
		}
		defer core.ReleaseParams(m)
		if dt != tensor.Float32 {
			if err := core.ToDType(s, m, dt); err != nil {
				return err
			}
		}
		meta := map[string]string{"spec": path, "init": "pytorch defaults (refinersd init)", "seed": strconv.FormatUint(*seed, 10)}
		if err := core.SaveState(s, m, *output, meta); err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote %s: %d tensors, %d parameters (%s, seed %d)\n", *output, len(core.StateDict(m)), core.CountParams(m), dt, *seed)
		return nil
	})
}

// readInputs reads a run's inputs from a safetensors file: input.0,
// input.1, ... and context.<name>.<key> tensors, floating ones cast to dt,
// all moved to dev.
func readInputs(s *tensor.Scope, in *weights.File, name string, dt tensor.DType, dev tensor.Device) ([]*tensor.Tensor, core.Contexts, error) {
	load := func(key string) *tensor.Tensor {
		t := in.Load(s, key)
		if t.Valid() && t.DType().IsFloat() && t.DType() != dt {
			t = s.ToDType(t, dt)
		}
		if t.Valid() && dev != tensor.CPU {
			t = s.To(t, dev)
		}
		return t
	}
	contexts := core.Contexts{}
	var inputs []*tensor.Tensor
	for _, k := range in.Keys() {
		ctx, key, ok := strings.Cut(strings.TrimPrefix(k, "context."), ".")
		if !strings.HasPrefix(k, "context.") {
			continue
		}
		if !ok {
			return nil, nil, fmt.Errorf("%s: bad context key %q (want context.<name>.<key>)", name, k)
		}
		if contexts[ctx] == nil {
			contexts[ctx] = map[string]any{}
		}
		contexts[ctx][key] = load(k)
	}
	for i := 0; ; i++ {
		key := "input." + strconv.Itoa(i)
		if _, ok := in.Info(key); !ok {
			break
		}
		inputs = append(inputs, load(key))
	}
	// A model may read everything from contexts (SAM's mask decoder).
	if len(inputs) == 0 && len(contexts) == 0 {
		return nil, nil, fmt.Errorf("%s: no input.0 tensor and no context.<name>.<key> tensors", name)
	}
	return inputs, contexts, s.Err()
}
