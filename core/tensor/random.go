package tensor

// #include <stdint.h>
// // Defined by gotch's C API (libtch/torch_api.cpp), which Go exposes only
// // through its Must-style wrappers: torch::manual_seed on the default
// // generators.
// void at_manual_seed(int64_t seed);
import "C"

import (
	"sync"

	"github.com/sugarme/gotch/ts"
)

// randMu serialises every use of libtorch's default CPU generator, the only
// generator gotch's C API reaches (it has no torch::Generator objects): a
// seed and the draw it seeds happen under it, so concurrent jobs never see
// each other's state. Nothing else in this package draws random numbers.
var randMu sync.Mutex

// Randn returns a CPU tensor of standard normal samples, the same values,
// bit for bit, as torch.manual_seed(seed); torch.randn(shape, dtype=dtype)
// or torch.randn(shape, dtype=dtype,
// generator=torch.Generator().manual_seed(seed)) on the CPU in PyTorch
// 2.1.2: libtorch's own mt19937 generator and normal kernels draw them.
//
// Like PyTorch's, the values depend on the libtorch CPU kernel in use for
// tensors of 16 elements or more (ATEN_CPU_CAPABILITY: the AVX2 kernel
// draws differently from the default one); the same seed, shape, dtype and
// capability always give the same tensor. CUDA generators draw different
// numbers, so noise meant to match the reference is drawn here and moved.
func (s *Scope) Randn(seed uint64, dtype DType, shape ...int64) *Tensor {
	if s.err != nil {
		return nil
	}
	if !dtype.IsFloat() {
		s.Failf("randn: dtype %s is not a floating type", dtype)
		return nil
	}
	for _, d := range shape {
		if d < 0 {
			s.Failf("randn: negative dimension in shape %v", shape)
			return nil
		}
	}
	if len(shape) == 0 {
		return s.scalar(s.Randn(seed, dtype, 1))
	}
	randMu.Lock()
	defer randMu.Unlock()
	return s.op("randn", func() (*ts.Tensor, error) {
		C.at_manual_seed(C.int64_t(int64(seed)))
		return ts.Randn(shape, dtype.kind(), CPU.gotch())
	})
}

// FillKind is how Draw fills a tensor.
type FillKind int

const (
	// FillUniform draws uniformly in [A, B): torch's uniform_(A, B).
	FillUniform FillKind = iota
	// FillNormal draws normal samples of mean A and standard deviation B:
	// torch's normal_(A, B) (torch.randn for 0, 1).
	FillNormal
	// FillConstant sets every element to A (torch's fill_, ones, zeros),
	// drawing nothing.
	FillConstant
)

// Fill is one tensor Draw makes.
type Fill struct {
	Shape []int64
	Kind  FillKind
	A, B  float64
}

// Draw makes CPU float32 tensors in order from libtorch's CPU generator
// seeded once: the values, bit for bit, of torch.manual_seed(seed)
// followed by the same uniform_, normal_ and fill_ calls in the same order,
// as a PyTorch module's constructor makes its parameters (with the same
// dependence on the CPU kernel as Randn). The tensors are then cast to
// dtype.
func (s *Scope) Draw(seed uint64, dtype DType, fills []Fill) []*Tensor {
	if s.err != nil {
		return nil
	}
	if !dtype.IsFloat() {
		s.Failf("draw: dtype %s is not a floating type", dtype)
		return nil
	}
	for _, f := range fills {
		for _, d := range f.Shape {
			if d < 0 {
				s.Failf("draw: negative dimension in shape %v", f.Shape)
				return nil
			}
		}
		if f.Kind == FillUniform && !(f.A <= f.B) || f.Kind == FillNormal && !(f.B >= 0) {
			s.Failf("draw: bad parameters %g, %g for fill kind %d", f.A, f.B, f.Kind)
			return nil
		}
	}
	randMu.Lock()
	defer randMu.Unlock()
	C.at_manual_seed(C.int64_t(int64(seed)))
	out := make([]*Tensor, len(fills))
	for i, f := range fills {
		out[i] = s.op("draw", func() (*ts.Tensor, error) {
			t, err := ts.Empty(f.Shape, Float32.kind(), CPU.gotch())
			if err != nil {
				return nil, err
			}
			switch f.Kind {
			case FillUniform:
				err = t.Uniform_(f.A, f.B)
			case FillNormal:
				err = t.Normal_(f.A, f.B)
			default:
				sc := ts.FloatScalar(f.A)
				err = t.Fill_(sc)
				sc.Drop()
			}
			if err != nil {
				t.MustDrop()
				return nil, err
			}
			return t, nil
		})
		if dtype != Float32 {
			out[i] = s.ToDType(out[i], dtype)
		}
	}
	if s.err != nil {
		return nil
	}
	return out
}
