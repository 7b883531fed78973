// Package tensor is refiners-go's own small tensor API over libtorch (via
// gotch). It exists so that the rest of the code never sees gotch's habits:
// errors are values (never a Must* call, never log.Fatal), memory is released
// deterministically by scopes, and every libtorch call runs on an OS thread
// that stays pinned while the call and its error check happen.
package tensor

import (
	"fmt"
	"runtime"
	"strings"
	"unsafe"

	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"
)

// Tensor is one handle on libtorch tensor storage. Several handles may share
// storage (views, shallow copies); storage is freed when its last handle is
// dropped. A handle belongs to the Scope that made it, or to nobody after
// Scope.Escape, in which case its holder must call Drop.
type Tensor struct {
	h     *ts.Tensor
	owner *Scope
	meter *Meter // counting this tensor's bytes (a dry run), if any
	bytes int64
}

// Drop releases the handle now. It is idempotent and safe on nil.
func (t *Tensor) Drop() {
	if t == nil || t.h == nil {
		return
	}
	t.meterDrop()
	runtime.LockOSThread()
	_ = t.h.Drop() // freeing cannot fail in a way the caller could act on
	runtime.UnlockOSThread()
	t.h = nil
}

// Valid reports whether t holds live storage.
func (t *Tensor) Valid() bool { return t != nil && t.h != nil }

// Shape returns the size of each dimension.
func (t *Tensor) Shape() []int64 {
	if !t.Valid() {
		return nil
	}
	n := lib.AtDim(t.c())
	shape := make([]int64, n)
	if n > 0 {
		lib.AtShape(t.c(), unsafe.Pointer(&shape[0]))
	}
	return shape
}

// Dim is the number of dimensions.
func (t *Tensor) Dim() int {
	if !t.Valid() {
		return 0
	}
	return int(lib.AtDim(t.c()))
}

// Numel is the number of elements.
func (t *Tensor) Numel() int64 { return Numel(t.Shape()) }

// DType is the element type. It panics only if libtorch holds a type this
// package never creates, which would be a bug here, not bad input.
func (t *Tensor) DType() DType {
	d, err := fromKind(t.h.DType())
	if err != nil {
		panic(err)
	}
	return d
}

// Device is where the storage lives.
func (t *Tensor) Device() Device {
	// gotch's AtDevice reads the 4-byte C int it gets as an 8-byte Go int,
	// so its upper half is stack garbage; the low 32 bits are the device
	// index (-1 for the CPU).
	i := int32(lib.AtDevice(t.c()))
	if i < 0 {
		return CPU
	}
	return CUDA(int(i))
}

// String describes the tensor without printing its values.
func (t *Tensor) String() string {
	if !t.Valid() {
		return "Tensor(dropped)"
	}
	return fmt.Sprintf("Tensor(shape=%v, dtype=%s, device=%s)", t.Shape(), t.DType(), t.Device())
}

// Numel is the number of elements of a tensor of the given shape.
func Numel(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// torchErr reads libtorch's thread-local error slot. The caller must hold the
// OS thread since the call that may have failed.
func torchErr() error {
	err := ts.TorchErr()
	if err == nil {
		return nil
	}
	return cleanErr(err)
}

// cleanErr keeps the one line of a libtorch error that says what went wrong,
// dropping the C++ backtrace and the Go stack gotch appends.
func cleanErr(err error) error {
	msg := err.Error()
	if i := strings.Index(msg, "Libtorch API Error: "); i >= 0 {
		msg = msg[i+len("Libtorch API Error: "):]
	}
	if i := strings.Index(msg, "\nException raised from"); i >= 0 {
		msg = msg[:i]
	}
	if i := strings.Index(msg, "\n"); i >= 0 {
		msg = msg[:i]
	}
	return fmt.Errorf("libtorch: %s", strings.TrimSpace(msg))
}

func (t *Tensor) c() lib.Ctensor { return lib.Ctensor(t.h.Ctensor()) }
