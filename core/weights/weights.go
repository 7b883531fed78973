// Package weights reads and writes safetensors files.
//
// Open maps a file read-only (and private) and parses only its header, so
// opening a multi-gigabyte checkpoint costs one header parse. Loading a
// tensor of a mapped file makes a tensor that views the file's pages, with
// no copy: the mapping is reference-counted by libtorch's storages, so it
// outlives Close for as long as any tensor views it, and its pages are
// never writable (see tensor.Mapping). ReadHeader parses the header
// without mapping the data at all, for dry runs.
//
// Every error names the file and, when one tensor is at fault, its key. No
// input, however malformed, makes this package panic.
package weights

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"unicode/utf8"
	"unsafe"

	"github.com/nlpodyssey/safetensors"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/internal/atomicfile"
)

// Info describes one tensor in a file without reading its data.
type Info struct {
	Key   string
	DType tensor.DType
	Shape []int64
	// Offset is the [begin, end) byte range of the tensor's data, counted
	// from the start of the data section, as written in the header.
	Offset [2]int64
}

// File is an open, memory-mapped safetensors file. Its methods may be called
// from several goroutines at once.
type File struct {
	path string
	header

	// mu is held shared while Load reads mapped memory, so that Close
	// cannot unmap it underneath.
	mu        sync.RWMutex
	data      []byte // the mapping (or the bytes given to Parse); nil once closed
	st        safetensors.SafeTensors
	mapping   *tensor.Mapping // the file's mapping (Open only), which Load views
	dataStart int64           // offset of the data section in data
	noViews   bool            // Load copies even from a mapping (OpenOptions.Copy)
}

// header is what parseHeader learns from a file's JSON header.
type header struct {
	infos       map[string]Info   // tensors of a supported dtype
	keys        []string          // the keys of infos, sorted
	unsupported map[string]string // key -> safetensors dtype name
	metadata    map[string]string
}

const (
	metadataKey = "__metadata__"
	// maxHeaderLen is nlpodyssey/safetensors' limit. ReadHeader enforces it
	// too, so that a dry run rejects exactly the files Open rejects.
	maxHeaderLen = 100_000_000
)

// stDTypes gives the safetensors spelling of each tensor.DType; these are
// the dtypes a File can load.
var stDTypes = [...]safetensors.DType{
	tensor.Float32:  safetensors.F32,
	tensor.Float16:  safetensors.F16,
	tensor.BFloat16: safetensors.BF16,
	tensor.Int64:    safetensors.I64,
	tensor.Bool:     safetensors.BOOL,
}

func fromST(d safetensors.DType) (tensor.DType, bool) {
	for t, sd := range stDTypes {
		if sd == d {
			return tensor.DType(t), true
		}
	}
	return 0, false
}

// OpenOptions tune OpenWith.
type OpenOptions struct {
	// Copy makes Load copy every tensor out of the mapping, as for a file
	// that will be rewritten in place (Load views it by default).
	Copy bool
}

// Open maps the safetensors file at path and validates its header.
func Open(path string) (*File, error) { return OpenWith(path, OpenOptions{}) }

// OpenWith is Open with options.
func OpenWith(path string, o OpenOptions) (*File, error) {
	fd, err := os.Open(path)
	if err != nil {
		return nil, ioError(path, err)
	}
	// The mapping outlives the descriptor; a close error on a file opened
	// read-only has no consequence.
	defer fd.Close()
	size, n, err := readPrefix(path, fd)
	if err != nil {
		return nil, err
	}
	if int64(int(size)) != size {
		return nil, errorf(path, "file of %d bytes is too large to map", size)
	}
	mapping, err := tensor.MapFile(fd, size)
	if err != nil {
		return nil, errorf(path, "%w", err)
	}
	data := mapping.Bytes()
	h, err := parseHeader(path, size-8-n, data[8:8+n])
	var st safetensors.SafeTensors
	if err == nil {
		// parseHeader has checked everything the library checks, and names
		// the key at fault; this is the second opinion, and the library's
		// views are what Load reads.
		if st, err = safetensors.Deserialize(data); err != nil {
			err = errorf(path, "invalid safetensors file: %w", err)
		}
	}
	if err != nil {
		mapping.Close() // nothing views it yet: this unmaps
		return nil, err
	}
	return &File{path: path, header: h, data: data, st: st, mapping: mapping, dataStart: 8 + n, noViews: o.Copy}, nil
}

// Parse reads a safetensors file held in memory (an uploaded request body,
// say); name stands for it in errors. The File reads data in place: data
// must not change until the File is closed.
func Parse(name string, data []byte) (*File, error) {
	if len(data) < 8 {
		return nil, errorf(name, "%d bytes: too short for a safetensors header", len(data))
	}
	n := binary.LittleEndian.Uint64(data)
	if n > maxHeaderLen || n > uint64(len(data)-8) {
		return nil, errorf(name, "header length %d does not fit in %d bytes (limit %d)", n, len(data), maxHeaderLen)
	}
	h, err := parseHeader(name, int64(len(data))-8-int64(n), data[8:8+n])
	if err != nil {
		return nil, err
	}
	st, err := safetensors.Deserialize(data)
	if err != nil {
		return nil, errorf(name, "invalid safetensors file: %w", err)
	}
	return &File{path: name, header: h, data: data, st: st}, nil
}

// Path is the path the file was opened with.
func (f *File) Path() string { return f.path }

// Keys lists, sorted, the keys of the tensors Load can read. Keys of an
// unsupported dtype are listed by Unsupported instead.
func (f *File) Keys() []string { return slices.Clone(f.keys) }

// Info describes the tensor under key, if it has a supported dtype.
func (f *File) Info(key string) (Info, bool) {
	info, ok := f.infos[key]
	info.Shape = slices.Clone(info.Shape)
	return info, ok
}

// Unsupported maps the keys of tensors whose dtype Load cannot read (F64,
// I32, U8, ...) to their dtype's safetensors name.
func (f *File) Unsupported() map[string]string { return maps.Clone(f.unsupported) }

// Metadata returns the header's __metadata__ strings; it is never nil.
func (f *File) Metadata() map[string]string { return maps.Clone(f.metadata) }

// Load makes the tensor under key a CPU tensor owned by s. For a file from
// Open it views the mapped file without a copy when the tensor's bytes are
// aligned for its dtype (as files written by safetensors are), and copies
// them otherwise; for a file from Parse it copies. A viewed tensor is
// read-only in effect: anything that changes weights must make new tensors
// (ToDType, To and every op do). A view sits at the file's alignment (a
// multiple of its dtype's size), a copy at libtorch's 64 bytes; a few
// kernels take alignment-dependent paths, so the two can differ in the
// last bits of a result (within rounding; OpenWith{Copy} when bit-equality
// with copied tensors matters, as for inputs compared with another
// process's). Failures (a missing key, an unsupported
// dtype, a closed file) are recorded in s and Load returns nil; like every
// op, it does nothing once s has failed.
func (f *File) Load(s *tensor.Scope, key string) *tensor.Tensor {
	if s.Err() != nil {
		return nil
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.data == nil {
		s.Fail(keyErrorf(f.path, key, "file is closed"))
		return nil
	}
	info, ok := f.infos[key]
	if !ok {
		if dt, found := f.unsupported[key]; found {
			s.Fail(keyErrorf(f.path, key, "dtype %s is not supported (want F32, F16, BF16, I64 or BOOL)", dt))
		} else {
			s.Fail(keyErrorf(f.path, key, "not in file"))
		}
		return nil
	}
	// Both parseHeader and the library accepted the header, so the view
	// exists and holds exactly the tensor's bytes; FromBytes checks the
	// length once more anyway.
	if off := f.dataStart + info.Offset[0]; f.mapping != nil && !f.noViews && tensor.CanView(off, info.DType) {
		return s.FromMapping(f.mapping, off, info.DType, info.Shape...)
	}
	view, _ := f.st.Tensor(key)
	return s.FromBytes(view.Data(), info.DType, info.Shape...)
}

// Evict advises the kernel that the mapped pages holding key's bytes may
// leave this process's resident memory (they stay in the page cache, and
// come back if read again). Loaders call it once a tensor was cast or
// moved to a device, so that its file bytes, no longer needed, do not
// count twice in the process's memory. It never affects values: the
// mapping is private and read-only, so any view of those pages reads the
// same bytes from the file again. It does nothing for a file from Parse.
func (f *File) Evict(key string) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	info, ok := f.infos[key]
	if !ok || f.data == nil || f.mapping == nil {
		return
	}
	begin := f.dataStart + info.Offset[0]
	evict(f.data, f.data[begin:f.dataStart+info.Offset[1]])
}

// Views reports whether Load of key would view the mapped file rather
// than copy it.
func (f *File) Views(key string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	info, ok := f.infos[key]
	return ok && f.data != nil && f.mapping != nil && !f.noViews && tensor.CanView(f.dataStart+info.Offset[0], info.DType)
}

// Bytes returns a copy of the tensor's raw little-endian bytes.
func (f *File) Bytes(key string) ([]byte, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.data == nil {
		return nil, keyErrorf(f.path, key, "file is closed")
	}
	if _, ok := f.infos[key]; !ok {
		return nil, keyErrorf(f.path, key, "not in file (or of an unsupported dtype)")
	}
	view, _ := f.st.Tensor(key)
	return bytes.Clone(view.Data()), nil
}

// Borrow returns the tensor's raw bytes in place, without a copy: for a
// file from Open they are the mapping's (read-only). Call release once done
// with b: until then Close waits; and for a mapped file release tells the
// kernel the pages may leave this process's memory (they stay in the page
// cache), so streaming a whole checkpoint through Borrow does not
// accumulate it in resident memory.
func (f *File) Borrow(key string) (b []byte, release func(), err error) {
	f.mu.RLock()
	if f.data == nil {
		f.mu.RUnlock()
		return nil, nil, keyErrorf(f.path, key, "file is closed")
	}
	if _, ok := f.infos[key]; !ok {
		f.mu.RUnlock()
		return nil, nil, keyErrorf(f.path, key, "not in file (or of an unsupported dtype)")
	}
	view, _ := f.st.Tensor(key)
	b = view.Data()
	done := false
	return b, func() {
		if done {
			return
		}
		done = true
		if f.mapping != nil {
			evict(f.data, b)
		}
		f.mu.RUnlock()
	}, nil
}

// evict advises the kernel that the pages of mapping under b may be dropped
// from this process; they are mapped again from the page cache if read.
func evict(mapping, b []byte) {
	if len(b) == 0 {
		return
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(mapping)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	if p < base || p+uintptr(len(b)) > base+uintptr(len(mapping)) {
		return
	}
	page := uintptr(os.Getpagesize())
	start := (p - base) / page * page // the mapping starts on a page
	end := min((p-base+uintptr(len(b))+page-1)/page*page, uintptr(len(mapping)))
	_ = syscall.Madvise(mapping[start:end], syscall.MADV_DONTNEED) // advice only
}

// Scalar reads the value of a one-element tensor (a LoRA's alpha, say)
// without libtorch: hosts hand such values to plugins, which never see
// tensor data.
func (f *File) Scalar(key string) (float64, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.data == nil {
		return 0, keyErrorf(f.path, key, "file is closed")
	}
	info, ok := f.infos[key]
	if !ok {
		return 0, keyErrorf(f.path, key, "not in file (or of an unsupported dtype)")
	}
	if tensor.Numel(info.Shape) != 1 {
		return 0, keyErrorf(f.path, key, "has shape %v, not one element", info.Shape)
	}
	view, _ := f.st.Tensor(key)
	b := view.Data()
	switch info.DType {
	case tensor.Float32:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(b))), nil
	case tensor.Float16:
		return float64(tensor.Float16FromBits(binary.LittleEndian.Uint16(b))), nil
	case tensor.BFloat16:
		return float64(tensor.BFloat16FromBits(binary.LittleEndian.Uint16(b))), nil
	case tensor.Int64:
		return float64(int64(binary.LittleEndian.Uint64(b))), nil
	}
	return 0, keyErrorf(f.path, key, "dtype %s has no numeric value", info.DType)
}

// Float64s reads a floating-point tensor's values as float64 without
// libtorch, for checks that need more precision than the tensor layer's
// dtypes offer (the conformance runner's float64 references). It accepts
// F64, F32, F16 and BF16 tensors and returns the values in row-major order
// with the tensor's shape.
func (f *File) Float64s(key string) ([]float64, []int64, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.data == nil {
		return nil, nil, keyErrorf(f.path, key, "file is closed")
	}
	view, ok := f.st.Tensor(key)
	if !ok {
		return nil, nil, keyErrorf(f.path, key, "not in file")
	}
	shape := make([]int64, len(view.Shape()))
	for i, d := range view.Shape() {
		shape[i] = int64(d)
	}
	b := view.Data()
	var size int
	var read func(b []byte) float64
	switch view.DType().String() {
	case "F64":
		size, read = 8, func(b []byte) float64 { return math.Float64frombits(binary.LittleEndian.Uint64(b)) }
	case "F32":
		size, read = 4, func(b []byte) float64 { return float64(math.Float32frombits(binary.LittleEndian.Uint32(b))) }
	case "F16":
		size, read = 2, func(b []byte) float64 { return float64(tensor.Float16FromBits(binary.LittleEndian.Uint16(b))) }
	case "BF16":
		size, read = 2, func(b []byte) float64 { return float64(tensor.BFloat16FromBits(binary.LittleEndian.Uint16(b))) }
	default:
		return nil, nil, keyErrorf(f.path, key, "dtype %s is not floating point", view.DType())
	}
	n := tensor.Numel(shape)
	if int64(len(b)) != n*int64(size) {
		return nil, nil, keyErrorf(f.path, key, "%d bytes for %d elements of %s", len(b), n, view.DType())
	}
	out := make([]float64, n)
	for i := range out {
		out[i] = read(b[i*size:])
	}
	return out, shape, nil
}

// Close releases the file: Load, Bytes and Borrow fail afterwards. The
// mapping itself goes when the last tensor viewing it is dropped (at once
// if none does). Closing again does nothing.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.data == nil {
		return nil
	}
	if f.mapping != nil {
		f.mapping.Close()
	}
	f.data, f.st = nil, safetensors.SafeTensors{}
	return nil
}

// ReadHeader describes the tensors of the file at path and returns its
// metadata, reading only the header. It validates the header as Open does,
// so it fails on exactly the files Open fails on. Like File.Keys, it leaves
// out tensors of an unsupported dtype (ReadFileHeader lists them).
func ReadHeader(path string) ([]Info, map[string]string, error) {
	h, err := ReadFileHeader(path)
	if err != nil {
		return nil, nil, err
	}
	return h.Tensors, h.Metadata, nil
}

// Header is a safetensors file's header, as a dry run reads it.
type Header struct {
	Tensors []Info // tensors of a supported dtype, by key
	// Unsupported maps the keys of tensors whose dtype Load cannot read
	// (F64, I32, ...) to that dtype's safetensors name.
	Unsupported map[string]string
	Metadata    map[string]string
}

// ReadFileHeader reads and validates the header of the file at path, as
// ReadHeader does, keeping the tensors of unsupported dtypes apart.
func ReadFileHeader(path string) (*Header, error) {
	fd, err := os.Open(path)
	if err != nil {
		return nil, ioError(path, err)
	}
	defer fd.Close() // read-only: nothing to lose
	size, n, err := readPrefix(path, fd)
	if err != nil {
		return nil, err
	}
	js := make([]byte, n)
	if _, err := fd.ReadAt(js, 8); err != nil {
		return nil, ioError(path, err)
	}
	h, err := parseHeader(path, size-8-n, js)
	if err != nil {
		return nil, err
	}
	infos := make([]Info, len(h.keys))
	for i, k := range h.keys {
		infos[i] = h.infos[k]
	}
	return &Header{Tensors: infos, Unsupported: h.unsupported, Metadata: h.metadata}, nil
}

// readPrefix checks that fd is a regular file long enough for its header and
// returns the file's size and the header's length.
func readPrefix(path string, fd *os.File) (size, n int64, err error) {
	st, err := fd.Stat()
	if err != nil {
		return 0, 0, ioError(path, err)
	}
	if !st.Mode().IsRegular() {
		return 0, 0, errorf(path, "not a regular file")
	}
	size = st.Size()
	switch {
	case size == 0:
		return 0, 0, errorf(path, "empty file")
	case size < 8:
		return 0, 0, errorf(path, "file is %d bytes, too short for the 8-byte header length", size)
	}
	var b [8]byte
	if _, err := fd.ReadAt(b[:], 0); err != nil {
		return 0, 0, ioError(path, err)
	}
	switch hn := binary.LittleEndian.Uint64(b[:]); {
	case hn > uint64(size-8):
		return 0, 0, errorf(path, "header length %d exceeds the %d bytes after the length prefix", hn, size-8)
	case hn > maxHeaderLen:
		return 0, 0, errorf(path, "header length %d exceeds the limit of %d", hn, maxHeaderLen)
	default:
		return size, int64(hn), nil
	}
}

// span is where one tensor's data lies in the data section.
type span struct {
	key    string
	offset [2]uint64
}

// parseHeader parses and validates the JSON header js of a file whose data
// section is dataLen bytes long. It walks the JSON itself rather than leave
// it to nlpodyssey/safetensors: ReadHeader has no data to give the library
// (ReadMetadata wants the whole file), errors must name the key at fault,
// which the library's mostly do not, and duplicate keys, which encoding/json
// silently merges, must be refused.
func parseHeader(path string, dataLen int64, js []byte) (header, error) {
	h := header{
		infos:       map[string]Info{},
		unsupported: map[string]string{},
		metadata:    map[string]string{},
	}
	// encoding/json would quietly turn bad bytes into U+FFFD, so two
	// distinct keys could collide.
	if !utf8.Valid(js) {
		return h, errorf(path, "header is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	tok, err := dec.Token()
	if errors.Is(err, io.EOF) {
		return h, errorf(path, "header is empty")
	}
	if err != nil {
		return h, errorf(path, "header is not valid JSON: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return h, errorf(path, "header is not a JSON object")
	}
	seen := map[string]bool{}
	var spans []span
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return h, errorf(path, "header is not valid JSON: %w", err)
		}
		key, ok := tok.(string)
		if !ok {
			return h, errorf(path, "header is not valid JSON: object key %v", tok)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return h, errorf(path, "header is not valid JSON: %w", err)
		}
		if seen[key] {
			return h, keyErrorf(path, key, "appears twice in the header")
		}
		seen[key] = true
		if key == metadataKey {
			if err := parseMetadata(path, raw, h.metadata); err != nil {
				return h, err
			}
			continue
		}
		sp, err := parseEntry(path, key, raw, dataLen, &h)
		if err != nil {
			return h, err
		}
		spans = append(spans, sp)
	}
	// The closing brace, then nothing but the padding spaces.
	if _, err := dec.Token(); err != nil {
		return h, errorf(path, "header is not valid JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return h, errorf(path, "header has data after its JSON object")
	}
	if err := checkLayout(path, spans, dataLen); err != nil {
		return h, err
	}
	h.keys = slices.Sorted(maps.Keys(h.infos))
	return h, nil
}

// parseMetadata copies the __metadata__ object raw into m. It decodes to
// values of any type and checks them, because decoding straight into a
// map[string]string would quietly turn a null value into "".
func parseMetadata(path string, raw json.RawMessage, m map[string]string) error {
	var values map[string]any
	if err := json.Unmarshal(raw, &values); err != nil {
		return errorf(path, "%s is not a JSON object", metadataKey)
	}
	// A null __metadata__ leaves values nil: no metadata, as for the library.
	for k, v := range values {
		str, ok := v.(string)
		if !ok {
			return errorf(path, "%s: value of %q is not a string", metadataKey, k)
		}
		m[k] = str
	}
	return nil
}

// parseEntry validates one tensor's header entry and records it in h.
func parseEntry(path, key string, raw json.RawMessage, dataLen int64, h *header) (span, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return span{}, keyErrorf(path, key, "entry is not a JSON object")
	}
	// Field names are matched exactly (encoding/json's struct decoding
	// would ignore case), and extra ones are refused, as the library does.
	for name := range fields {
		if name != "dtype" && name != "shape" && name != "data_offsets" {
			return span{}, keyErrorf(path, key, "unexpected field %q", name)
		}
	}
	for _, name := range []string{"dtype", "shape", "data_offsets"} {
		if _, ok := fields[name]; !ok {
			return span{}, keyErrorf(path, key, "missing %s", name)
		}
	}
	var dtName string
	if err := json.Unmarshal(fields["dtype"], &dtName); err != nil {
		return span{}, keyErrorf(path, key, "dtype %s is not a string", fields["dtype"])
	}
	shape, ok := naturals(fields["shape"])
	if !ok {
		return span{}, keyErrorf(path, key, "shape %s is not an array of natural numbers", fields["shape"])
	}
	offsets, ok := naturals(fields["data_offsets"])
	if !ok || len(offsets) != 2 {
		return span{}, keyErrorf(path, key, "data_offsets %s are not two natural numbers", fields["data_offsets"])
	}
	// safetensors.ParseDType is case-sensitive, like the format itself.
	sdt, err := safetensors.ParseDType(dtName)
	if err != nil {
		return span{}, keyErrorf(path, key, "unknown dtype %q", dtName)
	}
	n, ok := numel(shape)
	if !ok {
		return span{}, keyErrorf(path, key, "shape %v is too large", shape)
	}
	hi, need := bits.Mul64(n, sdt.Size())
	if hi != 0 {
		return span{}, keyErrorf(path, key, "shape %v of %s is too large", shape, sdt)
	}
	off := [2]uint64{offsets[0], offsets[1]}
	switch {
	case off[1] < off[0]:
		return span{}, keyErrorf(path, key, "data_offsets %v end before they begin", off)
	case off[1] > uint64(dataLen):
		return span{}, keyErrorf(path, key, "data_offsets %v end past the %d-byte data section (truncated file?)", off, dataLen)
	case off[1]-off[0] != need:
		return span{}, keyErrorf(path, key, "shape %v of %s needs %d bytes but data_offsets %v span %d", shape, sdt, need, off, off[1]-off[0])
	}
	dt, ok := fromST(sdt)
	if !ok {
		h.unsupported[key] = sdt.String()
		return span{key, off}, nil
	}
	dims := make([]int64, len(shape))
	for i, d := range shape {
		dims[i] = int64(d) // numel checked that each fits
	}
	h.infos[key] = Info{Key: key, DType: dt, Shape: dims, Offset: [2]int64{int64(off[0]), int64(off[1])}}
	return span{key, off}, nil
}

// naturals decodes a JSON array of natural numbers. Decoding into []uint64
// would take a null element for 0 (and into []json.Number, "7" for 7), both
// of which the format, and the library, refuse.
func naturals(raw json.RawMessage) ([]uint64, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var values []any
	if err := dec.Decode(&values); err != nil || values == nil {
		return nil, false
	}
	out := make([]uint64, len(values))
	for i, v := range values {
		num, ok := v.(json.Number)
		if !ok {
			return nil, false
		}
		n, err := strconv.ParseUint(num.String(), 10, 64)
		if err != nil {
			return nil, false
		}
		out[i] = n
	}
	return out, true
}

// numel returns the element count of shape. It refuses shapes whose
// dimensions, counting zeros as ones, multiply past math.MaxInt64: libtorch
// computes strides that way, so such a shape cannot be made even when it
// holds no elements.
func numel(shape []uint64) (uint64, bool) {
	n, extent := uint64(1), uint64(1)
	for _, d := range shape {
		hi, lo := bits.Mul64(extent, max(d, 1))
		if hi != 0 || lo > math.MaxInt64 {
			return 0, false
		}
		extent = lo
		n *= d // n <= extent: no overflow
	}
	return n, true
}

// checkLayout checks that the tensors' data tile the data section exactly:
// in offset order, each starts where the previous one ends, and the last one
// ends at the end of the file.
func checkLayout(path string, spans []span, dataLen int64) error {
	sort.Slice(spans, func(i, j int) bool {
		a, b := spans[i], spans[j]
		if a.offset != b.offset {
			return a.offset[0] < b.offset[0] || a.offset[0] == b.offset[0] && a.offset[1] < b.offset[1]
		}
		return a.key < b.key
	})
	var end uint64
	for i, sp := range spans {
		switch {
		case sp.offset[0] < end:
			return keyErrorf(path, sp.key, "data_offsets %v overlap those of key %s %v", sp.offset, spans[i-1].key, spans[i-1].offset)
		case sp.offset[0] > end && i == 0:
			return keyErrorf(path, sp.key, "data_offsets %v leave %d unused bytes at the start of the data section", sp.offset, sp.offset[0])
		case sp.offset[0] > end:
			return keyErrorf(path, sp.key, "data_offsets %v leave %d unused bytes after key %s %v", sp.offset, sp.offset[0]-end, spans[i-1].key, spans[i-1].offset)
		}
		end = sp.offset[1]
	}
	if end != uint64(dataLen) {
		return errorf(path, "%d bytes of data after the last tensor", uint64(dataLen)-end)
	}
	return nil
}

// Save writes tensors and metadata to path as a safetensors file. It writes
// a temporary file in the same directory and renames it over path once it is
// complete and synced, so path holds either its old content or the whole new
// file, never a partial one.
func Save(s *tensor.Scope, path string, tensors map[string]*tensor.Tensor, metadata map[string]string) error {
	if err := s.Err(); err != nil {
		return errorf(path, "scope has already failed: %w", err)
	}
	views := make(map[string]view, len(tensors))
	for key, t := range tensors {
		if key == metadataKey {
			return keyErrorf(path, key, "reserved for metadata")
		}
		if !t.Valid() {
			return keyErrorf(path, key, "tensor is nil or dropped")
		}
		views[key] = newView(s, t)
	}
	p, err := writePending(path, func(f *os.File) error { return writeFile(f, views, metadata, s.Err) })
	if err != nil {
		return err
	}
	return p.Commit()
}

// Stream is a tensor to save whose bytes are produced only when its turn to
// be written comes: a view into a mapped source file, or a conversion made
// on the spot.
type Stream struct {
	DType tensor.DType
	Shape []int64
	// Bytes returns the tensor's little-endian, row-major bytes. release
	// (may be nil) is called once they are written, or once the write has
	// failed, so that the bytes can be let go.
	Bytes func() (b []byte, release func(), err error)
}

// SaveStream writes tensors produced one at a time (Stream.Bytes is called
// in file order, each tensor released before the next is asked for) to path,
// atomically as Save does. It never holds more than one tensor's bytes.
func SaveStream(path string, tensors map[string]Stream, metadata map[string]string) error {
	p, err := WriteStream(path, tensors, metadata)
	if err != nil {
		return err
	}
	return p.Commit()
}

// Pending is a complete, synced safetensors file written next to its final
// path, waiting to be renamed into place: a caller writing several files
// commits them only once all were written.
type Pending struct {
	path string
	f    *atomicfile.File
}

// WriteStream is SaveStream's first half: the file is written and synced
// under a temporary name in path's directory. Commit or Discard it.
func WriteStream(path string, tensors map[string]Stream, metadata map[string]string) (*Pending, error) {
	views := make(map[string]*streamView, len(tensors))
	st := &streamState{}
	for key, t := range tensors {
		if key == metadataKey {
			return nil, keyErrorf(path, key, "reserved for metadata")
		}
		n := int64(t.DType.Size())
		shape := make([]uint64, len(t.Shape))
		for i, d := range t.Shape {
			if d < 0 {
				return nil, keyErrorf(path, key, "negative dimension in %v", t.Shape)
			}
			shape[i] = uint64(d)
			n *= d
		}
		if t.Bytes == nil {
			return nil, keyErrorf(path, key, "no bytes")
		}
		views[key] = &streamView{st: st, key: key, t: t, dtype: stDTypes[t.DType], shape: shape, n: uint64(n)}
	}
	p, err := writePending(path, func(f *os.File) error {
		err := writeFile(f, views, metadata, func() error { return st.err })
		st.releasePrev()
		return err
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Commit renames the file into place and syncs the directory.
func (p *Pending) Commit() error {
	// A checkpoint is usually shared (the temporary file is private).
	if err := p.f.Commit(p.path, 0o644); err != nil {
		return errorf(p.path, "%w", err)
	}
	return nil
}

// Discard removes the temporary file.
func (p *Pending) Discard() { p.f.Abort() }

// writePending runs write on a new temporary file next to path, then syncs
// and closes it; on failure the file is removed.
func writePending(path string, write func(*os.File) error) (*Pending, error) {
	f, err := atomicfile.Create(filepath.Dir(path))
	if err != nil {
		return nil, ioError(path, err)
	}
	if err := write(f.File); err != nil {
		f.Abort()
		return nil, errorf(path, "%w", err)
	}
	if err := f.Seal(0o644); err != nil {
		f.Abort()
		return nil, errorf(path, "%w", err)
	}
	return &Pending{path: path, f: f}, nil
}

// streamState is shared by a file's stream views: the first failure, and
// the release of the tensor written last.
type streamState struct {
	err     error
	release func()
}

func (st *streamState) releasePrev() {
	if st.release != nil {
		st.release()
		st.release = nil
	}
}

type streamView struct {
	st    *streamState
	key   string
	t     Stream
	dtype safetensors.DType
	shape []uint64
	n     uint64
}

func (v *streamView) DType() safetensors.DType { return v.dtype }
func (v *streamView) Shape() []uint64          { return v.shape }
func (v *streamView) DataLen() uint64          { return v.n }

// Data is called by the serializer right before it writes the bytes, in
// file order: the previous tensor's bytes are written by then.
func (v *streamView) Data() []byte {
	v.st.releasePrev()
	if v.st.err != nil {
		return nil
	}
	b, release, err := v.t.Bytes()
	v.st.release = release
	switch {
	case err != nil:
		v.st.err = fmt.Errorf("key %s: %w", v.key, err)
		return nil
	case uint64(len(b)) != v.n:
		v.st.err = fmt.Errorf("key %s: %d bytes for %s %v, want %d", v.key, len(b), v.t.DType, v.t.Shape, v.n)
		return nil
	}
	return b
}

// writeFile serializes views into f, syncs and closes it. failed reports a
// failure a view recorded while it was being written.
func writeFile[V safetensors.View](f *os.File, views map[string]V, metadata map[string]string, failed func() error) error {
	w := bufio.NewWriterSize(f, 1<<20)
	if err := safetensors.SerializeToWriter(views, metadata, w); err != nil {
		return err
	}
	// A view whose tensor could not be read out wrote nothing; failed says why.
	if err := failed(); err != nil {
		return err
	}
	return w.Flush()
}

// Raw is a tensor's bytes in Go memory, little-endian and row-major.
type Raw struct {
	DType tensor.DType
	Shape []int64
	Data  []byte
}

// Encode writes tensors held in Go memory as a safetensors file to w (an
// HTTP response, say).
func Encode(w io.Writer, tensors map[string]Raw, metadata map[string]string) error {
	views := make(map[string]safetensors.View, len(tensors))
	for key, r := range tensors {
		if key == metadataKey {
			return fmt.Errorf("weights: encode: key %q is reserved for metadata", key)
		}
		shape := make([]uint64, len(r.Shape))
		n := uint64(r.DType.Size())
		for i, d := range r.Shape {
			if d < 0 {
				return fmt.Errorf("weights: encode: %s: negative dimension in %v", key, r.Shape)
			}
			shape[i] = uint64(d)
			n *= uint64(d)
		}
		if n != uint64(len(r.Data)) {
			return fmt.Errorf("weights: encode: %s: %d bytes for %s %v (want %d)", key, len(r.Data), r.DType, r.Shape, n)
		}
		views[key] = rawView{r: r, dtype: stDTypes[r.DType], shape: shape}
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := safetensors.SerializeToWriter(views, metadata, bw); err != nil {
		return fmt.Errorf("weights: encode: %w", err)
	}
	return bw.Flush()
}

type rawView struct {
	r     Raw
	dtype safetensors.DType
	shape []uint64
}

func (v rawView) DType() safetensors.DType { return v.dtype }
func (v rawView) Shape() []uint64          { return v.shape }
func (v rawView) Data() []byte             { return v.r.Data }
func (v rawView) DataLen() uint64          { return uint64(len(v.r.Data)) }

// view is the safetensors.View of a tensor. Its bytes are copied out of
// libtorch only when SerializeToWriter writes them, so saving holds a single
// tensor's bytes in Go memory at a time.
type view struct {
	s     *tensor.Scope
	t     *tensor.Tensor
	dtype safetensors.DType
	shape []uint64
	n     uint64
}

func newView(s *tensor.Scope, t *tensor.Tensor) view {
	dims := t.Shape()
	// Never nil: the library would write a nil shape as JSON null, which
	// no reader (the library included) accepts, even for a scalar.
	shape := make([]uint64, len(dims))
	n := uint64(t.DType().Size())
	for i, d := range dims {
		shape[i] = uint64(d)
		n *= uint64(d)
	}
	return view{s: s, t: t, dtype: stDTypes[t.DType()], shape: shape, n: n}
}

func (v view) DType() safetensors.DType { return v.dtype }
func (v view) Shape() []uint64          { return v.shape }
func (v view) Data() []byte             { return v.s.Bytes(v.t) }
func (v view) DataLen() uint64          { return v.n }

// errorf makes an error naming the file.
func errorf(path, format string, args ...any) error {
	return fmt.Errorf("weights: %s: %w", path, fmt.Errorf(format, args...))
}

// keyErrorf makes an error naming the file and a tensor key.
func keyErrorf(path, key, format string, args ...any) error {
	return errorf(path, "key %s: %w", key, fmt.Errorf(format, args...))
}

// ioError names the file once: an *fs.PathError would repeat its path.
func ioError(path string, err error) error {
	if pe, ok := errors.AsType[*fs.PathError](err); ok {
		return errorf(path, "%s: %w", pe.Op, pe.Err)
	}
	return errorf(path, "%w", err)
}

// Float32Bytes is v as safetensors stores F32 data: little-endian, 4 bytes
// a value. Callers that build a Tensor's Data or a wire format from Go
// float32 values use it.
func Float32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// Float32sFromBytes is the inverse of Float32Bytes; a length that is not
// a multiple of 4 is an error.
func Float32sFromBytes(b []byte) ([]float32, error) {
	if len(b)%4 != 0 {
		return nil, fmt.Errorf("%d bytes are not a whole number of float32 values", len(b))
	}
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v, nil
}
