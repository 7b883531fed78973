package tensor_test

// Per-op overhead of the tensor layer against the same libtorch call made
// through raw gotch. These are benchmarks, not tests: they assert nothing
// about speed. Compare the Raw and Scope figures of one run (the machine is
// shared and noisy); cmd/refiners-bench prints the ratios and the RSS checks.
//
//	go test -run='^$' -bench=. -benchtime=20000x ./core/tensor
//
// libtorch's intra-op thread pool follows OMP_NUM_THREADS (the Makefile
// exports 2). Nothing here sets it: ops this small never go parallel, and
// both variants of a pair run under the same setting.
//
// The scope variant uses the pattern layer code uses: every layer call runs
// in its own child scope (core.Chain.call opens a Frame per child and closes
// it keeping only the outputs), so each iteration is Child, op, Close.
// BenchmarkAddScopeRelease shows the other pattern, s.Add then s.Release in
// one long-lived scope, for comparison.

import (
	"context"
	"runtime"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/sugarme/gotch/ts"
)

// pinRaw locks the benchmark goroutine to its thread and turns autograd off
// on it, as tensor.Run does for its workers, so both sides start equal.
func pinRaw(b *testing.B) {
	b.Helper()
	runtime.LockOSThread()
	prev, err := ts.GradSetEnabled(false)
	if err != nil {
		runtime.UnlockOSThread()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_, _ = ts.GradSetEnabled(prev)
		runtime.UnlockOSThread()
	})
}

func rawTensor(b *testing.B, values []float32, shape ...int64) *ts.Tensor {
	b.Helper()
	t, err := ts.OfSlice(values)
	if err != nil {
		b.Fatal(err)
	}
	r, err := t.Reshape(shape, true)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = r.Drop() })
	return r
}

func ramp(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(i%17)/17 - 0.5
	}
	return v
}

// runScope runs body inside one tensor.Run; body owns the timer.
func runScope(b *testing.B, body func(s *tensor.Scope) error) {
	b.Helper()
	if err := tensor.Run(context.Background(), body); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkAddRawGotch(b *testing.B) {
	pinRaw(b)
	x := rawTensor(b, []float32{1, 2, 3, 4}, 4)
	y := rawTensor(b, []float32{5, 6, 7, 8}, 4)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := x.Add(y, false)
		if err != nil {
			b.Fatal(err)
		}
		_ = r.Drop()
	}
}

func BenchmarkAddScope(b *testing.B) {
	runScope(b, func(s *tensor.Scope) error {
		x := s.FromFloat32([]float32{1, 2, 3, 4}, 4)
		y := s.FromFloat32([]float32{5, 6, 7, 8}, 4)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			c := s.Child()
			c.Add(x, y)
			c.Close()
		}
		b.StopTimer()
		return s.Err()
	})
}

func BenchmarkAddScopeRelease(b *testing.B) {
	runScope(b, func(s *tensor.Scope) error {
		x := s.FromFloat32([]float32{1, 2, 3, 4}, 4)
		y := s.FromFloat32([]float32{5, 6, 7, 8}, 4)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			s.Release(s.Add(x, y))
		}
		b.StopTimer()
		return s.Err()
	})
}

func BenchmarkLinearRawGotch(b *testing.B) {
	pinRaw(b)
	x := rawTensor(b, ramp(8*64), 8, 64)
	w := rawTensor(b, ramp(64*64), 64, 64)
	bias := rawTensor(b, ramp(64), 64)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := ts.Linear(x, w, bias)
		if err != nil {
			b.Fatal(err)
		}
		_ = r.Drop()
	}
}

func BenchmarkLinearScope(b *testing.B) {
	runScope(b, func(s *tensor.Scope) error {
		x := s.FromFloat32(ramp(8*64), 8, 64)
		w := s.FromFloat32(ramp(64*64), 64, 64)
		bias := s.FromFloat32(ramp(64), 64)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			c := s.Child()
			c.Linear(x, w, bias)
			c.Close()
		}
		b.StopTimer()
		return s.Err()
	})
}
