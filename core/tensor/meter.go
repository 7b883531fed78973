package tensor

import (
	"math"
	"math/bits"
)

// A Meter estimates the activation memory of a pass without spending it.
// The pass runs in a metered scope on inputs whose batch dimension (dim 0)
// has been cut to 0, so every op costs next to nothing, and the meter
// counts each tensor made in the scope as if its leading 0 were the real
// batch size: live bytes go up when a tensor is made and down when it is
// dropped, exactly as the real pass would allocate and free, because the
// same code with the same scopes runs. Views (transpose, permute, narrow,
// a shallow copy, ...) share their input's storage and count nothing;
// reshapes count as copies. Temporaries libtorch makes inside one op are
// counted where they are large: attention's score matrix.
//
// It is an estimate: allocator overhead and the small temporaries inside
// ops are not counted, and a tensor whose first dimension is really 0 is
// taken for a batch.
type Meter struct {
	batch      int64
	live, peak int64
}

// NewMeter meters a pass for the given batch size.
func NewMeter(batch int64) *Meter { return &Meter{batch: batch} }

// Peak is the most bytes that were live at once.
func (m *Meter) Peak() int64 { return m.peak }

// Add counts bytes as live (a negative n frees them).
func (m *Meter) Add(n int64) {
	m.live = satAdd(m.live, n)
	m.peak = max(m.peak, m.live)
}

// transient counts n bytes live for the duration of one op.
func (m *Meter) transient(n int64) { m.peak = max(m.peak, satAdd(m.live, n)) }

// Bytes is the size a tensor of this shape and dtype has at the metered
// batch size (dim 0 of 0 read as the batch).
func (m *Meter) Bytes(shape []int64, dt DType) int64 {
	n := int64(dt.Size())
	for i, d := range shape {
		if i == 0 && d == 0 {
			d = m.batch
		}
		n = satMul(n, d)
	}
	return n
}

func satAdd(a, b int64) int64 {
	s := a + b
	if b > 0 && s < a {
		return math.MaxInt64
	}
	return s
}

func satMul(a, b int64) int64 {
	if a < 0 || b < 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi != 0 || lo > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(lo)
}

// Metered opens a child scope whose tensors (and its children's) m counts.
func (s *Scope) Metered(m *Meter) *Scope {
	c := s.Child()
	c.meter = m
	return c
}

// Metering reports whether this scope's tensors are being metered (a dry
// run, whose tensors hold no data).
func (s *Scope) Metering() bool { return s.meter != nil }

// meterNew counts a tensor just made in s.
func (s *Scope) meterNew(t *Tensor, view bool) {
	if s.meter == nil || view {
		return
	}
	t.meter = s.meter
	t.bytes = s.meter.Bytes(t.Shape(), t.DType())
	s.meter.Add(t.bytes)
}

// meterDrop uncounts a dropped tensor.
func (t *Tensor) meterDrop() {
	if t.meter != nil {
		t.meter.Add(-t.bytes)
		t.meter = nil
	}
}

// resolveEmptyReshape fills in a -1 in a metered reshape of an empty
// tensor, which libtorch refuses as ambiguous: the -1 stands for what the
// non-zero dims leave, as it would with the real batch.
func resolveEmptyReshape(from, to []int64) []int64 {
	known := int64(1)
	for _, d := range from {
		if d != 0 {
			known *= d
		}
	}
	free := -1
	given := int64(1)
	for i, d := range to {
		switch {
		case d == -1 && free < 0:
			free = i
		case d == -1:
			return to
		case d != 0:
			given *= d
		}
	}
	if free < 0 || given == 0 || known%given != 0 {
		return to
	}
	out := append([]int64(nil), to...)
	out[free] = known / given
	return out
}
