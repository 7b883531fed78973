package tensor

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func run(t *testing.T, f func(s *Scope) error) {
	t.Helper()
	if err := Run(context.Background(), f); err != nil {
		t.Fatal(err)
	}
}

func TestRoundTripDTypes(t *testing.T) {
	run(t, func(s *Scope) error {
		x := s.FromFloat32([]float32{1, -2, 3.5, 0.25, 8, -0.5}, 2, 3)
		if got := x.Shape(); len(got) != 2 || got[0] != 2 || got[1] != 3 {
			t.Errorf("shape = %v", got)
		}
		for _, d := range []DType{Float32, Float16, BFloat16, Int64, Bool} {
			y := s.ToDType(x, d)
			if y.DType() != d {
				t.Errorf("dtype = %v, want %v", y.DType(), d)
			}
			if n := len(s.Bytes(y)); n != 6*d.Size() {
				t.Errorf("%v: %d bytes, want %d", d, n, 6*d.Size())
			}
		}
		// These values are exact in every float dtype.
		got := s.Float32s(s.ToDType(s.ToDType(x, BFloat16), Float32))
		want := []float32{1, -2, 3.5, 0.25, 8, -0.5}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("bf16 round trip [%d] = %v, want %v", i, got[i], want[i])
			}
		}
		ints := s.Int64s(s.FromInt64([]int64{7, -3}, 2))
		if ints[0] != 7 || ints[1] != -3 {
			t.Errorf("int64 = %v", ints)
		}
		return s.Err()
	})
}

func TestScopeDropsIntermediatesAndKeepsResults(t *testing.T) {
	run(t, func(s *Scope) error {
		x := s.FromFloat32([]float32{1, 2, 3, 4}, 2, 2)
		c := s.Child()
		a := c.Add(x, x)
		b := c.Mul(a, a)
		if c.Live() != 2 {
			t.Errorf("child owns %d live tensors, want 2", c.Live())
		}
		c.Close(b)
		if a.Valid() {
			t.Error("intermediate survived its scope")
		}
		if !b.Valid() || b.owner != s {
			t.Error("kept result did not move to the parent scope")
		}
		// Keeping a tensor the child does not own (its input) changes nothing.
		c2 := s.Child()
		c2.Close(x)
		if !x.Valid() || x.owner != s {
			t.Error("closing a child touched a tensor it does not own")
		}
		if got := s.Float32s(b); got[3] != 64 {
			t.Errorf("b = %v", got)
		}
		return s.Err()
	})
}

func TestStickyErrorNamesOpAndStopsLaterOps(t *testing.T) {
	err := Run(context.Background(), func(s *Scope) error {
		a := s.FromFloat32(make([]float32, 6), 2, 3)
		b := s.FromFloat32(make([]float32, 6), 2, 3)
		bad := s.Matmul(a, b) // [2,3] @ [2,3] is invalid
		if bad != nil {
			t.Error("failed op returned a tensor")
		}
		if later := s.Add(a, b); later != nil {
			t.Error("op after a failure ran")
		}
		return nil
	})
	if err == nil {
		t.Fatal("no error from invalid matmul")
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "matmul: libtorch: ") || strings.Contains(msg, "\n") {
		t.Errorf("error should be one clean line naming the op, got %q", msg)
	}
}

func TestFromBytesChecksLength(t *testing.T) {
	err := Run(context.Background(), func(s *Scope) error {
		s.FromBytes(make([]byte, 10), Float32, 3)
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "10 bytes for shape [3] of float32, want 12") {
		t.Errorf("got %v", err)
	}
}

func TestAttentionWithAndWithoutMask(t *testing.T) {
	run(t, func(s *Scope) error {
		q := s.FromFloat32([]float32{1, 0, 0, 1, 1, 1}, 1, 1, 3, 2)
		plain := s.Attention(q, q, q, nil, false, 0)
		all := s.FromBool([]bool{true, true, true, true, true, true, true, true, true}, 3, 3)
		masked := s.Attention(q, q, q, all, false, 0)
		if !s.AllClose(plain, masked, 0, 1e-6) {
			t.Error("an all-true mask changed the result")
		}
		causal := s.Attention(q, q, q, nil, true, 0)
		if got := s.Float32s(causal)[:2]; got[0] != 1 || got[1] != 0 {
			t.Errorf("causal first row = %v, want [1 0]", got)
		}
		return s.Err()
	})
}

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in   string
		want DType
	}{{"f32", Float32}, {"BF16", BFloat16}, {"float16", Float16}, {"I64", Int64}, {"bool", Bool}} {
		if got, err := ParseDType(c.in); err != nil || got != c.want {
			t.Errorf("ParseDType(%q) = %v, %v", c.in, got, err)
		}
	}
	if _, err := ParseDType("f8"); err == nil {
		t.Error("ParseDType accepted f8")
	}
	if d, err := ParseDevice("cuda:1"); err != nil || d != CUDA(1) {
		t.Errorf("ParseDevice(cuda:1) = %v, %v", d, err)
	}
	if _, err := ParseDevice("tpu"); err == nil {
		t.Error("ParseDevice accepted tpu")
	}
}

func TestScalars(t *testing.T) {
	run(t, func(s *Scope) error {
		for name, x := range map[string]*Tensor{
			"from bytes": s.FromFloat32([]float32{2.5}),
			"zeros":      s.Zeros(Float32),
			"full":       s.Full(2.5, Float32),
			"reshape":    s.Reshape(s.FromFloat32([]float32{2.5}, 1, 1)),
		} {
			if x.Dim() != 0 {
				t.Errorf("%s: shape %v, want a scalar", name, x.Shape())
			}
		}
		if v := s.Item(s.FromFloat32([]float32{2.5})); v != 2.5 {
			t.Errorf("item = %v", v)
		}
		return s.Err()
	})
}

// TestDeviceIsStable guards against gotch's AtDevice reading past its C int:
// repeated reads, with the stack in different states, must all say CPU.
func TestDeviceIsStable(t *testing.T) {
	run(t, func(s *Scope) error {
		x := s.FromFloat32([]float32{1}, 1)
		for i := 0; i < 1000; i++ {
			if d := x.Device(); d != CPU {
				t.Fatalf("read %d: device %v, want cpu", i, d)
			}
			_ = fmt.Sprint(i, x.Shape()) // churn the stack between reads
		}
		return s.Err()
	})
}

// TestHalfConversionsMatchLibtorch checks the pure-Go float16 and bfloat16
// conversions against libtorch's own rounding, on edge cases (ties,
// subnormals, overflow, signed zero) and a million random bit patterns.
func TestHalfConversionsMatchLibtorch(t *testing.T) {
	values := []float32{0, float32(math.Copysign(0, -1)), 1, -1, 0.1, 65504, 65520, 65519.99, 1e6, -1e6, 6e-8, 3e-8, 2.9e-8, 6.1e-5, 1e-40,
		float32(math.Inf(1)), float32(math.Inf(-1)), 1 + 1.0/2048, 1 + 3.0/2048, 1 + 1.0/256, 1 + 3.0/256}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 1 << 20 {
		values = append(values, math.Float32frombits(rng.Uint32()))
	}
	finite := values[:0:0]
	for _, v := range values {
		if v == v { // NaN payloads differ between implementations; both keep NaN
			finite = append(finite, v)
		}
	}
	run(t, func(s *Scope) error {
		x := s.FromFloat32(finite, int64(len(finite)))
		for _, c := range []struct {
			dt     DType
			bits   func(float32) uint16
			decode func(uint16) float32
		}{{Float16, Float16Bits, Float16FromBits}, {BFloat16, BFloat16Bits, BFloat16FromBits}} {
			want := s.Bytes(s.ToDType(x, c.dt))
			back := s.Bytes(s.ToDType(s.ToDType(x, c.dt), Float32))
			bad := 0
			for i, v := range finite {
				w := binary.LittleEndian.Uint16(want[2*i:])
				if got := c.bits(v); got != w && bad < 5 {
					bad++
					t.Errorf("%s(%g): bits %#04x, libtorch %#04x", c.dt, v, got, w)
				}
				wb := math.Float32frombits(binary.LittleEndian.Uint32(back[4*i:]))
				if got := c.decode(w); math.Float32bits(got) != math.Float32bits(wb) && bad < 5 {
					bad++
					t.Errorf("%s bits %#04x: decoded %g, libtorch %g", c.dt, w, got, wb)
				}
			}
		}
		return s.Err()
	})
}
