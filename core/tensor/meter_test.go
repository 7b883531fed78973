package tensor

import (
	"context"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

func TestMeterCountsAsTheRealPassWould(t *testing.T) {
	err := Run(context.Background(), func(s *Scope) error {
		m := NewMeter(3)
		ms := s.Metered(m)
		defer ms.Close()
		// q, k, v [0(3), 2 heads, 5 tokens, 4]: 480 bytes each at batch 3.
		q, k, v := ms.Zeros(Float32, 0, 2, 5, 4), ms.Zeros(Float32, 0, 2, 5, 4), ms.Zeros(Float32, 0, 2, 5, 4)
		if got := m.Peak(); got != 3*480 {
			t.Errorf("after q, k, v: peak %d, want %d", got, 3*480)
		}
		ms.Transpose(q, 2, 3) // a view: no bytes
		if got := m.Peak(); got != 3*480 {
			t.Errorf("a view counted: peak %d", got)
		}
		y := ms.Attention(q, k, v, nil, false, 0)
		// Without a mask, libtorch's fused kernel: q, k, v and the output.
		if got, want := m.Peak(), int64(4*480); got != want {
			t.Errorf("attention without a mask: peak %d, want %d", got, want)
		}
		mask := ms.view("mask", func() (*ts.Tensor, error) { return ts.Ones([]int64{5, 5}, gotch.Bool, gotch.CPU) })
		z := ms.Attention(q, k, v, mask, false, 0)
		// With one, the math path: 2.5 times the [3, 2, 5, 5] scores too.
		if got, want := m.Peak(), int64(4*480+5*3*2*5*5*4/2); got != want {
			t.Errorf("attention with a mask: peak %d, want %d", got, want)
		}
		z.Drop()
		y.Drop()
		q.Drop()
		r := ms.Reshape(k, 0, 5, -1) // an empty reshape with -1: resolved from the other dims
		if ms.Err() != nil || r.Shape()[2] != 8 {
			t.Errorf("reshape: %v %v", r.Shape(), ms.Err())
		}
		if got, want := m.Peak(), int64(4*480+5*3*2*5*5*4/2); got != want {
			t.Errorf("after drops: peak %d, want %d", got, want)
		}
		return ms.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
}
