package spec

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

func tinyViT(t *testing.T) *core.Chain {
	s, err := Load("../specs/vit.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Build(map[string]string{"num_layers": "1", "embedding_dim": "8", "num_heads": "2", "image_size": "16", "patch_size": "8"})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// header is what a weights file for m would declare, before edits.
func header(m core.Module) []weights.Info {
	var h []weights.Info
	for _, e := range core.StateDict(m) {
		h = append(h, weights.Info{Key: e.Key, DType: tensor.Float32, Shape: e.Shape})
	}
	return h
}

func TestPlanReportsMismatches(t *testing.T) {
	m := tinyViT(t)
	good := header(m)
	if r := Plan(m, good, ""); !r.OK() {
		t.Fatalf("a matching header fails: %v", r.Errors("w.safetensors"))
	}
	cases := []struct {
		name string
		edit func([]weights.Info) []weights.Info
		want string
	}{
		{"shape", func(h []weights.Info) []weights.Info {
			h[0].Shape = []int64{8, 3, 4, 4}
			return h
		}, `RFN-S051 layer Conv2d (Conv2d): "Conv2d.weight" has shape [8 3 4 4], the spec expects [8 3 8 8]`},
		{"missing", func(h []weights.Info) []weights.Info { return h[1:] }, `RFN-S050 layer Conv2d (Conv2d): no tensor "Conv2d.weight"`},
		{"extra", func(h []weights.Info) []weights.Info {
			return append(h, weights.Info{Key: "Head.weight", DType: tensor.Float32, Shape: []int64{2}})
		}, `RFN-S052 the weights hold "Head.weight"`},
		{"dtype", func(h []weights.Info) []weights.Info {
			h[2].DType = tensor.Int64
			return h
		}, `RFN-S051 layer Residual.Parameter (Parameter): "Residual.Parameter.weight" is not a floating-point tensor`},
		{"deep shape", func(h []weights.Info) []weights.Info {
			for i := range h {
				if h[i].Key == "Chain.Residual_1.Attention.Distribute.Linear_2.weight" {
					h[i].Shape = []int64{8, 9}
				}
			}
			return h
		}, `layer Chain.Residual_1.Attention.Distribute.Linear_2 (Linear): "Chain.Residual_1.Attention.Distribute.Linear_2.weight" has shape [8 9], the spec expects [8 8]`},
	}
	for _, c := range cases {
		h := c.edit(append([]weights.Info(nil), header(m)...))
		errs := Plan(m, h, "").Errors("w.safetensors")
		if len(errs) != 1 || !strings.Contains(errs.Error(), c.want) {
			t.Errorf("%s: got %v, want one error containing %q", c.name, errs, c.want)
		}
	}
}

// FuzzSpec feeds arbitrary bytes to the parser and builder: they must
// return errors, never panic.
func FuzzSpec(f *testing.F) {
	for _, glob := range []string{"testdata/broken/*.yaml", "../specs/*.yaml"} {
		files, _ := filepath.Glob(glob)
		for _, p := range files {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		// A guard against runaway inputs (exponential repeats or imports
		// take minutes), not a speed goal: the largest legal spec takes
		// about 0.5 s alone and several times that on a loaded machine.
		start := time.Now()
		defer func() {
			if d := time.Since(start); d > 15*time.Second {
				t.Fatalf("took %v", d)
			}
		}()
		s, err := Parse("fuzz.yaml", src)
		if err != nil {
			return
		}
		m, err := s.Build(nil)
		if err == nil && m != nil {
			_ = core.Tree(m, 3)
			_ = core.StateDict(m)
		}
	})
}

// TestPlanCallsAnUnsupportedDTypeByItsName: a parameter stored as I32
// (which cannot be loaded) is a dtype problem naming I32, not "missing";
// an unused I32 tensor is unexpected, not ignored.
func TestPlanCallsAnUnsupportedDTypeByItsName(t *testing.T) {
	m := core.NewChain(core.NewLinear(2, 3, true))
	path := filepath.Join(t.TempDir(), "w.safetensors")
	header := `{"Linear.weight":{"dtype":"F32","shape":[3,2],"data_offsets":[0,24]},` +
		`"Linear.bias":{"dtype":"I32","shape":[3],"data_offsets":[24,36]},` +
		`"Extra":{"dtype":"F64","shape":[1],"data_offsets":[36,44]}}`
	for len(header)%8 != 0 {
		header += " "
	}
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(append(b, header...), make([]byte, 44)...)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := weights.ReadFileHeader(path)
	if err != nil {
		t.Fatal(err)
	}
	errs := PlanHeader(m, h, "").Errors(path)
	want := []string{`RFN-S051 layer Linear (Linear): "Linear.bias" has dtype I32, which cannot be loaded`, `RFN-S052 the weights hold "Extra"`}
	if len(errs) != len(want) {
		t.Fatalf("errors: %v; want %q", errs, want)
	}
	for i, w := range want {
		if !strings.Contains(errs[i].Error(), w) {
			t.Errorf("error %d: %v, want %q", i, errs[i], w)
		}
	}
}
