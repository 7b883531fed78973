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
	path, err := f.parse(args)
	if err != nil {
		return err
	}
	m, err := f.build(path)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, core.Tree(m, *depth))
	fmt.Fprintf(out, "\n%d parameter tensors, %d parameters\n", len(core.StateDict(m)), core.CountParams(m))
	return nil
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
		call := core.Call{Contexts: core.Contexts{}}
		var inputs []*tensor.Tensor
		for _, k := range in.Keys() {
			name, key, ok := strings.Cut(strings.TrimPrefix(k, "context."), ".")
			if !strings.HasPrefix(k, "context.") {
				continue
			}
			if !ok {
				return fmt.Errorf("%s: bad context key %q (want context.<name>.<key>)", *input, k)
			}
			if call.Contexts[name] == nil {
				call.Contexts[name] = map[string]any{}
			}
			call.Contexts[name][key] = load(k)
		}
		for i := 0; ; i++ {
			key := "input." + strconv.Itoa(i)
			if _, ok := in.Info(key); !ok {
				break
			}
			inputs = append(inputs, load(key))
		}
		// A model may read everything from contexts (SAM's mask decoder).
		if len(inputs) == 0 && len(call.Contexts) == 0 {
			return fmt.Errorf("%s: no input.0 tensor and no context.<name>.<key> tensors", *input)
		}
		if err := s.Err(); err != nil {
			return err
		}
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
