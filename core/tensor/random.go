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
