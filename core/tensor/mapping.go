package tensor

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"github.com/sugarme/gotch/rgext"
	"github.com/sugarme/gotch/ts"
)

// Mapping is a file mapped read-only and private into memory, whose bytes
// tensors can view without a copy (FromMapping). It is reference-counted
// in libtorch's own terms: the Mapping holds one reference until Close,
// and every tensor storage viewing it holds one until libtorch frees that
// storage, whichever handle (a view, a reshape, a shallow copy) goes last.
// The file is unmapped only when the last reference goes, so no tensor can
// outlive the memory it reads. The pages are never writable: an op that
// tried to write into a viewed tensor would fault rather than change the
// file or the page cache, which is why everything that changes weights
// makes new tensors (adapters keep the originals and swap).
type Mapping struct {
	mu   sync.RWMutex
	m    rgext.Mapping
	data []byte // nil once closed
}

// MapFile maps the first size bytes of f (which may be closed afterwards).
func MapFile(f *os.File, size int64) (*Mapping, error) {
	if size <= 0 || int64(int(size)) != size {
		return nil, fmt.Errorf("map %s: cannot map %d bytes", f.Name(), size)
	}
	m, base, err := rgext.Map(int(f.Fd()), int(size))
	runtime.KeepAlive(f)
	if err != nil {
		return nil, fmt.Errorf("map %s: mmap: %w", f.Name(), err)
	}
	return &Mapping{m: m, data: unsafe.Slice((*byte)(base), int(size))}, nil
}

// Bytes is the mapped memory (read-only: writing to it faults). It must
// not be used after Close; nil once closed.
func (m *Mapping) Bytes() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.data
}

// Close gives up the Mapping's own reference. The memory stays mapped
// while tensors view it. Closing again does nothing.
func (m *Mapping) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.data == nil {
		return
	}
	m.data = nil
	m.m.Unref()
}

// Refs is the number of references on the mapping: 1 for the open Mapping
// plus one per live tensor storage viewing it; 0 once fully released
// (then the memory is unmapped). Tests use it.
func (m *Mapping) Refs() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.data == nil {
		return -1 // the count may already be freed: unknowable from here
	}
	return m.m.Refs()
}

var errClosedMapping = errors.New("mapping is closed")

// FromMapping makes a CPU tensor that views the mapped bytes at offset as
// a row-major tensor of dtype and shape, without copying them. The
// offset must be a multiple of the dtype's size (an unaligned view would
// be slow, or refused by some kernels): callers copy such tensors with
// FromBytes instead (CanView says which).
func (s *Scope) FromMapping(m *Mapping, offset int64, dtype DType, shape ...int64) *Tensor {
	if s.err != nil {
		return nil
	}
	n := Numel(shape)
	for _, d := range shape {
		if d < 0 {
			s.Failf("from mapping: negative dimension in shape %v", shape)
			return nil
		}
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.data == nil {
		s.Failf("from mapping: %w", errClosedMapping)
		return nil
	}
	size := n * int64(dtype.Size())
	if offset < 0 || offset > int64(len(m.data)) || size > int64(len(m.data))-offset {
		s.Failf("from mapping: %d bytes at offset %d lie outside the %d mapped bytes", size, offset, len(m.data))
		return nil
	}
	if !CanView(offset, dtype) {
		s.Failf("from mapping: offset %d is not aligned for %s", offset, dtype)
		return nil
	}
	if n == 0 {
		return s.Zeros(dtype, shape...)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c, err := m.m.TensorOf(uintptr(offset), shape, int(dtype.kind().CInt()))
	if err != nil {
		s.Failf("from mapping: %w", cleanErr(err))
		return nil
	}
	t := s.wrap(ts.FromCtensor(c))
	s.meterNew(t, false)
	return t
}

// CanView reports whether a tensor of dtype whose bytes start at offset in
// a mapping (which starts on a page) can be viewed in place.
func CanView(offset int64, dtype DType) bool { return offset%int64(dtype.Size()) == 0 }

// SharesMemory reports whether t's first element lies in the mapped
// bytes, i.e. t views the file rather than a copy of it.
func (m *Mapping) SharesMemory(t *Tensor) bool {
	if !t.Valid() || t.Numel() == 0 {
		return false
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.data == nil {
		return false
	}
	p := rgext.DataPtr(unsafe.Pointer(t.c()))
	base := uintptr(unsafe.Pointer(unsafe.SliceData(m.data)))
	return p >= base && p < base+uintptr(len(m.data))
}

// ChannelsLast returns the 4-d tensor t laid out channels-last (NHWC in
// memory, NCHW in shape), as torch's contiguous(memory_format=
// torch.channels_last); t itself, shallow-copied, when it already is.
// Convolutions given channels-last inputs and weights take oneDNN's NHWC
// kernels and return channels-last outputs.
func (s *Scope) ChannelsLast(t *Tensor) *Tensor {
	if s.err == nil && t.Valid() && t.Dim() != 4 {
		s.Failf("channels last: tensor has %d dims, want 4", t.Dim())
		return nil
	}
	return s.op("channels last", func() (*ts.Tensor, error) {
		c, err := rgext.Contiguous(unsafe.Pointer(t.c()), true)
		if err != nil {
			return nil, err
		}
		return ts.FromCtensor(c), nil
	}, t)
}

// IsChannelsLast reports whether t is a 4-d tensor laid out channels-last
// (and not also row-major).
func (t *Tensor) IsChannelsLast() bool {
	return t.Valid() && rgext.IsChannelsLast(unsafe.Pointer(t.c()))
}
