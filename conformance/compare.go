// Package conformance checks refiners-go's numbers against the reference
// implementation (PyTorch 2.1.2 and Refiners 0.4.0) on the same weights and
// inputs. Golden vectors are safetensors files written by the Python
// generators in this directory; see README.md.
package conformance

import (
	"fmt"
	"math"
	"slices"

	"github.com/refiners-go/refiners/core/tensor"
)

// Diff summarises how far an output is from its reference.
type Diff struct {
	MaxAbs, MaxRel float64
	// Worst is the flat index of the element furthest outside tolerance
	// (or with the largest absolute error when all pass).
	Worst           int
	WorstGot        float64
	WorstWant       float64
	Failing, Total  int
	ShapeGot, Shape []int64
	Pass            bool
}

// Compare checks got against want elementwise with torch.allclose's rule,
// |got - want| <= atol + rtol·|want|, in float64.
func Compare(s *tensor.Scope, got, want *tensor.Tensor, atol, rtol float64) Diff {
	d := Diff{ShapeGot: got.Shape(), Shape: want.Shape()}
	if !slices.Equal(d.ShapeGot, d.Shape) {
		return d
	}
	g, w := s.Float32s(got), s.Float32s(want)
	if s.Err() != nil {
		return d
	}
	d.Total = len(w)
	worstExcess := math.Inf(-1)
	for i := range w {
		gv, wv := float64(g[i]), float64(w[i])
		abs := math.Abs(gv - wv)
		if math.IsNaN(gv) != math.IsNaN(wv) {
			abs = math.Inf(1)
		} else if math.IsNaN(gv) {
			abs = 0
		}
		rel := abs / math.Max(math.Abs(wv), 1e-12)
		if abs > d.MaxAbs {
			d.MaxAbs = abs
		}
		if rel > d.MaxRel && abs > 0 {
			d.MaxRel = rel
		}
		excess := abs - (atol + rtol*math.Abs(wv))
		if excess > 0 {
			d.Failing++
		}
		if excess > worstExcess {
			worstExcess, d.Worst, d.WorstGot, d.WorstWant = excess, i, gv, wv
		}
	}
	d.Pass = d.Failing == 0
	return d
}

// String is a one-line report.
func (d Diff) String() string {
	if !slices.Equal(d.ShapeGot, d.Shape) {
		return fmt.Sprintf("shape %v, want %v", d.ShapeGot, d.Shape)
	}
	s := fmt.Sprintf("max abs %.3g, max rel %.3g", d.MaxAbs, d.MaxRel)
	if !d.Pass {
		s += fmt.Sprintf("; %d of %d elements out of tolerance, worst at %s: got %.6g, want %.6g",
			d.Failing, d.Total, unflatIndex(d.Worst, d.Shape), d.WorstGot, d.WorstWant)
	}
	return s
}

// unflatIndex turns a flat row-major index into [i, j, ...].
func unflatIndex(i int, shape []int64) string {
	idx := make([]int64, len(shape))
	for k := len(shape) - 1; k >= 0; k-- {
		if shape[k] > 0 {
			idx[k] = int64(i) % shape[k]
			i /= int(shape[k])
		}
	}
	return fmt.Sprint(idx)
}
