package core

import (
	"context"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
)

func TestEstimatePeakFollowsThePass(t *testing.T) {
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		m := NewChain(NewLinear(4, 8, true), NewLinear(8, 2, true))
		if err := InitRandom(s, m, 1); err != nil {
			return err
		}
		defer ReleaseParams(m)
		for _, batch := range []int64{3, 6, 1000} {
			x := s.Zeros(tensor.Float32, batch, 4)
			before := s.Live()
			got, err := Call{}.EstimatePeak(s, m, x)
			if err != nil {
				return err
			}
			// The input (4 floats a row), the first output (8) while the
			// second (2) is made: 14 floats a row.
			if want := batch * 14 * 4; got != want {
				t.Errorf("batch %d: estimate %d bytes, want %d", batch, got, want)
			}
			if s.Live() != before || s.Err() != nil {
				t.Errorf("batch %d: the estimate left %d tensors, error %v", batch, s.Live()-before, s.Err())
			}
		}
		// Attention given a mask goes through libtorch's math path, whose
		// score matrix grows with the square of the tokens; without one,
		// the fused kernel's memory grows with the tokens.
		a := NewScaledDotProductAttention(2, false)
		estimate := func(tokens int64, masked bool) int64 {
			x := s.Zeros(tensor.Float32, 1, tokens, 8)
			in := []*tensor.Tensor{x, x, x}
			if masked {
				in = append(in, s.Ones(tensor.Bool, tokens, tokens))
			}
			n, err := Call{}.EstimatePeak(s, a, in...)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		small, large := estimate(100, true), estimate(1000, true)
		if scores := int64(2 * 1000 * 1000 * 4); large < 2*scores || large > 4*scores || large < 50*small {
			t.Errorf("masked attention: %d bytes for 100 tokens, %d for 1000 (scores alone: %d)", small, large, scores)
		}
		small, large = estimate(100, false), estimate(1000, false)
		if large > 20*small {
			t.Errorf("fused attention: %d bytes for 100 tokens, %d for 1000", small, large)
		}
		if _, err := (Call{}).EstimatePeak(s, m, s.Zeros(tensor.Float32)); err == nil || !strings.Contains(err.Error(), "no batch dimension") {
			t.Errorf("a scalar input: %v", err)
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
}
