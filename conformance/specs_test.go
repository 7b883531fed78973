package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/spec"
)

// TestSpecs checks each spec in specs/ against golden vectors from the
// reference model (testdata/specs: tiny sizes, committed). Set
// CONFORMANCE_TIER=full to run the real-size vectors in testdata/full,
// which generators write on demand.
func TestSpecs(t *testing.T) {
	dir := "testdata/specs"
	if os.Getenv("CONFORMANCE_TIER") == "full" {
		dir = "testdata/full"
	}
	if d := os.Getenv("CONFORMANCE_SPECS_DIR"); d != "" {
		dir = d // vectors written elsewhere (scripts/gpu-check.sh writes CUDA ones)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if len(files) == 0 {
		t.Skipf("no spec vectors in %s yet", dir)
	}
	runTable(t, "spec case", files, runSpecCase)
}

// SpecCase is the metadata of a spec golden file.
type SpecCase struct {
	Spec      string            // path from the repository root
	Overrides map[string]string // --set values
	DType     tensor.DType
	Tree      string // Refiners' tree print, when comparable
}

// readSpecCase parses a spec golden file's metadata.
func readSpecCase(f *weights.File) (SpecCase, error) {
	meta := f.Metadata()
	c := SpecCase{Spec: meta["spec"], Tree: meta["tree"], Overrides: map[string]string{}}
	if c.Spec == "" {
		return c, fmt.Errorf("%s: no spec in metadata", f.Path())
	}
	if o := meta["overrides"]; o != "" {
		if err := json.Unmarshal([]byte(o), &c.Overrides); err != nil {
			return c, fmt.Errorf("%s: overrides: %w", f.Path(), err)
		}
	}
	var err error
	if c.DType, err = tensor.ParseDType(meta["dtype"]); err != nil {
		return c, fmt.Errorf("%s: %w", f.Path(), err)
	}
	return c, nil
}

// runSpecCase builds the spec, loads the reference weights strictly, seeds
// contexts (keys context.<name>.<key>), runs inputs input.0.. and compares
// every output.<i>.
func runSpecCase(path string) ([]Diff, error) { return runSpecCaseWith(path, nil) }

// runSpecCaseWith is runSpecCase with the parameters first changed by
// plant (nil: none), for the planted-bug checks.
func runSpecCaseWith(path string, plant planter) ([]Diff, error) {
	f, err := weights.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := readSpecCase(f)
	if err != nil {
		return nil, err
	}
	sp, err := spec.Load(filepath.Join("..", c.Spec))
	if err != nil {
		return nil, err
	}
	m, err := sp.Build(c.Overrides)
	if err != nil {
		return nil, err
	}
	params, err := plantedParams(f, m, plant)
	if err != nil {
		return nil, err
	}
	defer params.Close()
	dev, err := caseDevice()
	if err != nil {
		return nil, err
	}
	var diffs []Diff
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		load := func(key string) *tensor.Tensor {
			t := f.Load(s, key)
			if dev != tensor.CPU && t.Valid() {
				t = s.To(t, dev)
			}
			return t
		}
		if c.DType != tensor.Float32 {
			if err := core.ToDType(s, m, c.DType); err != nil {
				return err
			}
		}
		if c.Tree != "" {
			if got := core.Tree(m, -1); got != c.Tree {
				return fmt.Errorf("tree print differs from Refiners'\n got:\n%s\nwant:\n%s", got, c.Tree)
			}
		}
		if _, err := core.LoadState(s, m, params, core.LoadOptions{Strict: true, Prefix: "param.", Device: dev}); err != nil {
			return err
		}
		defer core.ReleaseParams(m)
		call := core.Call{Contexts: core.Contexts{}}
		var inputs []*tensor.Tensor
		var outputs []string
		for _, k := range f.Keys() {
			switch {
			case strings.HasPrefix(k, "context."):
				name, key, ok := strings.Cut(strings.TrimPrefix(k, "context."), ".")
				if !ok {
					return fmt.Errorf("bad context key %q (want context.<name>.<key>)", k)
				}
				if call.Contexts[name] == nil {
					call.Contexts[name] = map[string]any{}
				}
				call.Contexts[name][key] = load(k)
			case strings.HasPrefix(k, "output."):
				outputs = append(outputs, k)
			}
		}
		for i := 0; ; i++ {
			if _, ok := f.Info(fmt.Sprintf("input.%d", i)); !ok {
				break
			}
			inputs = append(inputs, load(fmt.Sprintf("input.%d", i)))
		}
		outs, err := call.Forward(s, m, inputs...)
		if err != nil {
			return err
		}
		if len(outs) != len(outputs) {
			return fmt.Errorf("%d outputs, reference has %d", len(outs), len(outputs))
		}
		return checkOutputs(s, f, outs, &diffs)
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return diffs, nil
}

// caseDevice is where the spec cases run: CONFORMANCE_DEVICE (cpu, cuda,
// cuda:N), the CPU by default. Outputs are compared on the CPU.
func caseDevice() (tensor.Device, error) {
	d := os.Getenv("CONFORMANCE_DEVICE")
	if d == "" {
		return tensor.CPU, nil
	}
	dev, err := tensor.ParseDevice(d)
	if err != nil {
		return dev, fmt.Errorf("CONFORMANCE_DEVICE: %w", err)
	}
	return dev, nil
}

// TestSpecsViaCLI runs every tiny spec case through the refinersd binary
// (`refinersd run`), the way a user or an outside checker would, and
// compares the output file with the reference.
func TestSpecsViaCLI(t *testing.T) {
	files, _ := filepath.Glob("testdata/specs/*.safetensors")
	if len(files) == 0 {
		t.Skip("no spec vectors yet")
	}
	bin := filepath.Join(t.TempDir(), "refinersd")
	build := exec.Command("go", "build", "-o", bin, "../cmd/refinersd")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building refinersd: %v\n%s", err, out)
	}
	for _, path := range files {
		name := strings.TrimSuffix(filepath.Base(path), ".safetensors")
		t.Run(name, func(t *testing.T) {
			f, err := weights.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			c, err := readSpecCase(f)
			if err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "out.safetensors")
			args := []string{"run", filepath.Join("..", c.Spec), "--weights", path, "--prefix", "param.", "--input", path, "--output", out, "--dtype", c.DType.String()}
			for k, v := range c.Overrides {
				args = append(args, "--set", k+"="+v)
			}
			if msg, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
				t.Fatalf("refinersd %s: %v\n%s", strings.Join(args, " "), err, msg)
			}
			got, err := weights.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer got.Close()
			err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
				for _, k := range f.Keys() {
					if !strings.HasPrefix(k, "output.") {
						continue
					}
					ref, err := ReadReference(f, k)
					if err != nil {
						return err
					}
					if d := ref.Check(s, got.Load(s, k)); !d.Pass {
						t.Errorf("%s: %s", k, d)
					}
				}
				return s.Err()
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
