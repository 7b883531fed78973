package tensor

import (
	"fmt"
	"runtime"
	"unsafe"

	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"
)

// FromBytes makes a CPU tensor by copying raw little-endian element bytes
// (the safetensors layout) once into libtorch memory.
func (s *Scope) FromBytes(data []byte, dtype DType, shape ...int64) *Tensor {
	if s.err != nil {
		return nil
	}
	n := Numel(shape)
	for _, d := range shape {
		if d < 0 {
			s.Failf("from bytes: negative dimension in shape %v", shape)
			return nil
		}
	}
	if want := n * int64(dtype.Size()); int64(len(data)) != want {
		s.Failf("from bytes: %d bytes for shape %v of %s, want %d", len(data), shape, dtype, want)
		return nil
	}
	if n == 0 {
		return s.Zeros(dtype, shape...)
	}
	if len(shape) == 0 {
		return s.scalar(s.FromBytes(data, dtype, 1))
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c := lib.AtTensorOfData(unsafe.Pointer(&data[0]), shape, uint(len(shape)), uint(dtype.Size()), int(dtype.kind().CInt()))
	if err := torchErr(); err != nil {
		s.Failf("from bytes: %w", err)
		return nil
	}
	t := s.wrap(ts.FromCtensor(unsafe.Pointer(c)))
	s.meterNew(t, false)
	return t
}

// scalar turns a one-element [1] tensor into a 0-d one. gotch cannot be
// given an empty shape (it reads &dims[0]), so scalars are made this way.
func (s *Scope) scalar(one *Tensor) *Tensor {
	t := s.Squeeze(one, 0)
	s.Release(one)
	return t
}

// FromFloat32 makes a float32 CPU tensor from values in row-major order.
func (s *Scope) FromFloat32(values []float32, shape ...int64) *Tensor {
	if len(values) == 0 {
		return s.FromBytes(nil, Float32, shape...)
	}
	return s.FromBytes(unsafe.Slice((*byte)(unsafe.Pointer(&values[0])), 4*len(values)), Float32, shape...)
}

// FromInt64 makes an int64 CPU tensor from values in row-major order.
func (s *Scope) FromInt64(values []int64, shape ...int64) *Tensor {
	if len(values) == 0 {
		return s.FromBytes(nil, Int64, shape...)
	}
	return s.FromBytes(unsafe.Slice((*byte)(unsafe.Pointer(&values[0])), 8*len(values)), Int64, shape...)
}

// FromBool makes a bool CPU tensor from values in row-major order.
func (s *Scope) FromBool(values []bool, shape ...int64) *Tensor {
	b := make([]byte, len(values))
	for i, v := range values {
		if v {
			b[i] = 1
		}
	}
	return s.FromBytes(b, Bool, shape...)
}

// Zeros makes a zero-filled CPU tensor.
func (s *Scope) Zeros(dtype DType, shape ...int64) *Tensor {
	if len(shape) == 0 {
		return s.scalar(s.Zeros(dtype, 1))
	}
	return s.op("zeros", func() (*ts.Tensor, error) { return ts.Zeros(shape, dtype.kind(), CPU.gotch()) })
}

// Ones makes a one-filled CPU tensor.
func (s *Scope) Ones(dtype DType, shape ...int64) *Tensor {
	if len(shape) == 0 {
		return s.scalar(s.Ones(dtype, 1))
	}
	return s.op("ones", func() (*ts.Tensor, error) { return ts.Ones(shape, dtype.kind(), CPU.gotch()) })
}

// Full makes a CPU tensor filled with v.
func (s *Scope) Full(v float64, dtype DType, shape ...int64) *Tensor {
	if len(shape) == 0 {
		return s.scalar(s.Full(v, dtype, 1))
	}
	return s.op("full", func() (*ts.Tensor, error) {
		sc := ts.FloatScalar(v)
		defer sc.Drop()
		return ts.Full(shape, sc, dtype.kind(), CPU.gotch())
	})
}

// Arange makes the int64 CPU tensor [0, 1, ..., n-1].
func (s *Scope) Arange(n int64) *Tensor {
	return s.op("arange", func() (*ts.Tensor, error) {
		sc := ts.IntScalar(n)
		defer sc.Drop()
		return ts.Arange(sc, Int64.kind(), CPU.gotch())
	})
}

// Linspace makes the CPU tensor of steps values from start to end, evenly
// spaced, computed by libtorch in dtype (torch.linspace: its rounding is
// libtorch's, which depends on the CPU kernel in use).
func (s *Scope) Linspace(start, end float64, steps int64, dtype DType) *Tensor {
	if steps < 0 {
		s.Failf("linspace: negative number of steps %d", steps)
		return nil
	}
	return s.op("linspace", func() (*ts.Tensor, error) {
		a, b := ts.FloatScalar(start), ts.FloatScalar(end)
		defer a.Drop()
		defer b.Drop()
		return ts.Linspace(a, b, steps, dtype.kind(), CPU.gotch())
	})
}

// Bytes copies the tensor's elements, row-major, into Go memory in their own
// dtype's little-endian encoding (the safetensors layout).
func (s *Scope) Bytes(t *Tensor) []byte {
	if s.err != nil {
		return nil
	}
	if !t.Valid() {
		s.Failf("bytes: tensor is nil or dropped")
		return nil
	}
	c := s.Child()
	defer c.Close()
	src := t
	if t.Device() != CPU {
		src = c.To(t, CPU)
	}
	src = c.Contiguous(src)
	if c.err != nil {
		return nil
	}
	n := src.Numel()
	size := src.DType().Size()
	out := make([]byte, n*int64(size))
	if n == 0 {
		return out
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	lib.AtCopyData(src.c(), unsafe.Pointer(&out[0]), uint(n), uint(size))
	if err := torchErr(); err != nil {
		s.Failf("bytes: %w", err)
		return nil
	}
	return out
}

// Float32s copies the values out as float32, converting from other dtypes.
func (s *Scope) Float32s(t *Tensor) []float32 {
	c := s.Child()
	defer c.Close()
	if t.Valid() && t.DType() != Float32 {
		t = c.ToDType(t, Float32)
	}
	b := c.Bytes(t)
	if c.err != nil {
		return nil
	}
	out := make([]float32, len(b)/4)
	if len(out) > 0 {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&out[0])), len(b)), b)
	}
	return out
}

// Int64s copies the values out as int64, converting from other dtypes.
func (s *Scope) Int64s(t *Tensor) []int64 {
	c := s.Child()
	defer c.Close()
	if t.Valid() && t.DType() != Int64 {
		t = c.ToDType(t, Int64)
	}
	b := c.Bytes(t)
	if c.err != nil {
		return nil
	}
	out := make([]int64, len(b)/8)
	if len(out) > 0 {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&out[0])), len(b)), b)
	}
	return out
}

// Item returns the single value of a one-element tensor.
func (s *Scope) Item(t *Tensor) float64 {
	if t.Valid() && t.Numel() != 1 {
		s.Failf("item: tensor has %d elements, want 1", t.Numel())
		return 0
	}
	v := s.Float32s(t)
	if len(v) != 1 {
		return 0
	}
	return float64(v[0])
}

// ShallowCopy returns a new handle on t's storage, owned by s. Layers hand
// out shallow copies of tensors they do not own (weights, context values),
// so that whoever receives a tensor may always drop it.
func (s *Scope) ShallowCopy(t *Tensor) *Tensor {
	return s.view("shallow copy", func() (*ts.Tensor, error) { return t.h.ShallowClone() }, t)
}

// Clone copies t into new storage.
func (s *Scope) Clone(t *Tensor) *Tensor {
	return s.op("clone", func() (*ts.Tensor, error) {
		return t.h.ToDevice(t.Device().gotch(), t.DType().kind(), false, true, false)
	}, t)
}

// CopyInto overwrites dst's elements with src's (shapes must match; dtype is
// converted). It is how adapters restore weights exactly.
func (s *Scope) CopyInto(dst, src *Tensor) {
	if s.err != nil {
		return
	}
	if !dst.Valid() || !src.Valid() {
		s.Failf("copy into: tensor is nil or dropped")
		return
	}
	if fmt.Sprint(dst.Shape()) != fmt.Sprint(src.Shape()) {
		s.Failf("copy into: shape %v into %v", src.Shape(), dst.Shape())
		return
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	lib.AtCopy_(dst.c(), src.c())
	if err := torchErr(); err != nil {
		s.Failf("copy into: %w", err)
	}
}
