package conformance

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/adapt"
	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/hosts"
	"github.com/refiners-go/refiners/sdk"
	"github.com/refiners-go/refiners/spec"
)

// TestLora checks LoRA application against the reference implementations
// (generate_lora.py: Refiners' own LoRA adapters, diffusers' loader with
// PEFT, LyCORIS) on the SD 1.5 U-Net and CLIP text encoder. Each case's
// files are planned by the real LoRA plugin binary through hosts (as
// `refinersd run --adapter lora:FILE` does), then
//
//   - runtime: adapt.Apply, every adapter in order; the output is compared
//     with the reference; Eject (in reverse) must give back the base output
//     and every weight bit for bit, and the same tree;
//   - fused: adapt.Fuse, every adapter in order; compared with the reference
//     at the case's fused tolerance; Unfuse must restore the same way.
//
// The plans' reports must use every key of every file (over the two
// components: a combined file's text encoder keys are skipped when planning
// the U-Net) and leave none unmatched or mis-shaped. Tiny cases are in
// testdata/lora; CONFORMANCE_TIER=full runs testdata/full/lora.
func TestLora(t *testing.T) {
	dir := "testdata/lora"
	if os.Getenv("CONFORMANCE_TIER") == "full" {
		dir = "testdata/full/lora"
	}
	paths, _ := filepath.Glob(filepath.Join(dir, "*.case.safetensors"))
	if len(paths) == 0 {
		t.Skipf("no LoRA cases in %s yet", dir)
	}
	var cases []*loraCase
	for _, p := range paths {
		c, err := readLoraCase(p)
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, c)
	}

	// The real plugin binary, installed into a private plugins directory.
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "lora")
	if out, err := exec.Command("go", "build", "-o", bin, "../plugins/lora").CombinedOutput(); err != nil {
		t.Fatalf("building the LoRA plugin: %v\n%s", err, out)
	}
	h, err := hosts.New(filepath.Join(tmp, "plugins"), hosts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.Install(context.Background(), bin); err != nil {
		t.Fatal(err)
	}

	var rows []string
	row := func(name, comp, mode string, d *Diff, status string) {
		if d != nil {
			rows = append(rows, reportRow(name, comp+" "+mode, *d))
			return
		}
		rows = append(rows, fmt.Sprintf("%-34s %-14s %s", name, comp+" "+mode, status))
	}
	for _, comp := range []string{"unet", "text_encoder"} {
		var mine []*loraCase
		for _, c := range cases {
			if c.outputs[comp] {
				mine = append(mine, c)
			}
		}
		if len(mine) == 0 {
			continue
		}
		// One base model per component and base file, shared by its cases:
		// every case must leave it exactly as it found it.
		byBase := map[string][]*loraCase{}
		var bases []string
		for _, c := range mine {
			b := filepath.Join(dir, c.base[comp])
			if byBase[b] == nil {
				bases = append(bases, b)
			}
			byBase[b] = append(byBase[b], c)
		}
		for _, basePath := range bases {
			err := withSpecModel(basePath, func(s *tensor.Scope, m *core.Chain, run func() ([]*tensor.Tensor, error), want Reference) error {
				base, err := run()
				if err != nil {
					return err
				}
				d := want.Check(s, base[0])
				row(strings.TrimSuffix(filepath.Base(basePath), ".safetensors"), comp, "base", &d, passFail(d.Pass))
				if !d.Pass {
					t.Errorf("%s: base output: %s", basePath, d)
				}
				snap := snapshot(s, m)
				// No t.Run here: this runs on the tensor worker's thread,
				// which a subtest's Fatal would end.
				for _, c := range byBase[basePath] {
					e := &caseErrors{t: t, prefix: c.name + "/" + comp + ": "}
					if err := runLoraCase(e, h, s, m, c, comp, run, base[0], snap, row); err != nil {
						e.Errorf("%v", err)
					}
				}
				return s.Err()
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	// Every file key is used by the plans of the case's components.
	for _, c := range cases {
		for _, a := range c.adapters {
			var missing []string
			for _, k := range a.keys {
				if !a.matched[k] {
					missing = append(missing, k)
				}
			}
			if len(missing) > 0 {
				t.Errorf("%s: %s: %d of %d keys matched by no plan, e.g. %s", c.name, a.File, len(missing), len(a.keys), missing[0])
			}
		}
	}

	sort.Strings(rows)
	publishReport(t, reportHeader("LoRA case")+strings.Join(rows, "\n")+"\n")
}

func passFail(ok bool) string {
	if ok {
		return "pass"
	}
	return "FAIL"
}

// loraCase is a <name>.case.safetensors file: expected outputs per
// component and the adapters to apply.
type loraCase struct {
	name, path      string
	base            map[string]string // component -> base spec case file
	adapters        []*loraAdapter
	outputs         map[string]bool
	refused         bool // the host refused a patch kind
	reference       string
	referenceOfBase map[string]float64
}

type loraAdapter struct {
	File    string          `json:"file"`
	Params  json.RawMessage `json:"params"`
	keys    []string
	matched map[string]bool
}

func readLoraCase(path string) (*loraCase, error) {
	f, err := weights.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	meta := f.Metadata()
	c := &loraCase{name: strings.TrimSuffix(filepath.Base(path), ".case.safetensors"), path: path, outputs: map[string]bool{}, reference: meta["reference"]}
	if err := json.Unmarshal([]byte(meta["base"]), &c.base); err != nil {
		return nil, fmt.Errorf("%s: base: %w", path, err)
	}
	if err := json.Unmarshal([]byte(meta["adapters"]), &c.adapters); err != nil {
		return nil, fmt.Errorf("%s: adapters: %w", path, err)
	}
	_ = json.Unmarshal([]byte(meta["base_max_abs"]), &c.referenceOfBase)
	for _, k := range f.Keys() {
		if comp, ok := strings.CutPrefix(k, "output."); ok {
			c.outputs[comp] = true
		}
	}
	for _, a := range c.adapters {
		af, err := weights.Open(filepath.Join(filepath.Dir(path), a.File))
		if err != nil {
			return nil, err
		}
		a.keys = af.Keys()
		a.matched = map[string]bool{}
		af.Close()
	}
	return c, nil
}

// withSpecModel builds a spec case's model, loads its parameters strictly
// and calls fn with a function running the case's inputs and contexts, and
// the reference output.
func withSpecModel(path string, fn func(s *tensor.Scope, m *core.Chain, run func() ([]*tensor.Tensor, error), want Reference) error) error {
	f, err := weights.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	c, err := readSpecCase(f)
	if err != nil {
		return err
	}
	want, err := ReadReference(f, "output.0")
	if err != nil {
		return err
	}
	sp, err := spec.Load(filepath.Join("..", c.Spec))
	if err != nil {
		return err
	}
	m, err := sp.Build(c.Overrides)
	if err != nil {
		return err
	}
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if _, err := core.LoadState(s, m, f, core.LoadOptions{Strict: true, Prefix: "param."}); err != nil {
			return err
		}
		defer core.ReleaseParams(m)
		contexts := core.Contexts{}
		var inputs []*tensor.Tensor
		for _, k := range f.Keys() {
			if rest, ok := strings.CutPrefix(k, "context."); ok {
				name, key, _ := strings.Cut(rest, ".")
				if contexts[name] == nil {
					contexts[name] = map[string]any{}
				}
				contexts[name][key] = f.Load(s, k)
			}
		}
		for i := 0; ; i++ {
			if _, ok := f.Info(fmt.Sprintf("input.%d", i)); !ok {
				break
			}
			inputs = append(inputs, f.Load(s, fmt.Sprintf("input.%d", i)))
		}
		run := func() ([]*tensor.Tensor, error) {
			return core.Call{Contexts: contexts}.Forward(s, m, inputs...)
		}
		return fn(s, m, run, want)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// modelSnapshot is what must come back exactly after ejecting or unfusing:
// the tree print and every parameter's bytes (as digests).
type modelSnapshot struct {
	tree    string
	digests map[string][32]byte
	keys    []string
}

func snapshot(s *tensor.Scope, m *core.Chain) modelSnapshot {
	snap := modelSnapshot{tree: core.Tree(m, -1), digests: map[string][32]byte{}}
	for _, e := range core.StateDict(m) {
		snap.keys = append(snap.keys, e.Key)
		snap.digests[e.Key] = sha256.Sum256(s.Bytes(*e.Value))
	}
	return snap
}

// restored lists how m differs from the snapshot.
func (snap modelSnapshot) restored(s *tensor.Scope, m *core.Chain) []string {
	var errs []string
	if core.Tree(m, -1) != snap.tree {
		errs = append(errs, "the tree print differs")
	}
	now := snapshot(s, m)
	if !slices.Equal(now.keys, snap.keys) {
		errs = append(errs, fmt.Sprintf("state-dict keys differ (%d now, %d before)", len(now.keys), len(snap.keys)))
	}
	n := 0
	for k, d := range snap.digests {
		if now.digests[k] != d {
			n++
			if n <= 3 {
				errs = append(errs, "weight "+k+" differs")
			}
		}
	}
	if n > 3 {
		errs = append(errs, fmt.Sprintf("... %d weights differ", n))
	}
	return errs
}

// runLoraCase plans the case's adapters onto m for one component, applies
// them at run time then fused, and checks each against the reference.
func runLoraCase(t *caseErrors, h *hosts.Host, s *tensor.Scope, m *core.Chain, c *loraCase, comp string,
	run func() ([]*tensor.Tensor, error), base *tensor.Tensor, snap modelSnapshot, row func(string, string, string, *Diff, string)) error {
	ctx := context.Background()
	cf, err := weights.Open(c.path)
	if err != nil {
		return err
	}
	defer cf.Close()
	want, err := ReadReference(cf, "output."+comp)
	if err != nil {
		return err
	}

	// Plan every adapter against the base model, as refinersd does.
	model := adapt.Summarize(m)
	var plans []*sdk.Plan
	files := map[string]*weights.File{}
	for i, a := range c.adapters {
		path := filepath.Join(filepath.Dir(c.path), a.File)
		f, err := weights.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		sum, err := hosts.FileSHA256(path)
		if err != nil {
			return err
		}
		id := fmt.Sprintf("file%d", i)
		params := strings.TrimSuffix(string(a.Params), "}") + `, "strict": true}`
		plan, err := h.Plan(ctx, "lora", &sdk.PlanRequest{Operation: "apply", Params: params, Model: model,
			Files: []sdk.File{adapt.Header(id, sum, f)}})
		if err != nil {
			row(c.name, comp, "plan", nil, "FAIL")
			return fmt.Errorf("plan %s: %w", a.File, err)
		}
		r := plan.Report
		if r == nil {
			return fmt.Errorf("plan %s: no report", a.File)
		}
		for _, k := range r.Matched {
			a.matched[k] = true
		}
		if len(r.Unmatched) > 0 || len(r.ShapeMismatched) > 0 {
			t.Errorf("plan %s: %d unmatched (%v), %d mis-shaped (%v)", a.File, len(r.Unmatched), first(r.Unmatched),
				len(r.ShapeMismatched), first(r.ShapeMismatched))
		}
		t.Logf("%s on %s: format %s, %d layers adapted of %d, %d keys matched, warnings %v", a.File, comp, r.Format,
			r.Covered, r.Layers, len(r.Matched), r.Warnings)
		plans = append(plans, plan)
		files[id] = f
	}

	check := func(mode string) {
		outs, err := run()
		if err != nil {
			t.Errorf("%s: forward: %v", mode, err)
			return
		}
		d := want.Check(s, outs[0])
		row(c.name, comp, mode, &d, passFail(d.Pass))
		if !d.Pass {
			t.Errorf("%s: %s", mode, d)
		}
	}
	checkRestored := func(mode string) {
		outs, err := run()
		if err != nil {
			t.Errorf("after %s: forward: %v", mode, err)
			return
		}
		if d := ExactDiff(s, outs[0], base); !d.Pass {
			t.Errorf("after %s: the output is not the base output bit for bit: %s", mode, d)
		}
		if errs := snap.restored(s, m); len(errs) > 0 {
			t.Errorf("after %s: %s", mode, strings.Join(errs, "; "))
		}
	}

	// Runtime.
	var undo []func() error
	refused := ""
	for _, plan := range plans {
		ap, err := adapt.Apply(s, m, plan, files)
		if err != nil {
			if i := strings.Index(err.Error(), "is not supported by this host"); i >= 0 {
				refused = err.Error()[strings.LastIndex(err.Error()[:i], "\n")+1:]
				break
			}
			t.Errorf("apply: %v", err)
			break
		}
		undo = append(undo, ap.Eject)
	}
	if refused == "" && len(undo) == len(plans) {
		check("runtime")
	}
	for i := len(undo) - 1; i >= 0; i-- {
		if err := undo[i](); err != nil {
			t.Errorf("eject: %v", err)
		}
	}
	checkRestored("eject")
	if refused != "" {
		// Until the host supports the kind (branch delta-kinds), the case
		// reports the refusal instead of passing silently.
		c.refused = true
		row(c.name, comp, "runtime", nil, "REFUSED by the host")
		row(c.name, comp, "fused", nil, "REFUSED by the host")
		t.Logf("the host refuses this case: %s", firstLine(refused))
		return nil
	}

	// Fused.
	undo = nil
	for _, plan := range plans {
		fu, err := adapt.Fuse(s, m, plan, files)
		if err != nil {
			row(c.name, comp, "fused", nil, "FAIL: "+firstLine(err.Error()))
			t.Errorf("fuse: %v", err)
			break
		}
		undo = append(undo, fu.Unfuse)
	}
	if len(undo) == len(plans) {
		check("fused")
	}
	for i := len(undo) - 1; i >= 0; i-- {
		if err := undo[i](); err != nil {
			t.Errorf("unfuse: %v", err)
		}
	}
	checkRestored("unfuse")
	return s.Err()
}

// caseErrors reports a case's failures on the test, prefixed with its name
// (safe from the tensor worker's goroutine: it never calls FailNow).
type caseErrors struct {
	t      *testing.T
	prefix string
}

func (e *caseErrors) Errorf(format string, args ...any) { e.t.Errorf(e.prefix+format, args...) }
func (e *caseErrors) Logf(format string, args ...any)   { e.t.Logf(e.prefix+format, args...) }

func first(xs []string) string {
	if len(xs) == 0 {
		return ""
	}
	return xs[0]
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
