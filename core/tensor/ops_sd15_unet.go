package tensor

import "github.com/sugarme/gotch/ts"

// Ops the Stable Diffusion 1.5 U-Net needs beyond ops.go.

// DivScalar returns t / k. It is not Scale(t, 1/k): dividing rounds once,
// as torch's `t / k` does, where multiplying by a rounded reciprocal may
// differ in the last bit.
func (s *Scope) DivScalar(t *Tensor, k float64) *Tensor {
	return s.op("div scalar", func() (*ts.Tensor, error) {
		sc := ts.FloatScalar(k)
		defer sc.Drop()
		return t.h.DivScalar(sc, false)
	}, t)
}
