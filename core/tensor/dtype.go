package tensor

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/sugarme/gotch"
)

// DType is an element type. The set is deliberately small: the types model
// weights and activations use, plus integer indices and boolean masks.
type DType int

const (
	Float32 DType = iota
	Float16
	BFloat16
	Int64
	Bool
)

var dtypeNames = [...]string{"float32", "float16", "bfloat16", "int64", "bool"}

func (d DType) String() string {
	if d < 0 || int(d) >= len(dtypeNames) {
		return "dtype(" + strconv.Itoa(int(d)) + ")"
	}
	return dtypeNames[d]
}

// Size is the number of bytes of one element.
func (d DType) Size() int {
	switch d {
	case Float32:
		return 4
	case Float16, BFloat16:
		return 2
	case Int64:
		return 8
	case Bool:
		return 1
	}
	return 0
}

// IsFloat reports whether d is a floating-point type.
func (d DType) IsFloat() bool { return d == Float32 || d == Float16 || d == BFloat16 }

// ParseDType accepts the names DType.String returns and the usual short
// forms (f32, fp16, bf16, i64) plus safetensors' spellings (F32, BF16, ...).
func ParseDType(s string) (DType, error) {
	switch strings.ToLower(s) {
	case "float32", "f32", "fp32", "float":
		return Float32, nil
	case "float16", "f16", "fp16", "half":
		return Float16, nil
	case "bfloat16", "bf16":
		return BFloat16, nil
	case "int64", "i64", "long":
		return Int64, nil
	case "bool":
		return Bool, nil
	}
	return 0, fmt.Errorf("unknown dtype %q (want float32, float16, bfloat16, int64 or bool)", s)
}

func (d DType) kind() gotch.DType {
	switch d {
	case Float16:
		return gotch.Half
	case BFloat16:
		return gotch.BFloat16
	case Int64:
		return gotch.Int64
	case Bool:
		return gotch.Bool
	}
	return gotch.Float
}

func fromKind(k gotch.DType) (DType, error) {
	switch k {
	case gotch.Float:
		return Float32, nil
	case gotch.Half:
		return Float16, nil
	case gotch.BFloat16:
		return BFloat16, nil
	case gotch.Int64:
		return Int64, nil
	case gotch.Bool:
		return Bool, nil
	}
	return 0, fmt.Errorf("unsupported libtorch dtype %v", k)
}

// Device says where tensor memory lives.
type Device struct {
	cuda  bool
	index int
}

// CPU is the host device.
var CPU = Device{}

// CUDA names GPU i.
func CUDA(i int) Device { return Device{cuda: true, index: i} }

// IsCUDA reports whether d is a GPU.
func (d Device) IsCUDA() bool { return d.cuda }

func (d Device) String() string {
	if d.cuda {
		return "cuda:" + strconv.Itoa(d.index)
	}
	return "cpu"
}

// ParseDevice accepts "cpu", "cuda" and "cuda:N".
func ParseDevice(s string) (Device, error) {
	switch {
	case s == "cpu" || s == "":
		return CPU, nil
	case s == "cuda":
		return CUDA(0), nil
	case strings.HasPrefix(s, "cuda:"):
		i, err := strconv.Atoi(s[len("cuda:"):])
		if err != nil || i < 0 {
			return Device{}, fmt.Errorf("bad device %q: want cuda:N with N >= 0", s)
		}
		return CUDA(i), nil
	}
	return Device{}, fmt.Errorf("unknown device %q (want cpu, cuda or cuda:N)", s)
}

func (d Device) gotch() gotch.Device {
	if d.cuda {
		return gotch.CudaBuilder(uint(d.index))
	}
	return gotch.CPU
}

// BFloat16Bits rounds f to bfloat16 (to nearest, ties to even, as torch
// does) and returns its bits.
func BFloat16Bits(f float32) uint16 {
	if f != f {
		return 0x7fc0
	}
	b := math.Float32bits(f)
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

// BFloat16FromBits is the float32 value of bfloat16 bits (exact).
func BFloat16FromBits(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// Float16Bits rounds f to IEEE 754 half precision (to nearest, ties to
// even) and returns its bits.
func Float16Bits(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23&0xff) - 127 + 15
	mant := b & 0x7fffff
	round := func(r, rem, half uint32) uint32 {
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return r
	}
	switch {
	case f != f:
		return 0x7e00
	case exp >= 0x1f:
		return sign | 0x7c00
	case exp <= 0: // subnormal (or zero)
		if exp < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint32(14 - exp)
		return sign | uint16(round(mant>>shift, mant&(1<<shift-1), 1<<(shift-1)))
	}
	// A carry out of the mantissa correctly bumps the exponent (to Inf at
	// the top).
	return sign | uint16(round(uint32(exp)<<10|mant>>13, mant&0x1fff, 0x1000))
}

// Float16FromBits is the float32 value of half-precision bits (exact).
func Float16FromBits(h uint16) float32 {
	sign := float32(1)
	if h&0x8000 != 0 {
		sign = -1
	}
	exp, frac := int(h>>10)&0x1f, float64(h&0x3ff)
	switch exp {
	case 0:
		return sign * float32(math.Ldexp(frac, -24))
	case 0x1f:
		if frac == 0 {
			return sign * float32(math.Inf(1))
		}
		return float32(math.NaN())
	}
	return sign * float32(math.Ldexp(1+frac/1024, exp-15))
}

// Supports reports whether libtorch 2.1 has the kernels models need
// (convolutions, norms, matmuls, attention) for dtype d on device dev: it
// has none in float16 on the CPU (bfloat16 there, or float16 on a GPU).
func Supports(d DType, dev Device) error {
	if d == Float16 && !dev.IsCUDA() {
		return fmt.Errorf("float16 has no CPU kernels in libtorch 2.1 (convolution, norms, matmul): use bfloat16 on the CPU, or float16 on a GPU")
	}
	return nil
}
