// Package torchfile reads PyTorch files (torch.save: .pt, .pth, .ckpt,
// .bin) without running any of the Python code a pickle can name.
//
// A torch file is a pickle whose tensors point at raw storages: in a zip
// archive (PyTorch >= 1.6, entries <archive>/data.pkl and
// <archive>/data/<key>) or, in the legacy format, after the pickle in the
// same stream. The pickle is decoded by a restricted machine that only
// builds data: dicts (OrderedDict included), lists, tuples, sets, strings,
// bytes, numbers, booleans, None, and tensors through
// torch._utils._rebuild_tensor_v2 / _rebuild_tensor / _rebuild_parameter
// over typed storages. Any other class or function the pickle names
// (os.system, builtins.eval, numpy arrays, a training callback) is refused
// by name, before anything else happens; the caller may declare some
// classes inert (Options.Inert) to keep their instances as plain records.
// Nothing a file says is ever executed.
//
// The file is memory-mapped: a contiguous tensor's bytes are read in place
// (Tensor.Bytes), and no tensor data is read at Open.
//
// The package has no dependency on libtorch, so plugins can use it.
package torchfile

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/big"
	"math/bits"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"unsafe"
)

// DType is an element type, spelled as safetensors spells it.
type DType string

// The element types a storage may hold.
const (
	F64  DType = "F64"
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
	I64  DType = "I64"
	I32  DType = "I32"
	I16  DType = "I16"
	I8   DType = "I8"
	U8   DType = "U8"
	Bool DType = "BOOL"
)

// Size is the number of bytes of one element.
func (d DType) Size() int {
	switch d {
	case F64, I64:
		return 8
	case F32, I32:
		return 4
	case F16, BF16, I16:
		return 2
	case I8, U8, Bool:
		return 1
	}
	return 0
}

// storageTypes are the storage classes torch.save names (torch.FloatStorage
// ...), with their element types.
var storageTypes = map[string]DType{
	"DoubleStorage":   F64,
	"FloatStorage":    F32,
	"HalfStorage":     F16,
	"BFloat16Storage": BF16,
	"LongStorage":     I64,
	"IntStorage":      I32,
	"ShortStorage":    I16,
	"CharStorage":     I8,
	"ByteStorage":     U8,
	"BoolStorage":     Bool,
	"UntypedStorage":  U8,
}

// Options tune Open.
type Options struct {
	// Inert lists classes, as "module.Name", whose instances are kept as
	// *Object records (constructor arguments and state, nothing run)
	// instead of being refused: objects some checkpoints carry next to
	// their weights, such as a training callback.
	Inert []string
}

// File is an open torch file. Its methods may be called from several
// goroutines at once.
type File struct {
	path string
	root any

	mu       sync.RWMutex
	data     []byte // the mapping; nil once closed
	storages map[string]*Storage
	legacy   bool
}

// Storage is a flat array of elements that tensors view.
type Storage struct {
	Key   string
	DType DType
	Len   int64 // elements

	file *File
	// Where the bytes are: [begin, end) in the mapping, or a compressed
	// zip entry to inflate on each read.
	begin, end int64
	entry      *zip.File
}

// Tensor is a strided view of a storage.
type Tensor struct {
	DType        DType
	Shape        []int64
	Stride       []int64 // in elements
	Offset       int64   // in elements, into Storage
	Storage      *Storage
	RequiresGrad bool
}

// Numel is the number of elements.
func (t *Tensor) Numel() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Contiguous reports whether the tensor's elements lie row-major and
// packed in its storage, so its bytes can be read in place.
func (t *Tensor) Contiguous() bool {
	want := int64(1)
	for i := len(t.Shape) - 1; i >= 0; i-- {
		if t.Shape[i] != 1 && t.Stride[i] != want {
			return false
		}
		want *= t.Shape[i]
	}
	return true
}

// Open maps the torch file at path and decodes its pickle.
func Open(path string) (*File, error) { return OpenWith(path, Options{}) }

// OpenWith is Open with options.
func OpenWith(path string, o Options) (*File, error) {
	fd, err := os.Open(path)
	if err != nil {
		return nil, ioError(path, err)
	}
	defer fd.Close() // read-only; the mapping outlives it
	st, err := fd.Stat()
	if err != nil {
		return nil, ioError(path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, errorf(path, "not a regular file")
	}
	size := st.Size()
	if size == 0 {
		return nil, errorf(path, "empty file")
	}
	if int64(int(size)) != size {
		return nil, errorf(path, "file of %d bytes is too large to map", size)
	}
	data, err := syscall.Mmap(int(fd.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_PRIVATE)
	if err != nil {
		return nil, errorf(path, "mmap: %w", err)
	}
	f := &File{path: path, data: data, storages: map[string]*Storage{}}
	if err := f.parse(o); err != nil {
		_ = syscall.Munmap(data) // the parse error is the one worth reporting
		return nil, errorf(path, "%w", err)
	}
	return f, nil
}

// Path is the path the file was opened with.
func (f *File) Path() string { return f.path }

// Root is the decoded object: usually a *Dict (a state dict, or a
// checkpoint holding one under "state_dict").
func (f *File) Root() any { return f.root }

// Legacy reports whether the file uses the pre-1.6 (non-zip) format.
func (f *File) Legacy() bool { return f.legacy }

// Close unmaps the file; byte slices from Tensor.Bytes must have been
// released. Closing again does nothing.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.data == nil {
		return nil
	}
	err := syscall.Munmap(f.data)
	f.data = nil
	if err != nil {
		return errorf(f.path, "munmap: %w", err)
	}
	return nil
}

// Bytes returns the tensor's elements, row-major and little-endian. For a
// contiguous tensor of an uncompressed file they are the file's own bytes
// (read-only, no copy); otherwise they are gathered into a new slice. Call
// release once done with b: it lets Close proceed and tells the kernel
// that the mapped pages may leave this process's memory (they stay in the
// page cache), so reading a whole checkpoint tensor by tensor does not
// accumulate it in resident memory.
func (t *Tensor) Bytes() (b []byte, release func(), err error) {
	s := t.Storage
	f := s.file
	f.mu.RLock()
	if f.data == nil {
		f.mu.RUnlock()
		return nil, nil, errorf(f.path, "storage %s: file is closed", s.Key)
	}
	raw, mapped, err := s.raw()
	if err != nil {
		f.mu.RUnlock()
		return nil, nil, errorf(f.path, "storage %s: %w", s.Key, err)
	}
	size := int64(t.DType.Size())
	n := t.Numel()
	if t.Contiguous() {
		b = raw[t.Offset*size : (t.Offset+n)*size]
	} else {
		b = gather(raw, t, size)
		mapped = false
	}
	done := false
	return b, func() {
		if done {
			return
		}
		done = true
		if mapped {
			f.evict(b)
		}
		f.mu.RUnlock()
	}, nil
}

// raw returns the storage's bytes; mapped is true when they are a view of
// the mapping. The caller holds f.mu.
func (s *Storage) raw() ([]byte, bool, error) {
	f := s.file
	if s.entry == nil {
		return f.data[s.begin:s.end], true, nil
	}
	r, err := s.entry.Open()
	if err != nil {
		return nil, false, err
	}
	defer r.Close()
	want := s.Len * int64(s.DType.Size())
	b := make([]byte, want)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, false, fmt.Errorf("inflate: %w", err)
	}
	return b, false, nil
}

// gather copies a strided tensor's elements into a new row-major slice.
func gather(raw []byte, t *Tensor, size int64) []byte {
	n := t.Numel()
	out := make([]byte, n*size)
	if n == 0 {
		return out
	}
	idx := make([]int64, len(t.Shape))
	src := t.Offset
	for i := range n {
		copy(out[i*size:(i+1)*size], raw[src*size:(src+1)*size])
		for d := len(idx) - 1; d >= 0; d-- {
			idx[d]++
			src += t.Stride[d]
			if idx[d] < t.Shape[d] {
				break
			}
			src -= t.Stride[d] * idx[d]
			idx[d] = 0
		}
	}
	return out
}

// evict advises the kernel that the mapped pages under b may be dropped
// from this process; they are mapped again from the page cache if read.
func (f *File) evict(b []byte) {
	if len(b) == 0 || f.data == nil {
		return
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(f.data)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	if p < base || p+uintptr(len(b)) > base+uintptr(len(f.data)) {
		return
	}
	page := uintptr(os.Getpagesize())
	start := (p - base) / page * page // the mapping starts on a page
	end := min((p-base+uintptr(len(b))+page-1)/page*page, uintptr(len(f.data)))
	_ = syscall.Madvise(f.data[start:end], syscall.MADV_DONTNEED) // advice only
}

// parse recognises the format and decodes the pickle.
func (f *File) parse(o Options) error {
	d := f.data
	switch {
	case bytes.HasPrefix(d, []byte("PK\x03\x04")) || bytes.HasPrefix(d, []byte("PK\x05\x06")):
		return f.parseZip(o)
	case len(d) >= 2 && d[0] == 0x80:
		f.legacy = true
		return f.parseLegacy(o)
	case len(d) > 262 && string(d[257:262]) == "ustar":
		return errors.New("a tar archive: PyTorch's tar format (before 0.4) is not supported")
	}
	return errors.New("not a PyTorch file (neither a zip archive nor a pickle)")
}

func (f *File) parseZip(o Options) error {
	zr, err := zip.NewReader(bytes.NewReader(f.data), int64(len(f.data)))
	if err != nil {
		return fmt.Errorf("zip archive: %w (truncated file?)", err)
	}
	var pkl *zip.File
	entries := map[string]*zip.File{}
	for _, zf := range zr.File {
		entries[zf.Name] = zf
		if dir, base := splitArchive(zf.Name); base == "data.pkl" && dir != "" {
			if pkl != nil {
				return fmt.Errorf("zip archive has two pickles (%s and %s)", pkl.Name, zf.Name)
			}
			pkl = zf
		}
	}
	if pkl == nil {
		return errors.New("zip archive has no <archive>/data.pkl: not a torch.save file")
	}
	prefix := strings.TrimSuffix(pkl.Name, "data.pkl")
	if bo, ok := entries[prefix+"byteorder"]; ok {
		b, err := readEntry(bo, 16)
		if err != nil {
			return fmt.Errorf("%s: %w", bo.Name, err)
		}
		if s := strings.TrimSpace(string(b)); s != "little" {
			return fmt.Errorf("byte order %q is not supported (want little)", s)
		}
	}
	pickle, err := readEntry(pkl, 1<<32)
	if err != nil {
		return fmt.Errorf("%s: %w", pkl.Name, err)
	}
	persistent := func(pid any) (any, error) {
		key, dt, numel, err := storageID(pid, 5)
		if err != nil {
			return nil, err
		}
		if s, ok := f.storages[key]; ok {
			if s.DType != dt || s.Len != numel {
				return nil, fmt.Errorf("storage %s is declared twice with different types", key)
			}
			return s, nil
		}
		zf, ok := entries[prefix+"data/"+key]
		if !ok {
			return nil, fmt.Errorf("storage %s: no entry %sdata/%s in the archive", key, prefix, key)
		}
		s, err := f.zipStorage(zf, key, dt, numel)
		if err != nil {
			return nil, err
		}
		f.storages[key] = s
		return s, nil
	}
	root, n, err := unpickle(pkl.Name, pickle, f.resolver(o), persistent)
	if err != nil {
		return fmt.Errorf("%s: %w", pkl.Name, err)
	}
	if n != len(pickle) {
		return fmt.Errorf("%s: %d bytes after the pickle's STOP", pkl.Name, len(pickle)-n)
	}
	f.root = root
	return nil
}

// splitArchive splits "archive/data.pkl" into "archive" and "data.pkl".
func splitArchive(name string) (string, string) {
	i := strings.IndexByte(name, '/')
	if i < 0 {
		return "", name
	}
	return name[:i], name[i+1:]
}

// readEntry reads a whole (small) zip entry.
func readEntry(zf *zip.File, limit uint64) ([]byte, error) {
	if zf.UncompressedSize64 > limit {
		return nil, fmt.Errorf("%d bytes, more than the %d expected", zf.UncompressedSize64, limit)
	}
	r, err := zf.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	// Grown as data arrives: the declared size may be a lie.
	b, err := io.ReadAll(io.LimitReader(r, int64(zf.UncompressedSize64)))
	if err != nil {
		return nil, err
	}
	if uint64(len(b)) != zf.UncompressedSize64 {
		return nil, fmt.Errorf("%d bytes, the archive says %d (truncated file?)", len(b), zf.UncompressedSize64)
	}
	return b, nil
}

// zipStorage locates a storage's bytes: in place for a stored entry, or
// the entry itself for a compressed one.
func (f *File) zipStorage(zf *zip.File, key string, dt DType, numel int64) (*Storage, error) {
	need, ok := mulSize(numel, dt.Size())
	if !ok {
		return nil, fmt.Errorf("storage %s: %d elements of %s is too large", key, numel, dt)
	}
	if zf.UncompressedSize64 < uint64(need) {
		return nil, fmt.Errorf("storage %s: entry %s holds %d bytes, %d elements of %s need %d (truncated file?)",
			key, zf.Name, zf.UncompressedSize64, numel, dt, need)
	}
	s := &Storage{Key: key, DType: dt, Len: numel, file: f}
	if zf.Method != zip.Store {
		// Deflate expands at most about 1032 to 1: a larger claim is a lie
		// that would only make Bytes allocate for nothing.
		if zf.UncompressedSize64/1100 > zf.CompressedSize64 {
			return nil, fmt.Errorf("storage %s: entry %s claims %d bytes from %d compressed", key, zf.Name, zf.UncompressedSize64, zf.CompressedSize64)
		}
		s.entry = zf
		return s, nil
	}
	off, err := zf.DataOffset()
	if err != nil {
		return nil, fmt.Errorf("storage %s: %w", key, err)
	}
	if off < 0 || off > int64(len(f.data)) || int64(len(f.data))-off < need {
		return nil, fmt.Errorf("storage %s: data at byte %d runs past the end of the file (truncated file?)", key, off)
	}
	s.begin, s.end = off, off+need
	return s, nil
}

// storageID decodes a persistent id ('storage', StorageType, key,
// location, numel[, view_metadata]) of n fields.
func storageID(pid any, n int) (key string, dt DType, numel int64, err error) {
	t, ok := pid.(Tuple)
	if !ok || len(t) != n {
		return "", "", 0, fmt.Errorf("persistent id %v is not a %d-field storage tuple", pid, n)
	}
	if tag, _ := t[0].(string); tag != "storage" {
		return "", "", 0, fmt.Errorf("persistent id of kind %v is not supported (want storage)", t[0])
	}
	st, ok := t[1].(storageType)
	if !ok {
		return "", "", 0, fmt.Errorf("persistent id names %s, not a storage type", typeName(t[1]))
	}
	key, ok = t[2].(string)
	if !ok {
		return "", "", 0, fmt.Errorf("storage key is a %s, not a string", typeName(t[2]))
	}
	numel, ok = t[4].(int64)
	if !ok || numel < 0 {
		return "", "", 0, fmt.Errorf("storage %s: bad element count %v", key, t[4])
	}
	if n == 6 && t[5] != nil {
		return "", "", 0, fmt.Errorf("storage %s is a view of another storage (PyTorch < 0.4 files): not supported", key)
	}
	return key, st.dtype, numel, nil
}

// storageType is the value of a storage class global (torch.FloatStorage).
type storageType struct {
	Global
	dtype DType
}

// tensorFns are the functions a torch pickle may call to build tensors.
var tensorFns = map[string]func(Tuple) (any, error){
	"torch._utils._rebuild_tensor_v2":            rebuildTensorV2,
	"torch._utils._rebuild_tensor":               rebuildTensor,
	"torch._utils._rebuild_parameter":            rebuildParameter,
	"torch._utils._rebuild_parameter_with_state": rebuildParameter,
	"collections.OrderedDict":                    newOrderedDict,
	"_codecs.encode":                             codecsEncode,
	"builtins.set":                               newSet,
	"builtins.frozenset":                         newSet,
	"__builtin__.set":                            newSet,
}

// resolver is the class allowlist of a torch pickle.
func (f *File) resolver(o Options) resolver {
	inert := map[string]bool{}
	for _, c := range o.Inert {
		inert[c] = true
	}
	return func(module, name string) (any, error) {
		full := module + "." + name
		if module == "torch" {
			if dt, ok := storageTypes[name]; ok {
				return storageType{Global{module, name}, dt}, nil
			}
		}
		if fn := tensorFns[full]; fn != nil {
			return Callable(fn), nil
		}
		if inert[full] {
			return Class{Global{module, name}}, nil
		}
		return nil, &RefusedError{Global: full}
	}
}

// RefusedError is returned when a pickle names a class or function outside
// the allowlist. Nothing was run.
type RefusedError struct{ Global string }

func (e *RefusedError) Error() string {
	return fmt.Sprintf("refused %s: a torch file may only hold tensors, storages and plain containers "+
		"(dict, list, tuple, str, numbers); nothing in the file was run", e.Global)
}

func rebuildTensorV2(args Tuple) (any, error) {
	// (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
	if len(args) != 6 && len(args) != 7 {
		return nil, fmt.Errorf("_rebuild_tensor_v2: %d arguments, want 6 or 7", len(args))
	}
	t, err := newTensor(args[0], args[1], args[2], args[3])
	if err != nil {
		return nil, fmt.Errorf("_rebuild_tensor_v2: %w", err)
	}
	t.RequiresGrad, _ = args[4].(bool)
	if hooks, ok := args[5].(*Dict); !ok || hooks.Len() != 0 {
		return nil, errors.New("_rebuild_tensor_v2: backward hooks are not supported")
	}
	return t, nil
}

func rebuildTensor(args Tuple) (any, error) {
	// (storage, storage_offset, size, stride)
	if len(args) != 4 {
		return nil, fmt.Errorf("_rebuild_tensor: %d arguments, want 4", len(args))
	}
	t, err := newTensor(args[0], args[1], args[2], args[3])
	if err != nil {
		return nil, fmt.Errorf("_rebuild_tensor: %w", err)
	}
	return t, nil
}

// rebuildParameter unwraps nn.Parameter(data, requires_grad, hooks[, state]).
func rebuildParameter(args Tuple) (any, error) {
	if len(args) < 3 || len(args) > 4 {
		return nil, fmt.Errorf("_rebuild_parameter: %d arguments, want 3 or 4", len(args))
	}
	t, ok := args[0].(*Tensor)
	if !ok {
		return nil, fmt.Errorf("_rebuild_parameter of a %s", typeName(args[0]))
	}
	t.RequiresGrad, _ = args[1].(bool)
	return t, nil
}

func newOrderedDict(args Tuple) (any, error) {
	d := NewDict()
	if len(args) == 0 {
		return d, nil
	}
	if len(args) == 1 {
		if l, ok := args[0].(*List); ok {
			for _, it := range l.Items {
				kv, ok := it.(Tuple)
				if !ok || len(kv) != 2 {
					return nil, errors.New("OrderedDict: items are not pairs")
				}
				if err := d.set(kv[0], kv[1]); err != nil {
					return nil, err
				}
			}
			return d, nil
		}
	}
	return nil, fmt.Errorf("OrderedDict with arguments %v is not supported", args)
}

func newSet(args Tuple) (any, error) {
	if len(args) == 0 {
		return &Set{}, nil
	}
	if l, ok := args[0].(*List); ok && len(args) == 1 {
		return &Set{Items: slices.Clone(l.Items)}, nil
	}
	return nil, errors.New("set: want a list argument")
}

// codecsEncode is how protocol 2 pickles bytes: _codecs.encode(text, "latin1").
func codecsEncode(args Tuple) (any, error) {
	if len(args) != 2 {
		return nil, errors.New("_codecs.encode: want 2 arguments")
	}
	s, ok1 := args[0].(string)
	enc, ok2 := args[1].(string)
	if !ok1 || !ok2 || (enc != "latin1" && enc != "latin-1") {
		return nil, fmt.Errorf("_codecs.encode(%s, %v) is not supported", typeName(args[0]), args[1])
	}
	b := make([]byte, 0, len(s))
	for _, r := range s {
		if r > 0xff {
			return nil, errors.New("_codecs.encode: character outside latin-1")
		}
		b = append(b, byte(r))
	}
	return b, nil
}

// newTensor checks a tensor's geometry against its storage.
func newTensor(storage, offset, size, stride any) (*Tensor, error) {
	s, ok := storage.(*Storage)
	if !ok {
		return nil, fmt.Errorf("storage is a %s", typeName(storage))
	}
	off, ok := offset.(int64)
	if !ok || off < 0 {
		return nil, fmt.Errorf("bad storage offset %v", offset)
	}
	shape, err := ints(size, "size")
	if err != nil {
		return nil, err
	}
	strides, err := ints(stride, "stride")
	if err != nil {
		return nil, err
	}
	if len(shape) != len(strides) {
		return nil, fmt.Errorf("size %v and stride %v differ in length", shape, strides)
	}
	// The last element read must lie in the storage.
	numel, last := int64(1), off
	for i, d := range shape {
		hi, lo := bits.Mul64(uint64(numel), uint64(d))
		if hi != 0 || lo > math.MaxInt64 {
			return nil, fmt.Errorf("size %v is too large", shape)
		}
		numel = int64(lo)
		if d > 0 {
			hi, lo := bits.Mul64(uint64(d-1), uint64(strides[i]))
			if hi != 0 || lo > math.MaxInt64-uint64(last) {
				return nil, fmt.Errorf("size %v and stride %v are too large", shape, strides)
			}
			last += int64(lo)
		}
	}
	if numel > s.Len {
		return nil, fmt.Errorf("size %v holds %d elements, more than storage %s's %d (expanded tensors are not supported)", shape, numel, s.Key, s.Len)
	}
	if numel > 0 && last >= s.Len {
		return nil, fmt.Errorf("size %v, stride %v at offset %d reach element %d of storage %s, which holds %d",
			shape, strides, off, last, s.Key, s.Len)
	}
	return &Tensor{DType: s.DType, Shape: shape, Stride: strides, Offset: off, Storage: s}, nil
}

func ints(v any, what string) ([]int64, error) {
	t, ok := v.(Tuple)
	if !ok {
		return nil, fmt.Errorf("%s is a %s, not a tuple", what, typeName(v))
	}
	out := make([]int64, len(t))
	for i, e := range t {
		n, ok := e.(int64)
		if !ok || n < 0 {
			return nil, fmt.Errorf("%s %v: element %d is not a natural number", what, v, i)
		}
		out[i] = n
	}
	return out, nil
}

// mulSize is n·size, or false on overflow.
func mulSize(n int64, size int) (int64, bool) {
	hi, lo := bits.Mul64(uint64(n), uint64(size))
	if hi != 0 || lo > math.MaxInt64 {
		return 0, false
	}
	return int64(lo), true
}

// legacyMagic is the first pickle of a legacy torch file.
var legacyMagic, _ = new(big.Int).SetString("1950a86a20f9469cfc6c", 16)

// parseLegacy reads the pre-1.6 format: pickles of the magic number, the
// protocol version (1001), system info and the object (storages as
// persistent ids), then a pickle of the storage keys, then each storage in
// that order as an 8-byte element count and its bytes.
func (f *File) parseLegacy(o Options) error {
	d := f.data
	pos := 0
	next := func(what string, persistent persistentLoader) (any, error) {
		v, n, err := unpickle(what, d[pos:], f.resolver(o), persistent)
		if err != nil {
			if pos == 0 {
				return nil, err // the first pickle: not known to be a torch file yet
			}
			return nil, fmt.Errorf("legacy format, %s: %w", what, err)
		}
		pos += n
		return v, nil
	}
	magic, err := next("magic number", nil)
	if err != nil {
		return err
	}
	if m, ok := magic.(*big.Int); !ok || m.Cmp(legacyMagic) != 0 {
		return errors.New("a pickle, but not a PyTorch file (no magic number)")
	}
	proto, err := next("protocol version", nil)
	if err != nil {
		return err
	}
	if proto != int64(1001) {
		return fmt.Errorf("legacy format, protocol version %v is not supported (want 1001)", proto)
	}
	info, err := next("system info", nil)
	if err != nil {
		return err
	}
	if sys, ok := info.(*Dict); ok {
		if le, ok := sys.Get("little_endian"); ok && le != true {
			return errors.New("legacy format: big-endian files are not supported")
		}
	}
	root, err := next("object", func(pid any) (any, error) {
		key, dt, numel, err := storageID(pid, 6)
		if err != nil {
			return nil, err
		}
		if s, ok := f.storages[key]; ok {
			if s.DType != dt || s.Len != numel {
				return nil, fmt.Errorf("storage %s is declared twice with different types", key)
			}
			return s, nil
		}
		s := &Storage{Key: key, DType: dt, Len: numel, file: f}
		f.storages[key] = s
		return s, nil
	})
	if err != nil {
		return err
	}
	keysV, err := next("storage keys", nil)
	if err != nil {
		return err
	}
	keys, ok := keysV.(*List)
	if !ok {
		return fmt.Errorf("legacy format: storage keys are a %s, not a list", typeName(keysV))
	}
	placed := 0
	for _, kv := range keys.Items {
		key, ok := kv.(string)
		if !ok {
			return fmt.Errorf("legacy format: storage key is a %s", typeName(kv))
		}
		s, ok := f.storages[key]
		if !ok {
			return fmt.Errorf("legacy format: storage %s is listed but no tensor uses it", key)
		}
		if len(d)-pos < 8 {
			return fmt.Errorf("legacy format: storage %s: file ends at byte %d (truncated file?)", key, len(d))
		}
		count := int64(binary.LittleEndian.Uint64(d[pos:]))
		pos += 8
		if count != s.Len {
			return fmt.Errorf("legacy format: storage %s holds %d elements, its tensors say %d", key, count, s.Len)
		}
		need, ok := mulSize(count, s.DType.Size())
		if !ok || need > int64(len(d)-pos) {
			return fmt.Errorf("legacy format: storage %s needs %d bytes, %d left (truncated file?)", key, need, len(d)-pos)
		}
		s.begin, s.end = int64(pos), int64(pos)+need
		pos += int(need)
		placed++
	}
	if placed != len(f.storages) {
		return fmt.Errorf("legacy format: %d storages used, %d stored", len(f.storages), placed)
	}
	f.root = root
	return nil
}

// errorf makes an error naming the file.
func errorf(path, format string, args ...any) error {
	return fmt.Errorf("torchfile: %s: %w", path, fmt.Errorf(format, args...))
}

// ioError names the file once.
func ioError(path string, err error) error {
	if pe, ok := errors.AsType[*fs.PathError](err); ok {
		return errorf(path, "%s: %w", pe.Op, pe.Err)
	}
	return errorf(path, "%w", err)
}
