// Package conformance checks refiners-go's numbers against the reference
// implementation (PyTorch 2.1.2 and Refiners 0.4.0, or diffusers, PEFT and
// LyCORIS where they are the reference) on the same weights and inputs.
// Golden vectors are safetensors files written by the Python generators in
// this directory; see README.md.
package conformance

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// The error model. A float32 computation differs from the exact result by
// rounding, and how much depends on the order of its sums, which libtorch
// picks by CPU (ATEN_CPU_CAPABILITY): so the same code gives different last
// bits on different machines, and no fixed atol/rtol measured on one
// machine holds on the others. Instead each golden output comes with the
// same reference computation run in float64 (ref64.N). The distance from
// the reference's own float32 output to it, RefErr, is the size of the
// rounding error of a correct float32 implementation of that very function
// on those very inputs. Go passes when its own distance to the float64
// result is within ErrorBound times that (or times Floor, when the
// reference happens to be almost exact).
const (
	// ErrorBound is how many times the reference's own error Go may be
	// off. Two correct float32 implementations that order their sums
	// differently have errors of the same distribution: the ratio of their
	// maxima stays near 1 and, over the measured cases and kernel paths,
	// below 3 (conformance/README.md has the table). A real bug — a scale
	// 1% off, a swapped operand, a missing bias — moves outputs by
	// hundreds to millions of times the rounding error (TestPlantedBugsFail).
	ErrorBound = 10
	// FloorRoundoffs is the floor of the yardstick in units of roundoff of
	// the case's dtype times the largest exact value: an op the reference
	// computes exactly (a reshape, a ReLU) may legitimately be rounded a
	// few times by another implementation.
	FloorRoundoffs = 2
)

// unitRoundoff is half the distance from 1 to the next value of d.
func unitRoundoff(d tensor.DType) float64 {
	switch d {
	case tensor.Float16:
		return 0x1p-11
	case tensor.BFloat16:
		return 0x1p-8
	}
	return 0x1p-24
}

// Reference is one golden output: the reference in the case's dtype
// (output.X) and, for floating outputs, the same computation in float64
// (ref64.X).
type Reference struct {
	Key   string
	Shape []int64
	DType tensor.DType
	Want  []float64 // the reference in DType, widened exactly
	Exact []float64 // the float64 twin; nil for integer outputs
}

// ReadReference reads output key (output.X) and its float64 twin ref64.X.
func ReadReference(f *weights.File, key string) (Reference, error) {
	info, ok := f.Info(key)
	if !ok {
		return Reference{}, fmt.Errorf("%s: no reference output %q", f.Path(), key)
	}
	r := Reference{Key: key, Shape: info.Shape, DType: info.DType}
	if !info.DType.IsFloat() {
		// Compared exactly, with no twin.
		raw, err := f.Bytes(key)
		if err != nil {
			return r, err
		}
		r.Want = make([]float64, 0, tensor.Numel(info.Shape))
		for i := 0; i < len(raw); i += info.DType.Size() {
			if info.DType == tensor.Int64 {
				r.Want = append(r.Want, float64(int64(binary.LittleEndian.Uint64(raw[i:]))))
			} else {
				r.Want = append(r.Want, float64(raw[i]))
			}
		}
		return r, nil
	}
	var err error
	if r.Want, _, err = f.Float64s(key); err != nil {
		return r, err
	}
	twin := "ref64." + strings.TrimPrefix(key, "output.")
	exact, shape, err := f.Float64s(twin)
	if err != nil {
		return r, fmt.Errorf("%w (golden files carry the reference's float64 twin: regenerate with make golden)", err)
	}
	if !slices.Equal(shape, r.Shape) {
		return r, fmt.Errorf("%s: %s has shape %v, %s has %v", f.Path(), twin, shape, key, r.Shape)
	}
	r.Exact = exact
	return r, nil
}

// Diff says how far an output is from its reference.
type Diff struct {
	// The error model (floating outputs).
	Err    float64 // max |got − exact|
	RefErr float64 // max |reference − exact|: the reference's own error
	Floor  float64 // FloorRoundoffs · roundoff · max |exact|
	Ratio  float64 // Err / max(RefErr, Floor); must be ≤ ErrorBound
	// Plain distances to the reference in its dtype, for the record.
	MaxAbs, MaxRel float64
	// Worst is the flat index of the element furthest from the exact
	// result; for integer outputs, the first mismatch.
	Worst                           int
	WorstGot, WorstWant, WorstExact float64
	Mismatches, Total               int // integer outputs: elements that differ
	Integer                         bool
	ShapeGot, Shape                 []int64
	Pass                            bool
}

// Check compares got with the reference under the error model (floating
// outputs) or exactly (integer outputs).
func (r Reference) Check(s *tensor.Scope, got *tensor.Tensor) Diff {
	d := Diff{ShapeGot: got.Shape(), Shape: r.Shape, Integer: r.Exact == nil, Worst: -1}
	if !slices.Equal(d.ShapeGot, d.Shape) {
		return d
	}
	if d.Integer {
		g := s.Int64s(got)
		if s.Err() != nil {
			return d
		}
		d.Total = len(g)
		for i, v := range g {
			if float64(v) != r.Want[i] {
				if d.Mismatches == 0 {
					d.Worst, d.WorstGot, d.WorstWant = i, float64(v), r.Want[i]
				}
				d.Mismatches++
			}
		}
		d.Pass = d.Mismatches == 0
		return d
	}
	g := s.Float32s(got)
	if s.Err() != nil {
		return d
	}
	return r.measure(g)
}

// measure applies the error model to got's values.
func (r Reference) measure(g []float32) Diff {
	d := Diff{ShapeGot: r.Shape, Shape: r.Shape, Total: len(g), Worst: -1}
	scale := 0.0
	for i, e := range r.Exact {
		scale = math.Max(scale, math.Abs(e))
		gv := float64(g[i])
		err := math.Abs(gv - e)
		refErr := math.Abs(r.Want[i] - e)
		if math.IsNaN(e) || math.IsNaN(gv) || math.IsNaN(r.Want[i]) {
			// NaN only where the reference has NaN in both precisions.
			if math.IsNaN(gv) == math.IsNaN(e) && math.IsNaN(r.Want[i]) == math.IsNaN(e) {
				continue
			}
			err = math.Inf(1)
		}
		if err > d.Err || d.Worst < 0 {
			d.Err, d.Worst, d.WorstGot, d.WorstWant, d.WorstExact = err, i, gv, r.Want[i], e
		}
		d.RefErr = math.Max(d.RefErr, refErr)
		abs := math.Abs(gv - r.Want[i])
		d.MaxAbs = math.Max(d.MaxAbs, abs)
		if abs > 0 {
			d.MaxRel = math.Max(d.MaxRel, abs/math.Max(math.Abs(r.Want[i]), 1e-12))
		}
	}
	d.Floor = FloorRoundoffs * unitRoundoff(r.DType) * scale
	yard := math.Max(d.RefErr, d.Floor)
	switch {
	case d.Err == 0:
		d.Ratio = 0
	case yard == 0:
		d.Ratio = math.Inf(1)
	default:
		d.Ratio = d.Err / yard
	}
	d.Pass = d.Ratio <= ErrorBound
	return d
}

// String is a one-line report.
func (d Diff) String() string {
	if !slices.Equal(d.ShapeGot, d.Shape) {
		return fmt.Sprintf("shape %v, want %v", d.ShapeGot, d.Shape)
	}
	if d.Integer {
		if d.Pass {
			return fmt.Sprintf("all %d values equal", d.Total)
		}
		return fmt.Sprintf("%d of %d values differ, first at %s: got %g, want %g",
			d.Mismatches, d.Total, unflatIndex(d.Worst, d.Shape), d.WorstGot, d.WorstWant)
	}
	s := fmt.Sprintf("error %.3g = %.3g× the reference's own (%.3g, floor %.3g; bound %d×); max abs vs reference %.3g",
		d.Err, d.Ratio, d.RefErr, d.Floor, ErrorBound, d.MaxAbs)
	if !d.Pass && d.Worst >= 0 {
		s += fmt.Sprintf("; worst at %s: got %.7g, float64 reference %.7g, reference %.7g",
			unflatIndex(d.Worst, d.Shape), d.WorstGot, d.WorstExact, d.WorstWant)
	}
	return s
}

// ExactDiff compares two tensors for bit-identical values (ejecting an
// adapter, unfusing): a plain count of differing elements.
func ExactDiff(s *tensor.Scope, got, want *tensor.Tensor) Diff {
	d := Diff{ShapeGot: got.Shape(), Shape: want.Shape(), Integer: true, Worst: -1}
	if !slices.Equal(d.ShapeGot, d.Shape) {
		return d
	}
	g, w := s.Float32s(got), s.Float32s(want)
	if s.Err() != nil {
		return d
	}
	d.Total = len(w)
	for i := range w {
		if math.Float32bits(g[i]) != math.Float32bits(w[i]) {
			if d.Mismatches == 0 {
				d.Worst, d.WorstGot, d.WorstWant = i, float64(g[i]), float64(w[i])
			}
			d.Mismatches++
			d.MaxAbs = math.Max(d.MaxAbs, math.Abs(float64(g[i])-float64(w[i])))
		}
	}
	d.Pass = d.Mismatches == 0
	return d
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
