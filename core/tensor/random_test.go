package tensor

import (
	"context"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
)

// Bit-exactness against torch.randn is checked by conformance (TestSolvers,
// per CPU kernel); these tests check what holds whatever the kernel.

func draw(t *testing.T, seed uint64, dtype DType, shape ...int64) []byte {
	t.Helper()
	var out []byte
	run(t, func(s *Scope) error {
		x := s.Randn(seed, dtype, shape...)
		if s.Err() == nil && (!slices.Equal(x.Shape(), shape) || x.DType() != dtype || x.Device() != CPU) {
			t.Errorf("Randn(%d, %s, %v) made %s", seed, dtype, shape, x)
		}
		out = s.Bytes(x)
		return s.Err()
	})
	return out
}

func TestRandnSeeds(t *testing.T) {
	for _, shape := range [][]int64{{1}, {7}, {16}, {17}, {4, 8, 8}} {
		a, b := draw(t, 42, Float32, shape...), draw(t, 42, Float32, shape...)
		if string(a) != string(b) {
			t.Errorf("%v: seed 42 drew different values twice", shape)
		}
		if c := draw(t, 43, Float32, shape...); string(a) == string(c) {
			t.Errorf("%v: seeds 42 and 43 drew the same values", shape)
		}
	}
	// A draw does not depend on earlier draws: each one reseeds.
	short := draw(t, 5, Float32, 3)
	draw(t, 9, Float32, 100)
	if again := draw(t, 5, Float32, 3); string(short) != string(again) {
		t.Error("a draw changed after an unrelated one")
	}
}

// Many samples look standard normal: mean near 0, variance near 1.
func TestRandnMoments(t *testing.T) {
	run(t, func(s *Scope) error {
		v := s.Float32s(s.Randn(7, Float32, 100000))
		mean, sq := 0.0, 0.0
		for _, x := range v {
			mean += float64(x)
			sq += float64(x) * float64(x)
		}
		mean /= float64(len(v))
		variance := sq/float64(len(v)) - mean*mean
		if math.Abs(mean) > 0.02 || math.Abs(variance-1) > 0.02 {
			t.Errorf("mean %g, variance %g over %d samples", mean, variance, len(v))
		}
		return s.Err()
	})
}

func TestRandnShapesAndDTypes(t *testing.T) {
	run(t, func(s *Scope) error {
		if x := s.Randn(1, Float32); s.Err() == nil && x.Dim() != 0 {
			t.Errorf("no shape: %s, want a 0-d tensor", x)
		}
		if x := s.Randn(1, Float32, 2, 0, 3); s.Err() == nil && x.Numel() != 0 {
			t.Errorf("zero-size: %s", x)
		}
		for _, dt := range []DType{Float16, BFloat16} {
			if x := s.Randn(1, dt, 40); s.Err() == nil && x.DType() != dt {
				t.Errorf("%s: got %s", dt, x)
			}
		}
		return s.Err()
	})
	for _, tc := range []struct {
		dtype DType
		shape []int64
		want  string
	}{
		{Int64, []int64{3}, "randn: dtype int64 is not a floating type"},
		{Bool, []int64{3}, "randn: dtype bool is not a floating type"},
		{Float32, []int64{2, -1}, "randn: negative dimension in shape [2 -1]"},
	} {
		err := Run(context.Background(), func(s *Scope) error {
			if s.Randn(1, tc.dtype, tc.shape...) != nil {
				t.Errorf("%s: got a tensor", tc.want)
			}
			return s.Err()
		})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want %q", err, tc.want)
		}
	}
}

// Concurrent jobs drawing with their own seeds get what they get alone:
// the shared generator is seeded and drawn under one lock.
func TestRandnConcurrent(t *testing.T) {
	const jobs = 8
	want := make([][]byte, jobs)
	for i := range jobs {
		want[i] = draw(t, uint64(100+i), Float32, 257)
	}
	var wg sync.WaitGroup
	for i := range jobs {
		wg.Go(func() {
			for range 20 {
				var got []byte
				err := Run(context.Background(), func(s *Scope) error {
					got = s.Bytes(s.Randn(uint64(100+i), Float32, 257))
					return s.Err()
				})
				if err != nil {
					t.Error(err)
					return
				}
				if string(got) != string(want[i]) {
					t.Errorf("job %d drew other values concurrently", i)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestDrawSequence: Draw seeds once and draws in order (a later tensor
// depends on the earlier ones, as in a PyTorch constructor), is
// reproducible, gives Randn's values for a first standard-normal fill, and
// refuses bad parameters without drawing.
func TestDrawSequence(t *testing.T) {
	fills := []Fill{{Shape: []int64{4, 5}, Kind: FillUniform, A: -0.5, B: 0.5}, {Shape: []int64{3}, Kind: FillConstant, A: 1}, {Shape: []int64{40}, Kind: FillNormal, A: 0, B: 1}}
	var first, again, alone, randn []byte
	run(t, func(s *Scope) error {
		ts := s.Draw(3, Float32, fills)
		for _, x := range ts {
			first = append(first, s.Bytes(x)...)
		}
		u := s.Float32s(ts[0])
		for _, v := range u {
			if v < -0.5 || v >= 0.5 {
				t.Errorf("uniform value %g outside [-0.5, 0.5)", v)
			}
		}
		if ones := s.Float32s(ts[1]); !slices.Equal(ones, []float32{1, 1, 1}) {
			t.Errorf("constant fill: %v", ones)
		}
		for _, x := range s.Draw(3, Float32, fills) {
			again = append(again, s.Bytes(x)...)
		}
		alone = s.Bytes(s.Draw(3, Float32, fills[2:])[0])
		randn = s.Bytes(s.Randn(3, Float32, 40))
		c := s.Child()
		if c.Draw(3, Float32, []Fill{{Shape: []int64{2}, Kind: FillUniform, A: 1, B: 0}}) != nil || c.TakeErr() == nil || !strings.Contains(c.TakeErr().Error(), "bad parameters") {
			t.Error("a uniform fill with A > B was not refused")
		}
		c.Close()
		return s.Err()
	})
	if string(first) != string(again) {
		t.Error("the same seed drew different values")
	}
	if tail := first[len(first)-len(alone):]; string(tail) == string(alone) {
		t.Error("the normal fill after a uniform one drew what it draws first: Draw reseeded between tensors")
	}
	if string(alone) != string(randn) {
		t.Error("a first normal(0, 1) fill differs from Randn with the same seed")
	}
}
