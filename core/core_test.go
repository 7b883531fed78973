package core

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
)

func run(t *testing.T, f func(s *tensor.Scope) error) {
	t.Helper()
	if err := tensor.Run(context.Background(), f); err != nil {
		t.Fatal(err)
	}
}

func sample() *Chain {
	return NewChain(
		NewLinear(4, 8, true),
		NewSiLU(),
		NewResidual(NewLinear(8, 8, true), NewLinear(8, 8, true)),
		NewParallel(NewIdentity(), NewIdentity()),
		NewSum(NewLinear(8, 8, true), NewLinear(8, 8, true)),
		NewChain(NewLayerNorm(8), NewLinear(8, 8, true)),
		NewChain(NewLayerNorm(8), NewLinear(8, 8, true)),
		NewLinear(8, 2, true),
	)
}

// runnable is sample with the Parallel's two outputs summed, so it can run.
func runnable() *Chain {
	c := sample()
	par, _ := c.Layer("Parallel")
	c.Replace(par, NewSum(NewParallel(NewIdentity(), NewIdentity())))
	return c
}

func TestKeysFollowRefinersNaming(t *testing.T) {
	c := sample()
	want := []string{"Linear_1", "SiLU", "Residual", "Parallel", "Sum", "Chain_1", "Chain_2", "Linear_2"}
	if got := c.Keys(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("keys = %v, want %v", got, want)
	}
	var keys []string
	for _, e := range StateDict(c) {
		keys = append(keys, e.Key)
	}
	wantKeys := "Linear_1.weight Linear_1.bias Residual.Linear_1.weight Residual.Linear_1.bias Residual.Linear_2.weight Residual.Linear_2.bias " +
		"Sum.Linear_1.weight Sum.Linear_1.bias Sum.Linear_2.weight Sum.Linear_2.bias Chain_1.LayerNorm.weight Chain_1.LayerNorm.bias " +
		"Chain_1.Linear.weight Chain_1.Linear.bias Chain_2.LayerNorm.weight Chain_2.LayerNorm.bias Chain_2.Linear.weight Chain_2.Linear.bias " +
		"Linear_2.weight Linear_2.bias"
	if got := strings.Join(keys, " "); got != wantKeys {
		t.Errorf("state dict keys:\n got %s\nwant %s", got, wantKeys)
	}
}

func TestTreePrint(t *testing.T) {
	got := sample().String()
	for _, line := range []string{
		"(CHAIN)",
		"    ├── Linear(in_features=4, out_features=8, device=cpu, dtype=float32) #1",
		"    ├── (RES) Residual()",
		"    │   └── Linear(in_features=8, out_features=8, device=cpu, dtype=float32) (x2)",
		"    ├── (PAR)",
		"    │   └── Identity() (x2)",
		"    ├── (CHAIN) (x2)",
		"    │   ├── LayerNorm(normalized_shape=(8,), device=cpu, dtype=float32)",
		"    └── Linear(in_features=8, out_features=2, device=cpu, dtype=float32) #2",
	} {
		if !strings.Contains(got, line+"\n") && !strings.HasSuffix(got, line) {
			t.Errorf("tree print lacks line %q; got:\n%s", line, got)
		}
	}
}

func TestLayerPaths(t *testing.T) {
	c := sample()
	m, err := c.Layer("Residual.Linear_2")
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := c.PathOf(m); p != "Residual.Linear_2" {
		t.Errorf("PathOf = %q", p)
	}
	if m2, _ := c.Layer("2.1"); m2 != m {
		t.Error("index path did not reach the same layer")
	}
	if _, err := c.Layer("Residual.Linear_9"); err == nil || !strings.Contains(err.Error(), "no child \"Linear_9\"") {
		t.Errorf("bad path error = %v", err)
	}
	res, _ := c.Layer("Residual")
	if res.(*Chain).Parent() != c {
		t.Error("parent link not set")
	}
	if got := len(c.Layers("Linear")); got != 8 {
		t.Errorf("Layers(Linear) = %d, want 8", got)
	}
	if err := c.InsertAfterType("SiLU", NewIdentity()); err != nil {
		t.Fatal(err)
	}
	if k := c.Keys()[2]; k != "Identity" {
		t.Errorf("inserted key = %s", k)
	}
	if _, err := c.Pop(2); err != nil {
		t.Fatal(err)
	}
	inner, _ := c.Layer("Chain_1")
	if err := c.Append(inner); err == nil {
		t.Error("a chain was adopted twice")
	}
}

func forward(t *testing.T, s *tensor.Scope, m Module, call Call, in ...*tensor.Tensor) []float32 {
	t.Helper()
	out, err := call.Forward(s, m, in...)
	if err != nil {
		t.Fatal(err)
	}
	return s.Float32s(out[0])
}

func TestContextReachesDeepLayerAndSiblingsAreIsolated(t *testing.T) {
	run(t, func(s *tensor.Scope) error {
		// A value set at the root is read five levels down.
		deep := NewChain(NewChain(NewChain(NewChain(NewChain(NewUseContext("cond", "x"))))))
		x := s.FromFloat32([]float32{1, 2, 3}, 3)
		got := forward(t, s, deep, Call{Contexts: Contexts{"cond": {"x": x}}}, s.Zeros(tensor.Float32, 1))
		if got[2] != 3 {
			t.Errorf("deep UseContext = %v", got)
		}
		// Set inside one provider, used inside it; the sibling provider
		// sets its own value and must not see the first one's.
		a := NewChain(NewSetContext("c", "k"), NewMultiply(0, 0), NewUseContext("c", "k"))
		a.Provider = true
		b := NewChain(NewMultiply(10, 0), NewSetContext("c", "k"), NewUseContext("c", "k"))
		b.Provider = true
		probe := NewChain(NewUseContext("c", "k"))
		probe.Provider = true
		root := NewParallel(a, b, probe)
		out, err := Forward(s, root, s.FromFloat32([]float32{1}, 1))
		if err == nil {
			t.Fatalf("probe saw a sibling's context: %v", s.Float32s(out[2]))
		}
		if !strings.Contains(err.Error(), `forward Chain_3.UseContext: context "c" has no key "k"`) {
			t.Errorf("error = %v", err)
		}
		root.Pop(2)
		out, err = Forward(s, root, s.FromFloat32([]float32{1}, 1))
		if err != nil {
			t.Fatal(err)
		}
		if a, b := s.Float32s(out[0])[0], s.Float32s(out[1])[0]; a != 1 || b != 10 {
			t.Errorf("siblings read %v and %v, want 1 and 10", a, b)
		}
		// Chain defaults are seen by every call, call values come first.
		d := NewChain(NewUseContext("c", "k"))
		d.SetContext("c", "k", s.Escape(s.FromFloat32([]float32{7}, 1)))
		if got := forward(t, s, d, Call{}, x); got[0] != 7 {
			t.Errorf("default context = %v", got)
		}
		if got := forward(t, s, d, Call{Contexts: Contexts{"c": {"k": x}}}, x); got[0] != 1 {
			t.Errorf("call context did not override default: %v", got)
		}
		return s.Err()
	})
}

func TestChainKinds(t *testing.T) {
	run(t, func(s *tensor.Scope) error {
		x := s.FromFloat32([]float32{1, 2}, 1, 2)
		cases := []struct {
			name string
			m    Module
			want []float32
		}{
			{"residual", NewResidual(NewMultiply(10, 0)), []float32{11, 22}},
			{"sum", NewSum(NewMultiply(2, 1), NewMultiply(3, 0)), []float32{6, 11}},
			{"sum of tuple", NewSum(NewParallel(NewIdentity(), NewIdentity())), []float32{2, 4}},
			{"concatenate", NewConcatenate(1, NewIdentity(), NewMultiply(-1, 0)), []float32{1, 2, -1, -2}},
			{"passthrough", NewChain(NewPassthrough(NewMultiply(5, 0)), NewIdentity()), []float32{1, 2}},
			{"matmul", NewChain(NewMatmul(NewIdentity(), NewTranspose(0, 1))), []float32{5}},
			{"distribute", NewChain(NewParallel(NewIdentity(), NewIdentity()), NewDistribute(NewMultiply(2, 0), NewMultiply(3, 0)), NewGetArg(1)), []float32{3, 6}},
			{"return", NewChain(NewMultiply(2, 0), NewChain(NewReturn()), NewMultiply(100, 0)), []float32{2, 4}},
		}
		for _, c := range cases {
			got := forward(t, s, c.m, Call{}, x)
			if len(got) != len(c.want) {
				t.Errorf("%s: got %v, want %v", c.name, got, c.want)
				continue
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Errorf("%s: got %v, want %v", c.name, got, c.want)
					break
				}
			}
		}
		if !x.Valid() {
			t.Error("a forward pass dropped its caller's input")
		}
		return s.Err()
	})
}

func TestForwardErrorNamesLayerPath(t *testing.T) {
	run(t, func(s *tensor.Scope) error {
		m := runnable()
		if err := InitRandom(s, m, 1); err != nil {
			return err
		}
		defer ReleaseParams(m)
		_, err := Forward(s, m, s.FromFloat32(make([]float32, 6), 2, 3)) // wants [.., 4]
		var fe *ForwardError
		if !errors.As(err, &fe) || strings.Join(fe.Path, ".") != "Linear_1" || !strings.Contains(err.Error(), "Linear(in_features=4): input of shape [2, 3], whose last dim is not 4") {
			t.Errorf("error = %v", err)
		}
		_, err = Forward(s, NewChain(NewResidual(NewLinear(2, 2, true))), x2(s))
		if err == nil || !strings.Contains(err.Error(), "forward Residual.Linear: parameter \"weight\" is not loaded") {
			t.Errorf("unloaded error = %v", err)
		}
		return nil
	})
}

func x2(s *tensor.Scope) *tensor.Tensor { return s.FromFloat32([]float32{1, 2}, 1, 2) }

// snapshot captures the tree print and every parameter's bytes.
func snapshot(s *tensor.Scope, m *Chain) (string, map[string][]byte) {
	params := map[string][]byte{}
	for _, e := range StateDict(m) {
		params[e.Key] = s.Bytes(*e.Value)
	}
	return m.String(), params
}

func lowRank(s *tensor.Scope, in, out, rank int64) *Chain {
	return NewNamed("Lora", Sequence, NewLinear(in, rank, false), NewLinear(rank, out, false))
}

func TestInjectEjectRestoresTreeAndWeights(t *testing.T) {
	run(t, func(s *tensor.Scope) error {
		m := runnable()
		if err := InitRandom(s, m, 42); err != nil {
			return err
		}
		defer ReleaseParams(m)
		x := s.FromFloat32([]float32{0.5, -1, 2, 0.25, 1, 1, 1, 1}, 2, 4)
		base := s.Float32s(mustForward(t, s, m, x))
		tree0, params0 := snapshot(s, m)

		// A LoRA-like adapter on a leaf (a Linear inside the Residual) ...
		target, _ := m.Layer("Residual.Linear_2")
		lora := lowRank(s, 8, 8, 2)
		leafAdapter, err := NewAdapter("LoraAdapter", Sum, target, target, lora)
		if err != nil {
			return err
		}
		if err := InitRandom(s, lora, 7); err != nil {
			return err
		}
		// ... and an adapter on a chain (Chain_1), stacked with another
		// adapter targeting the first one (nested adapters).
		chainTarget, _ := m.Layer("Chain_1")
		scale := NewMultiply(0.5, 0)
		chainAdapter, _ := NewAdapter("HalfAdapter", Sequence, chainTarget, chainTarget, scale)
		outer, _ := NewAdapter("OuterAdapter", Sequence, chainAdapter, chainAdapter, NewMultiply(3, 0))

		for _, a := range []*Chain{leafAdapter, chainAdapter, outer} {
			if err := a.Inject(m); err != nil {
				t.Fatalf("inject %s: %v", a.TypeName(), err)
			}
		}
		if p, _ := m.PathOf(target); p != "Residual.LoraAdapter.Linear" {
			t.Errorf("target path after inject = %q", p)
		}
		if p, _ := m.PathOf(chainTarget); p != "OuterAdapter.HalfAdapter.Chain" {
			t.Errorf("chain target path after inject = %q", p)
		}
		adapted := s.Float32s(mustForward(t, s, m, x))
		if same(adapted, base) {
			t.Error("adapters did not change the output")
		}
		// Eject in reverse order of injection.
		for _, a := range []*Chain{outer, chainAdapter, leafAdapter} {
			if err := a.Eject(); err != nil {
				t.Fatalf("eject %s: %v", a.TypeName(), err)
			}
		}
		tree1, params1 := snapshot(s, m)
		if tree1 != tree0 {
			t.Errorf("tree changed after eject:\n%s\nwas:\n%s", tree1, tree0)
		}
		if len(params1) != len(params0) {
			t.Fatalf("%d params after eject, %d before", len(params1), len(params0))
		}
		for k, b := range params0 {
			if !bytes.Equal(b, params1[k]) {
				t.Errorf("param %s changed", k)
			}
		}
		if after := s.Float32s(mustForward(t, s, m, x)); !same(after, base) {
			t.Error("output differs after eject")
		}
		if ct := chainTarget.(*Chain); ct.Parent() != m {
			t.Error("chain target's parent not restored")
		}
		if err := leafAdapter.Eject(); err == nil {
			t.Error("ejecting twice succeeded")
		}
		ReleaseParams(lora)
		return s.Err()
	})
}

func mustForward(t *testing.T, s *tensor.Scope, m Module, in ...*tensor.Tensor) *tensor.Tensor {
	t.Helper()
	out, err := Forward(s, m, in...)
	if err != nil {
		t.Fatal(err)
	}
	return out[0]
}

func same(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestForwardReleasesIntermediates(t *testing.T) {
	run(t, func(s *tensor.Scope) error {
		m := runnable()
		if err := InitRandom(s, m, 3); err != nil {
			return err
		}
		defer ReleaseParams(m)
		x := s.FromFloat32(make([]float32, 8), 2, 4)
		before := s.Live()
		out := mustForward(t, s, m, x)
		if got := s.Live() - before; got != 1 {
			t.Errorf("forward left %d live tensors in the caller's scope, want 1 (the output)", got)
		}
		s.Release(out)
		return s.Err()
	})
}

func TestLoraAdapterOnLinearAndConv(t *testing.T) {
	run(t, func(s *tensor.Scope) error {
		m := NewChain(NewLinear(4, 8, true), NewSiLU(), NewLinear(8, 8, true),
			NewChain(NewConv2d(2, 4, 3, ConvOptions{Padding: 1})))
		if err := InitRandom(s, m, 9); err != nil {
			return err
		}
		defer ReleaseParams(m)
		x := s.FromFloat32([]float32{1, -1, 0.5, 2, 0, 1, 1, -2}, 2, 4)
		tree0, params0 := snapshot(s, m)

		lin, _ := m.Layer("Linear_1")
		a, b := NewLinearLora("a", 4, 8, 2, 0.5), NewLinearLora("b", 4, 8, 3, 2)
		adapter, err := NewLoraAdapter(lin, a, b)
		if err != nil {
			return err
		}
		for i, l := range []*Chain{a, b} {
			if err := InitRandom(s, l, int64(11+i)); err != nil {
				return err
			}
		}
		defer ReleaseParams(a)
		defer ReleaseParams(b)
		if err := adapter.Inject(m); err != nil {
			return err
		}
		// Keys follow Refiners: the other Linear loses its suffix.
		if got := strings.Join(m.Keys(), ","); got != "LoraAdapter,SiLU,Linear,Chain" {
			t.Errorf("keys after inject: %s", got)
		}
		want := "LoraAdapter.LinearLora_2.Linear_1.weight"
		found := false
		for _, e := range StateDict(m) {
			found = found || e.Key == want
		}
		if !found {
			t.Errorf("no key %s in %v", want, StateDict(m))
		}
		// y = W x + b + 0.5·Ua Da x + 2·Ub Db x, checked against the parts.
		y := mustForward(t, s, adapter, x)
		parts := s.Add(mustForward(t, s, lin, x), s.Add(mustForward(t, s, a, x), mustForward(t, s, b, x)))
		if !s.AllClose(y, parts, 1e-6, 1e-6) {
			t.Error("adapter output is not target + branches")
		}
		SetLoraScale(b, 0)
		if got := LoraScale(b); got != 0 {
			t.Errorf("scale = %v", got)
		}
		if _, err := RemoveLora(adapter, "a"); err != nil {
			return err
		}
		if got := strings.Join(LoraNames(adapter), ","); got != "b" {
			t.Errorf("names = %s", got)
		}
		if err := AddLora(adapter, NewLinearLora("b", 4, 8, 2, 1)); err == nil {
			t.Error("a second LoRA named b was accepted")
		}
		if err := AddLora(adapter, NewLinearLora("c", 5, 8, 2, 1)); err == nil {
			t.Error("a LoRA of the wrong width was accepted")
		}
		// With b at scale 0 and a removed, the output is the base output.
		if got := s.Float32s(mustForward(t, s, adapter, x)); !closeEnough(got, s.Float32s(mustForward(t, s, lin, x))) {
			t.Error("scale 0 still changes the output")
		}
		if err := adapter.Eject(); err != nil {
			return err
		}
		// A Conv2d LoRA with Refiners' default geometry (1x1 down, 3x3 up).
		conv, _ := m.Layer("Chain.Conv2d")
		cl := NewConv2dLora("c", 2, 4, 2, 1, DefaultConv2dLora)
		ca, err := NewLoraAdapter(conv, cl)
		if err != nil {
			return err
		}
		if err := InitRandom(s, cl, 12); err != nil {
			return err
		}
		defer ReleaseParams(cl)
		if err := ca.Inject(m); err != nil {
			return err
		}
		img := s.FromFloat32(make([]float32, 2*5*5), 1, 2, 5, 5)
		if got := mustForward(t, s, ca, img).Shape(); fmt.Sprint(got) != "[1 4 5 5]" {
			t.Errorf("conv LoRA output shape %v", got)
		}
		if err := ca.Eject(); err != nil {
			return err
		}
		tree1, params1 := snapshot(s, m)
		if tree1 != tree0 {
			t.Errorf("tree after eject:\n%s\nwas:\n%s", tree1, tree0)
		}
		for k, v := range params0 {
			if !bytes.Equal(v, params1[k]) {
				t.Errorf("%s changed", k)
			}
		}
		return s.Err()
	})
}

func closeEnough(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if d := a[i] - b[i]; d > 1e-5 || d < -1e-5 {
			return false
		}
	}
	return true
}

func TestBasePathsSeeThroughAdapters(t *testing.T) {
	m := NewChain(NewLinear(4, 8, true), NewSiLU(), NewLinear(8, 8, true))
	first, _ := m.Layer("Linear_1")
	second, _ := m.Layer("Linear_2")
	a, err := NewLoraAdapter(first, NewLinearLora("a", 4, 8, 2, 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Inject(m); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(m.Keys(), ","); got != "LoraAdapter,SiLU,Linear" {
		t.Fatalf("live keys %s", got)
	}
	for path, want := range map[string]Module{"Linear_1": first, "Linear_2": second} {
		if got, err := m.BaseLayer(path); err != nil || got != want {
			t.Errorf("BaseLayer(%s) = %v, %v", path, got, err)
		}
	}
	var paths []string
	m.WalkBase(func(_ Module, p string) bool { paths = append(paths, p); return true })
	if got := strings.Join(paths, ","); got != "Linear_1,SiLU,Linear_2" {
		t.Errorf("base walk %s", got)
	}
	if _, err := m.BaseLayer("LoraAdapter"); err == nil {
		t.Error("an adapter's live key resolved as a base path")
	}
}

func TestProgressReportsEachTopLevelChild(t *testing.T) {
	m := runnable()
	run(t, func(s *tensor.Scope) error {
		if err := InitRandom(s, m, 1); err != nil {
			return err
		}
		defer ReleaseParams(m)
		var got []Progress
		call := Call{Progress: func(p Progress) { got = append(got, p) }}
		if _, err := call.Forward(s, m, s.FromFloat32([]float32{1, 2, 3, 4}, 1, 4)); err != nil {
			return err
		}
		if len(got) != len(m.Children()) {
			t.Fatalf("%d progress reports for %d children: %v", len(got), len(m.Children()), got)
		}
		for i, p := range got {
			if p.Done != i+1 || p.Total != len(m.Children()) || p.Layer != m.Keys()[i] {
				t.Errorf("report %d = %+v", i, p)
			}
		}
		return nil
	})
}
