package tensor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// ChannelsLast changes the memory layout only: same shape, same row-major
// values read back, and the flag set only for 4-d tensors it applies to.
func TestChannelsLast(t *testing.T) {
	run(t, func(s *Scope) error {
		vals := make([]float32, 2*3*4*5)
		for i := range vals {
			vals[i] = float32(i)
		}
		x := s.FromFloat32(vals, 2, 3, 4, 5)
		if x.IsChannelsLast() {
			t.Error("a row-major tensor reports channels-last")
		}
		y := s.ChannelsLast(x)
		if !y.IsChannelsLast() {
			t.Error("ChannelsLast did not lay the tensor out channels-last")
		}
		if got := y.Shape(); len(got) != 4 || got[1] != 3 || got[3] != 5 {
			t.Errorf("shape %v, want [2 3 4 5]", got)
		}
		if got := s.Float32s(y); !equalF32(got, vals) {
			t.Error("values changed")
		}
		w := s.FromFloat32(vals[:3*3*2*2], 3, 3, 2, 2)
		a := s.Float32s(s.Conv2d(x, w, nil, Conv2dOptions{Stride: [2]int64{1, 1}, Dilation: [2]int64{1, 1}, Groups: 1}))
		b := s.Float32s(s.Conv2d(y, s.ChannelsLast(w), nil, Conv2dOptions{Stride: [2]int64{1, 1}, Dilation: [2]int64{1, 1}, Groups: 1}))
		if !equalF32(a, b) { // small integers: exact in any summation order
			t.Errorf("channels-last convolution differs: %v vs %v", a[:4], b[:4])
		}
		c := s.Child()
		c.ChannelsLast(s.FromFloat32(vals[:6], 2, 3))
		if c.Err() == nil || !strings.Contains(c.Err().Error(), "4") {
			t.Errorf("ChannelsLast of a 2-d tensor: err %v", c.Err())
		}
		c.TakeErr()
		c.Close()
		return s.Err()
	})
}

func equalF32(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// FromMapping refuses what lies outside the mapping, unaligned offsets and
// a closed mapping, and never unmaps under a live view.
func TestFromMappingBounds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "blob")
	data := make([]byte, 64)
	for i := range data {
		data[i] = byte(i)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	fd, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := MapFile(fd, 64)
	fd.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cases := []struct {
		name   string
		offset int64
		dtype  DType
		shape  []int64
		want   string
	}{
		{"past the end", 48, Float32, []int64{5}, "outside"},
		{"negative offset", -4, Float32, []int64{1}, "outside"},
		{"unaligned", 2, Float32, []int64{2}, "not aligned"},
		{"negative dim", 0, Float32, []int64{-1}, "negative"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			run(t, func(s *Scope) error {
				k := s.Child()
				if k.FromMapping(m, c.offset, c.dtype, c.shape...); k.Err() == nil || !strings.Contains(k.Err().Error(), c.want) {
					t.Errorf("err %v, want %q", k.Err(), c.want)
				}
				k.TakeErr()
				k.Close()
				return nil
			})
		})
	}
	run(t, func(s *Scope) error {
		v := s.FromMapping(m, 8, Int64, 2, 3)
		if got := s.Int64s(v); len(got) != 6 || got[0] != 0x0f0e0d0c0b0a0908 {
			t.Errorf("values %x", got)
		}
		if !m.SharesMemory(v) || m.Refs() != 2 {
			t.Errorf("shares %v, refs %d; want true, 2", m.SharesMemory(v), m.Refs())
		}
		s.Release(v)
		if m.Refs() != 1 {
			t.Errorf("refs after dropping the view: %d, want 1", m.Refs())
		}
		return s.Err()
	})
}

func TestSupports(t *testing.T) {
	cases := []struct {
		d   DType
		dev Device
		ok  bool
	}{
		{Float32, CPU, true},
		{BFloat16, CPU, true},
		{Float16, CPU, false},
		{Float16, CUDA(0), true},
		{BFloat16, CUDA(1), true},
	}
	for _, c := range cases {
		err := Supports(c.d, c.dev)
		if (err == nil) != c.ok {
			t.Errorf("Supports(%s, %s) = %v, want ok=%v", c.d, c.dev, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "bfloat16") {
			t.Errorf("error %q does not suggest bfloat16", err)
		}
	}
}
