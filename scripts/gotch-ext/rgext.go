// Package rgext is refiners-go's addition to gotch: tensors that view a
// reference-counted, read-only memory map of a file (zero-copy weights),
// and memory-format control (channels-last). Its source lives in
// refiners-go's scripts/gotch-ext and is installed into the patched gotch
// copy by scripts/setup-gotch.sh; flags.go, written there, holds the
// libtorch paths.
package rgext

// #include <stdlib.h>
// #include "rgext.h"
import "C"

import (
	"errors"
	"unsafe"
)

// Mapping is a reference-counted read-only map of a file.
type Mapping struct{ c *C.rg_mapping }

func takeErr(e *C.char) error {
	msg := C.GoString(e)
	C.free(unsafe.Pointer(e))
	return errors.New(msg)
}

// Map maps size bytes of the open file fd read-only and private, with one
// reference (the caller's), and returns the mapped bytes' address.
func Map(fd int, size int) (Mapping, unsafe.Pointer, error) {
	var base unsafe.Pointer
	var e *C.char
	m := C.rg_map(C.int(fd), C.size_t(size), &base, &e)
	if m == nil {
		return Mapping{}, nil, takeErr(e)
	}
	return Mapping{m}, base, nil
}

// Unref drops one reference; the last one unmaps.
func (m Mapping) Unref() { C.rg_unref(m.c) }

// Refs is the number of references held now.
func (m Mapping) Refs() int64 { return int64(C.rg_refs(m.c)) }

// TensorOf makes a CPU tensor of the given dims and libtorch scalar type
// viewing the mapping at offset; it returns gotch's C tensor handle. The
// caller must have checked that the bytes lie inside the mapping.
func (m Mapping) TensorOf(offset uintptr, dims []int64, scalarType int) (unsafe.Pointer, error) {
	var p *C.int64_t
	if len(dims) > 0 {
		p = (*C.int64_t)(unsafe.Pointer(&dims[0]))
	}
	var e *C.char
	t := C.rg_tensor_of_mapping(m.c, C.size_t(offset), p, C.size_t(len(dims)), C.int(scalarType), &e)
	if t == nil {
		return nil, takeErr(e)
	}
	return t, nil
}

// Contiguous returns a new handle on t laid out row-major, or channels-last.
func Contiguous(t unsafe.Pointer, channelsLast bool) (unsafe.Pointer, error) {
	cl := C.int(0)
	if channelsLast {
		cl = 1
	}
	var e *C.char
	out := C.rg_contiguous_format(t, cl, &e)
	if out == nil {
		return nil, takeErr(e)
	}
	return out, nil
}

// IsChannelsLast reports whether the 4-d tensor t is laid out channels-last
// (and not also row-major, as tensors with one channel or 1×1 images are).
func IsChannelsLast(t unsafe.Pointer) bool { return C.rg_is_channels_last(t) != 0 }

// DataPtr is the address of t's first element.
func DataPtr(t unsafe.Pointer) uintptr { return uintptr(C.rg_data_ptr(t)) }
