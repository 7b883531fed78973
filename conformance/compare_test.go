package conformance

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// TestErrorModel checks the pass rule on hand-made references: Go's error
// against the float64 twin, in units of the reference's own error (or of
// the floor where the reference is exact).
func TestErrorModel(t *testing.T) {
	exact := []float64{1, -2, 0.5, 4}
	// The reference is off by 1e-6 on one element: its own error.
	want := []float64{1, -2 + 1e-6, 0.5, 4}
	floor := FloorRoundoffs * 0x1p-24 * 4.0
	nan := math.NaN()
	cases := []struct {
		name      string
		want      []float64
		got       []float32
		ratio     float64
		pass      bool
		worstElem int
	}{
		{"exact", want, []float32{1, -2, 0.5, 4}, 0, true, 0},
		{"same error as the reference", want, []float32{1, -2, 0.5, float32(4 - 1e-6)}, float64(float32(4-1e-6)-4) / -1e-6, true, 3},
		{"3x the reference's error", want, []float32{float32(1 + 3e-6), -2, 0.5, 4}, float64(float32(1+3e-6)-1) / 1e-6, true, 0},
		{"20x the reference's error", want, []float32{1, -2, float32(0.5 + 2e-5), 4}, float64(float32(0.5+2e-5)-0.5) / 1e-6, false, 2},
		{"a 1% scale", want, []float32{1.01, -2.02, 0.505, 4.04}, 0.04 / 1e-6, false, 3},
		// An exact reference: the yardstick is the floor, a few roundings of the largest value.
		{"within the floor", exact, []float32{1, -2, 0.5, float32(4 + floor)}, float64(float32(4+floor)-4) / floor, true, 3},
		{"past 10 floors", exact, []float32{1, -2, 0.5, float32(4 + 12*floor)}, float64(float32(4+12*floor)-4) / floor, false, 3},
		{"NaN where the reference has none", want, []float32{1, float32(nan), 0.5, 4}, math.Inf(1), false, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := Reference{Key: "output.0", Shape: []int64{4}, DType: tensor.Float32, Want: c.want, Exact: exact}
			d := r.measure(c.got)
			if d.Pass != c.pass || math.Abs(d.Ratio-c.ratio) > 1e-6*math.Max(1, c.ratio) || d.Worst != c.worstElem {
				t.Errorf("ratio %g, pass %v, worst %d; want %g, %v, %d (%s)", d.Ratio, d.Pass, d.Worst, c.ratio, c.pass, c.worstElem, d)
			}
		})
	}
	t.Run("NaN in the reference and its twin", func(t *testing.T) {
		r := Reference{Shape: []int64{2}, DType: tensor.Float32, Want: []float64{nan, 1}, Exact: []float64{nan, 1}}
		if d := r.measure([]float32{float32(nan), 1}); !d.Pass || d.Ratio != 0 {
			t.Errorf("%s", d)
		}
	})
}

// TestIntegerReference reads an int64 output (no float64 twin) and compares
// it exactly.
func TestIntegerReference(t *testing.T) {
	raw := make([]byte, 0, 24)
	for _, v := range []int64{3, -1, 49407} {
		raw = binary.LittleEndian.AppendUint64(raw, uint64(v))
	}
	var buf bytes.Buffer
	if err := weights.Encode(&buf, map[string]weights.Raw{"output.ids": {DType: tensor.Int64, Shape: []int64{3}, Data: raw}}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := weights.Parse("ids", buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	ref, err := ReadReference(f, "output.ids")
	if err != nil {
		t.Fatal(err)
	}
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if d := ref.Check(s, s.FromInt64([]int64{3, -1, 49407}, 3)); !d.Pass || !d.Integer {
			t.Errorf("equal ids: %s", d)
		}
		if d := ref.Check(s, s.FromInt64([]int64{3, 0, 49407}, 3)); d.Pass || d.Mismatches != 1 || d.Worst != 1 {
			t.Errorf("one id off: %s", d)
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
}
