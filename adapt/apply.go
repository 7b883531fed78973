// Package adapt turns plugins' plans into adapters: it summarises a model
// and weight files for a plan (Summarize, Header), checks a plan against
// the model and the files, and applies it with core adapters (Apply, then
// Eject) or merges it into the weights (Fuse, then Unfuse), for the patch
// kinds lora, diff, loha, lokr and dora; patches of kind insert add a
// sub-model as a new child of a chain (insert.go: Apply and Eject only). It runs no plugin (package hosts does)
// and reads no protocol message: plans are the sdk's plain types.
package adapt

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/sdk"
)

// Summarize describes a model for a plugin: every weighted layer's path,
// type and parameter shapes, with the base model's paths (adapters already
// in place are seen through; sub-models put in by insert patches, such as
// ControlNets, are left out: see inserted). No tensor data is involved.
func Summarize(m *core.Chain) []sdk.Layer {
	var out []sdk.Layer
	m.WalkBase(func(x core.Module, path string) bool {
		if _, in := inserted.Load(x); in {
			return false // an insert patch's sub-model: not the base model's
		}
		w, ok := x.(core.Weighted)
		if !ok {
			return true
		}
		l := sdk.Layer{Path: path, Type: core.TypeName(x), Params: map[string][]int64{}, DTypes: map[string]string{}}
		for _, p := range w.Params() {
			l.Params[p.Name], l.DTypes[p.Name] = p.Shape, p.DType.String()
		}
		out = append(out, l)
		return true
	})
	return out
}

// Header describes a weights file for a plugin: keys, dtypes, shapes,
// metadata, and the values of one-element tensors (LoRA alphas).
func Header(id, sha256 string, f *weights.File) sdk.File {
	wf := sdk.File{ID: id, SHA256: sha256, Metadata: f.Metadata()}
	for _, k := range f.Keys() {
		info, _ := f.Info(k)
		ti := sdk.Tensor{Key: k, DType: info.DType.String(), Shape: info.Shape}
		if v, err := f.Scalar(k); err == nil {
			ti.Value = &v
		}
		wf.Tensors = append(wf.Tensors, ti)
	}
	return wf
}

// Applied is a plan applied to a model; Eject removes it exactly.
type Applied struct {
	model    *core.Chain
	created  []*core.Chain            // adapters this application injected
	extended map[*core.Chain][]string // existing adapters -> branch names added
	inserted []*patchWork             // insert patches, in the order applied
	branches []core.Module
	Report   *sdk.Report
}

// patchWork is a validated patch, ready to load and inject.
type patchWork struct {
	patch  *sdk.Patch
	target core.Module
	branch core.Module           // a LoRA or weight-delta branch
	params map[string]core.Entry // branch parameter path -> slot
	insert *insertion            // for insert patches: where the branch goes
}

// Apply checks a plan against the model and the files, loads the bound
// tensors, and injects the branches (runtime mode: the branches run next to
// the untouched weights). Nothing is changed unless every patch is valid;
// the error lists every problem.
func Apply(s *tensor.Scope, m *core.Chain, plan *sdk.Plan, files map[string]*weights.File) (*Applied, error) {
	work, err := prepare(s, m, plan, files)
	if err != nil {
		return nil, err
	}
	a := &Applied{model: m, extended: map[*core.Chain][]string{}, Report: plan.Report}
	for _, w := range work {
		a.branches = append(a.branches, w.branch)
	}
	// Inject, grouping branches by target; undo on failure.
	byTarget := map[core.Module][]core.Module{}
	var order []core.Module
	var inserts []*patchWork
	for _, w := range work {
		if w.insert != nil {
			inserts = append(inserts, w)
			continue
		}
		if byTarget[w.target] == nil {
			order = append(order, w.target)
		}
		byTarget[w.target] = append(byTarget[w.target], w.branch)
	}
	for _, target := range order {
		if err := a.inject(target, byTarget[target]); err != nil {
			a.Eject()
			return nil, err
		}
	}
	// Then the insertions, each at its index as the chain is by then (two
	// at index 0 of one chain: the later one runs first, as Refiners'
	// adapters stack).
	for _, w := range inserts {
		if err := w.insert.parent.Insert(w.insert.index, w.branch); err != nil {
			a.Eject()
			return nil, fmt.Errorf("insert into %s: %w", core.Describe(w.insert.parent), err)
		}
		a.inserted = append(a.inserted, w)
		inserted.Store(w.branch, struct{}{})
	}
	return a, nil
}

// prepare validates a whole plan and loads its branches' weights. On error
// nothing is loaded and the model is untouched.
func prepare(s *tensor.Scope, m *core.Chain, plan *sdk.Plan, files map[string]*weights.File) ([]*patchWork, error) {
	var problems []string
	var work []*patchWork
	names := map[string]map[string]bool{} // target path -> branch names
	for i := range plan.Patches {
		p := &plan.Patches[i]
		w, errs := validate(m, p, files)
		for _, e := range errs {
			problems = append(problems, fmt.Sprintf("patch %d (%s): %s", i, p.Target, e))
		}
		if w == nil {
			continue
		}
		if w.insert != nil {
			for _, o := range work {
				if o.insert != nil && o.insert.parent == w.insert.parent && core.Describe(o.branch) == core.Describe(w.branch) {
					problems = append(problems, fmt.Sprintf("patch %d (%s): two insertions of %s", i, p.Target, core.Describe(w.branch)))
					w = nil
					break
				}
			}
			if w != nil {
				work = append(work, w)
			}
			continue
		}
		if names[p.Target] == nil {
			names[p.Target] = map[string]bool{}
		}
		name := core.BranchName(w.branch)
		if names[p.Target][name] {
			problems = append(problems, fmt.Sprintf("patch %d (%s): two branches named %q", i, p.Target, name))
			continue
		}
		names[p.Target][name] = true
		work = append(work, w)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("invalid plan:\n  %s", strings.Join(problems, "\n  "))
	}
	if len(work) == 0 {
		return nil, errors.New("the plan adapts no layer")
	}

	// Load every bound tensor before touching the model.
	c := s.Child()
	defer c.Close()
	for _, w := range work {
		for _, group := range bindingGroups(w) {
			b := group[0]
			var parts []*tensor.Tensor
			for _, b := range group {
				t := files[b.File].Load(c, b.Key)
				if len(b.Reshape) > 0 {
					t = c.Reshape(t, b.Reshape...)
				}
				if b.Transpose {
					t = c.Transpose(t, -2, -1)
				}
				if b.Scale != 0 && b.Scale != 1 {
					t = c.Scale(t, b.Scale)
				}
				parts = append(parts, t)
			}
			t := parts[0]
			if len(parts) > 1 { // an insert patch's parameter made of several keys
				t = c.Cat(parts, 0)
			}
			slot := w.params[b.Param]
			if t.Valid() && t.DType() != slot.DType {
				t = c.ToDType(t, slot.DType)
			}
			if t.Valid() && !slices.Equal(t.Shape(), slot.Shape) {
				c.Failf("%s: %s[%s] has shape %v after transforms, %s wants %v", w.patch.Target, b.File, b.Key, t.Shape(), b.Param, slot.Shape)
			}
			if c.Err() != nil {
				break
			}
			*slot.Value = c.Escape(c.Contiguous(t))
		}
	}
	if err := c.TakeErr(); err != nil {
		for _, w := range work {
			core.ReleaseParams(w.branch)
		}
		return nil, fmt.Errorf("load plan tensors: %w", err)
	}
	return work, nil
}

// validate resolves a patch's target, builds its branch and checks every
// binding against the branch's parameters and the files' headers.
func validate(m *core.Chain, p *sdk.Patch, files map[string]*weights.File) (*patchWork, []string) {
	var errs []string
	kind := p.Kind
	if kind == "" {
		kind = "lora"
	}
	types, ok := branchTypes[kind]
	if !ok && kind != InsertKind {
		return nil, []string{fmt.Sprintf("patch kind %q is not supported by this host (supported: %s)", kind, strings.Join(supportedKinds(), ", "))}
	}
	desc, err := BranchDescription(p.Branch)
	if err != nil {
		return nil, []string{err.Error()}
	}
	var w *patchWork
	if kind == InsertKind {
		built, at, err := buildInsert(m, p.Target, desc)
		if err != nil {
			return nil, []string{err.Error()}
		}
		w = &patchWork{patch: p, target: at.parent, branch: built, params: map[string]core.Entry{}, insert: at}
	} else {
		target, err := m.BaseLayer(p.Target)
		if err != nil {
			return nil, []string{err.Error()}
		}
		built, err := core.BuildLayer(desc)
		if err != nil {
			return nil, []string{fmt.Sprintf("branch: %v", err)}
		}
		if !slices.Contains(types, core.TypeName(built)) || !core.IsBranch(built) {
			return nil, []string{fmt.Sprintf("branch %s is not a %s branch (%s)", core.Describe(built), kind, strings.Join(types, ", "))}
		}
		if err := core.CheckLoraFit(target, built); err != nil {
			return nil, []string{err.Error()}
		}
		w = &patchWork{patch: p, target: target, branch: built, params: map[string]core.Entry{}}
	}
	for _, e := range core.StateDict(w.branch) {
		w.params[e.Key] = e
	}
	bound := map[string]bool{}
	// An insert patch may bind one parameter to several keys: their
	// tensors are concatenated along dimension 0, in order (an official
	// checkpoint's separate embeddings making one of Refiners').
	concat := map[string][][]int64{}
	for _, b := range p.Bindings {
		f, ok := files[b.File]
		if !ok {
			errs = append(errs, fmt.Sprintf("binding %s: unknown file %q", b.Param, b.File))
			continue
		}
		info, ok := f.Info(b.Key)
		if !ok {
			errs = append(errs, fmt.Sprintf("binding %s: file %s has no tensor %q", b.Param, b.File, b.Key))
			continue
		}
		slot, ok := w.params[b.Param]
		if !ok {
			errs = append(errs, fmt.Sprintf("binding: the branch has no parameter %q (it has: %s)", b.Param, strings.Join(keys(w.params), ", ")))
			continue
		}
		shape := info.Shape
		if len(b.Reshape) > 0 {
			shape = b.Reshape
		}
		if b.Transpose && len(shape) >= 2 {
			shape = append(append([]int64(nil), shape[:len(shape)-2]...), shape[len(shape)-1], shape[len(shape)-2])
		}
		if w.insert != nil && countBindings(p.Bindings, b.Param) > 1 {
			concat[b.Param] = append(concat[b.Param], shape)
		} else if !slices.Equal(shape, slot.Shape) {
			errs = append(errs, fmt.Sprintf("binding %s: %s[%s] gives shape %v, the branch wants %v", b.Param, b.File, b.Key, shape, slot.Shape))
		}
		bound[b.Param] = true
	}
	for param, shapes := range concat {
		want := w.params[param].Shape
		rows := int64(0)
		ok := len(want) > 0
		for _, sh := range shapes {
			ok = ok && len(sh) == len(want) && slices.Equal(sh[1:], want[1:])
			if len(sh) > 0 {
				rows += sh[0]
			}
		}
		if !ok || rows != want[0] {
			errs = append(errs, fmt.Sprintf("binding %s: %d keys concatenated along dimension 0 give shapes %v, the branch wants %v", param, len(shapes), shapes, want))
		}
	}
	for k := range w.params {
		if !bound[k] {
			errs = append(errs, fmt.Sprintf("branch parameter %s has no binding", k))
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return w, nil
}

// BranchDescription is a patch's branch as core.BuildLayer reads it: the
// form it has after the wire (JSON numbers as float64), whether the plan
// came from a plugin process or was made in this one.
func BranchDescription(branch map[string]any) (map[string]any, error) {
	b, err := json.Marshal(branch)
	if err != nil {
		return nil, fmt.Errorf("branch: %v", err)
	}
	var desc map[string]any
	if err := json.Unmarshal(b, &desc); err != nil || desc == nil {
		return nil, fmt.Errorf("branch is not a JSON object: %s", b)
	}
	return desc, nil
}

// branchTypes are the layer types a patch of each kind may describe.
var branchTypes = map[string][]string{
	"lora": {"LinearLora", "Conv2dLora"},
	"diff": {"WeightDelta"},
	"loha": {"LoHa"},
	"lokr": {"LoKr"},
}

func supportedKinds() []string {
	out := []string{InsertKind}
	for k := range branchTypes {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func keys(m map[string]core.Entry) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (a *Applied) inject(target core.Module, branches []core.Module) error {
	if parent, ok := a.model.ParentOf(target); ok && parent.TypeName() == "LoraAdapter" && parent.Target() == target {
		for _, b := range branches {
			if err := core.AddLora(parent, b); err != nil {
				return err
			}
			a.extended[parent] = append(a.extended[parent], core.BranchName(b))
		}
		return nil
	}
	adapter, err := core.NewLoraAdapter(target, branches...)
	if err != nil {
		return err
	}
	if err := adapter.Inject(a.model); err != nil {
		return err
	}
	a.created = append(a.created, adapter)
	return nil
}

// Eject removes everything Apply added and releases the branch weights,
// leaving the model exactly as it was.
func (a *Applied) Eject() error {
	var errs []error
	for i := len(a.inserted) - 1; i >= 0; i-- {
		w := a.inserted[i]
		if err := w.insert.parent.Remove(w.branch); err != nil {
			errs = append(errs, err)
			continue
		}
		inserted.Delete(w.branch)
	}
	a.inserted = nil
	for adapter, names := range a.extended {
		for _, n := range names {
			if _, err := core.RemoveLora(adapter, n); err != nil {
				errs = append(errs, err)
			}
		}
	}
	a.extended = map[*core.Chain][]string{}
	for i := len(a.created) - 1; i >= 0; i-- {
		if err := a.created[i].Eject(); err != nil {
			errs = append(errs, err)
		}
	}
	a.created = nil
	a.release()
	return errors.Join(errs...)
}

func (a *Applied) release() {
	for _, b := range a.branches {
		core.ReleaseParams(b)
	}
	a.branches = nil
}

// countBindings counts the bindings of one parameter.
func countBindings(bs []sdk.Binding, param string) int {
	n := 0
	for _, b := range bs {
		if b.Param == param {
			n++
		}
	}
	return n
}

// bindingGroups lists a patch's bindings by parameter, in order of first
// appearance: one binding each, or, for an insert patch, every binding of
// a parameter made of several keys (concatenated along dimension 0).
func bindingGroups(w *patchWork) [][]sdk.Binding {
	if w.insert == nil {
		groups := make([][]sdk.Binding, len(w.patch.Bindings))
		for i, b := range w.patch.Bindings {
			groups[i] = []sdk.Binding{b}
		}
		return groups
	}
	index := map[string]int{}
	var groups [][]sdk.Binding
	for _, b := range w.patch.Bindings {
		i, ok := index[b.Param]
		if !ok {
			i = len(groups)
			index[b.Param] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], b)
	}
	return groups
}
