package core

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand"
	"slices"
	"sort"
	"strings"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// Entry is one parameter of a model with its state-dict key.
type Entry struct {
	Key string
	Param
}

// StateDict lists m's parameters in tree order, keyed by dotted paths
// (Chain_1.Linear_2.weight), the keys Refiners would give the same model.
func StateDict(m Module) []Entry {
	var out []Entry
	add := func(prefix string, x Module) {
		if w, ok := x.(Weighted); ok {
			for _, p := range w.Params() {
				out = append(out, Entry{Key: prefix + p.Name, Param: p})
			}
		}
		if c, ok := x.(*Chain); ok {
			for _, p := range c.Own {
				out = append(out, Entry{Key: prefix + p.Name, Param: p})
			}
		}
	}
	add("", m)
	if c, ok := m.(*Chain); ok {
		c.Walk(func(x Module, _ *Chain, path string) bool {
			add(path+".", x)
			return true
		})
	}
	return out
}

// LoadOptions tune LoadState.
type LoadOptions struct {
	// Strict fails the load, changing nothing, on any missing, unexpected
	// or mis-shaped key.
	Strict bool
	// Prefix is prepended to every model key to find it in the file.
	Prefix string
	// Device the weights are moved to (CPU by default).
	Device tensor.Device
}

// LoadReport says how a file's keys matched a model's.
type LoadReport struct {
	File       string
	Loaded     []string
	Missing    []string // in the model, not in the file
	Unexpected []string // in the file, not in the model
	Mismatched []Mismatch
}

// Mismatch is a key whose shape or dtype differs between model and file.
type Mismatch struct {
	Key        string
	Want, Got  []int64
	WantDType  tensor.DType
	GotDType   tensor.DType
	DTypeIssue string // non-empty when the dtype cannot be converted
}

// OK reports whether every key matched.
func (r *LoadReport) OK() bool {
	return len(r.Missing) == 0 && len(r.Unexpected) == 0 && len(r.Mismatched) == 0
}

func (r *LoadReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d loaded", r.File, len(r.Loaded))
	list := func(what string, keys []string) {
		if len(keys) == 0 {
			return
		}
		fmt.Fprintf(&b, "\n  %d %s:", len(keys), what)
		for _, k := range keys {
			fmt.Fprintf(&b, "\n    %s", k)
		}
	}
	list("missing (in model, not in file)", r.Missing)
	list("unexpected (in file, not in model)", r.Unexpected)
	if len(r.Mismatched) > 0 {
		fmt.Fprintf(&b, "\n  %d mismatched:", len(r.Mismatched))
		for _, m := range r.Mismatched {
			if m.DTypeIssue != "" {
				fmt.Fprintf(&b, "\n    %s: %s", m.Key, m.DTypeIssue)
			} else {
				fmt.Fprintf(&b, "\n    %s: model wants shape %v, file has %v", m.Key, m.Want, m.Got)
			}
		}
	}
	return b.String()
}

// LoadState fills m's parameters from a safetensors file. All tensors are
// read before any is installed, so a failed load leaves m as it was. In
// strict mode any mismatch is an error carrying the full report.
func LoadState(s *tensor.Scope, m Module, f *weights.File, o LoadOptions) (*LoadReport, error) {
	entries := StateDict(m)
	r := &LoadReport{File: f.Path()}
	want := map[string]bool{}
	var toLoad []Entry
	for _, e := range entries {
		key := o.Prefix + e.Key
		want[key] = true
		info, ok := f.Info(key)
		if !ok {
			if dt, bad := f.Unsupported()[key]; bad {
				r.Mismatched = append(r.Mismatched, Mismatch{Key: key, DTypeIssue: "dtype " + dt + " is not supported"})
			} else {
				r.Missing = append(r.Missing, key)
			}
			continue
		}
		if !slices.Equal(info.Shape, e.Shape) {
			r.Mismatched = append(r.Mismatched, Mismatch{Key: key, Want: e.Shape, Got: info.Shape, WantDType: e.DType, GotDType: info.DType})
			continue
		}
		if info.DType.IsFloat() != e.DType.IsFloat() {
			r.Mismatched = append(r.Mismatched, Mismatch{Key: key, Want: e.Shape, Got: info.Shape, WantDType: e.DType, GotDType: info.DType,
				DTypeIssue: fmt.Sprintf("model wants %s, file has %s", e.DType, info.DType)})
			continue
		}
		toLoad = append(toLoad, e)
	}
	for _, k := range f.Keys() {
		if strings.HasPrefix(k, o.Prefix) && !want[k] {
			r.Unexpected = append(r.Unexpected, k)
		}
	}
	for k := range f.Unsupported() {
		if strings.HasPrefix(k, o.Prefix) && !want[k] {
			r.Unexpected = append(r.Unexpected, k)
		}
	}
	sort.Strings(r.Unexpected)
	if o.Strict && !r.OK() {
		return r, fmt.Errorf("load %s strictly: %s", f.Path(), r)
	}

	c := s.Child()
	defer c.Close()
	loaded := make([]*tensor.Tensor, len(toLoad))
	for i, e := range toLoad {
		// A file from weights.Open gives views of its mapping: no copy
		// unless a cast or a device move needs one, after which the
		// file's pages are let go (Evict) so as not to count twice.
		key := o.Prefix + e.Key
		view := f.Load(c, key)
		t, copied := view, false
		if t.Valid() && t.DType() != e.DType {
			t, copied = c.ToDType(t, e.DType), true
		}
		if t.Valid() && o.Device != tensor.CPU {
			t, copied = c.To(t, o.Device), true
		}
		if copied && c.Err() == nil {
			c.Release(view)
			f.Evict(key)
		}
		loaded[i] = t
	}
	if err := c.Err(); err != nil {
		return r, fmt.Errorf("load %s: %w", f.Path(), err)
	}
	for i, e := range toLoad {
		old := *e.Value
		*e.Value = c.Escape(loaded[i])
		old.Drop()
		r.Loaded = append(r.Loaded, o.Prefix+e.Key)
	}
	return r, nil
}

// SaveState writes m's loaded parameters to a safetensors file.
func SaveState(s *tensor.Scope, m Module, path string, metadata map[string]string) error {
	ts := map[string]*tensor.Tensor{}
	for _, e := range StateDict(m) {
		if !(*e.Value).Valid() {
			return fmt.Errorf("save %s: parameter %s is not loaded", path, e.Key)
		}
		ts[e.Key] = *e.Value
	}
	return weights.Save(s, path, ts, metadata)
}

// CountParams is the number of parameter elements of m, or math.MaxInt64
// if that does not fit an int64 (see ParamCount).
func CountParams(m Module) int64 {
	n, ok := ParamCount(m)
	if !ok {
		return math.MaxInt64
	}
	return n
}

// ParamCount is the number of parameter elements of m; ok is false when it
// does not fit an int64 (no such model could be loaded anyway).
func ParamCount(m Module) (n int64, ok bool) {
	for _, e := range StateDict(m) {
		k := int64(1)
		for _, d := range e.Shape {
			hi, lo := bits.Mul64(uint64(k), uint64(d))
			if d < 0 || hi != 0 || lo > math.MaxInt64 {
				return 0, false
			}
			k = int64(lo)
		}
		if n > math.MaxInt64-k {
			return 0, false
		}
		n += k
	}
	return n, true
}

// InitRandom gives every parameter of m deterministic random values from
// seed: weights uniform in ±1/sqrt(fan-in), like PyTorch's defaults, and
// norm scales near one. For tests and demos; real weights come from files.
func InitRandom(s *tensor.Scope, m Module, seed int64) error {
	rng := rand.New(rand.NewSource(seed))
	c := s.Child()
	defer c.Close()
	for _, e := range StateDict(m) {
		n := tensor.Numel(e.Shape)
		fanIn := int64(1)
		if len(e.Shape) > 1 {
			fanIn = n / e.Shape[0]
		}
		bound := 1 / math.Sqrt(float64(fanIn))
		vals := make([]float32, n)
		for i := range vals {
			vals[i] = float32((rng.Float64()*2 - 1) * bound)
		}
		t := c.FromFloat32(vals, e.Shape...)
		if e.DType != tensor.Float32 {
			t = c.ToDType(t, e.DType)
		}
		if c.Err() != nil {
			return fmt.Errorf("init %s: %w", e.Key, c.Err())
		}
		old := *e.Value
		*e.Value = c.Escape(t)
		old.Drop()
	}
	return nil
}

// ReleaseParams drops every parameter tensor of m.
func ReleaseParams(m Module) {
	for _, e := range StateDict(m) {
		(*e.Value).Drop()
		*e.Value = nil
	}
}

// Precision is embedded by weighted layers: the dtype their parameters are
// kept in (float32 unless changed).
type Precision struct{ DType tensor.DType }

// SetDType sets the dtype parameters are kept in.
func (p *Precision) SetDType(d tensor.DType) { p.DType = d }

// ToDType switches every weighted layer of m to dtype d, converting the
// parameters already loaded, like Refiners' module.to(dtype).
func ToDType(s *tensor.Scope, m Module, d tensor.DType) error {
	if !d.IsFloat() {
		return fmt.Errorf("to dtype: %s is not a floating-point type", d)
	}
	var modules []Module
	modules = append(modules, m)
	if c, ok := m.(*Chain); ok {
		c.Walk(func(x Module, _ *Chain, _ string) bool {
			modules = append(modules, x)
			return true
		})
	}
	c := s.Child()
	defer c.Close()
	for _, x := range modules {
		var params []Param
		if ch, ok := x.(*Chain); ok && len(ch.Own) > 0 {
			for i := range ch.Own {
				ch.Own[i].DType = d
			}
			params = ch.Own
		} else if p, ok := x.(interface{ SetDType(tensor.DType) }); ok {
			p.SetDType(d)
			params = x.(Weighted).Params()
		}
		for _, e := range params {
			if old := *e.Value; old.Valid() && old.DType() != d {
				t := c.ToDType(old, d)
				if c.Err() != nil {
					return fmt.Errorf("to dtype %s: %w", d, c.Err())
				}
				*e.Value = c.Escape(t)
				old.Drop()
			}
		}
	}
	return nil
}
