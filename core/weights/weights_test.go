package weights

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
)

func run(t testing.TB, f func(s *tensor.Scope) error) {
	t.Helper()
	if err := tensor.Run(context.Background(), f); err != nil {
		t.Fatal(err)
	}
}

// rawFile assembles a safetensors file from a literal header and dataLen
// bytes of data, so that tests can write headers no valid writer would.
func rawFile(header string, dataLen int) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	for i := range dataLen {
		b = append(b, byte(i))
	}
	return b
}

func writeTemp(t testing.TB, name string, content []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustOpen(t testing.TB, path string) *File {
	t.Helper()
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// roundTripCases cover every dtype plus the shapes that tend to break
// writers: no elements, no dimensions, and a non-contiguous layout.
var roundTripCases = []struct {
	key  string
	make func(s *tensor.Scope) *tensor.Tensor
}{
	{"f32", func(s *tensor.Scope) *tensor.Tensor {
		return s.FromFloat32([]float32{1, -2, 3.5, 0.25, 8, -0.5}, 2, 3)
	}},
	{"f16", func(s *tensor.Scope) *tensor.Tensor {
		return s.ToDType(s.FromFloat32([]float32{1, -2, 65504, 0.5}, 4), tensor.Float16)
	}},
	{"bf16", func(s *tensor.Scope) *tensor.Tensor {
		return s.ToDType(s.FromFloat32([]float32{1, -2, 3e38, 0.5, 7, 9}, 3, 1, 2), tensor.BFloat16)
	}},
	{"i64", func(s *tensor.Scope) *tensor.Tensor { return s.FromInt64([]int64{7, -3, 1 << 40}, 3) }},
	{"bool", func(s *tensor.Scope) *tensor.Tensor { return s.FromBool([]bool{true, false, false, true}, 2, 2) }},
	{"empty.f32", func(s *tensor.Scope) *tensor.Tensor { return s.Zeros(tensor.Float32, 0, 3) }},
	{"empty.bool", func(s *tensor.Scope) *tensor.Tensor { return s.Zeros(tensor.Bool, 0) }},
	// tensor.FromFloat32 cannot make a scalar directly (see File.Load).
	{"scalar.f32", func(s *tensor.Scope) *tensor.Tensor { return s.Squeeze(s.FromFloat32([]float32{2.5}, 1), 0) }},
	{"scalar.i64", func(s *tensor.Scope) *tensor.Tensor { return s.Squeeze(s.FromInt64([]int64{-9}, 1), 0) }},
	{"transposed", func(s *tensor.Scope) *tensor.Tensor {
		return s.Transpose(s.FromFloat32([]float32{1, 2, 3, 4, 5, 6}, 2, 3), 0, 1)
	}},
}

type expected struct {
	dtype tensor.DType
	shape []int64
	bytes []byte
}

// saveRoundTripFile saves roundTripCases with metadata and returns the path
// and what each tensor held.
func saveRoundTripFile(t *testing.T, metadata map[string]string) (string, map[string]expected) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "model.safetensors")
	want := map[string]expected{}
	run(t, func(s *tensor.Scope) error {
		ts := map[string]*tensor.Tensor{}
		for _, c := range roundTripCases {
			x := c.make(s)
			if err := s.Err(); err != nil {
				return fmt.Errorf("%s: %w", c.key, err)
			}
			ts[c.key] = x
			want[c.key] = expected{x.DType(), x.Shape(), s.Bytes(x)}
		}
		return Save(s, path, ts, metadata)
	})
	return path, want
}

func TestRoundTrip(t *testing.T) {
	path, want := saveRoundTripFile(t, nil)
	f := mustOpen(t, path)
	if got := f.Keys(); !slices.Equal(got, slices.Sorted(maps.Keys(want))) {
		t.Errorf("Keys() = %v", got)
	}
	if len(f.Unsupported()) != 0 {
		t.Errorf("Unsupported() = %v", f.Unsupported())
	}
	for _, c := range roundTripCases {
		t.Run(c.key, func(t *testing.T) {
			w := want[c.key]
			info, ok := f.Info(c.key)
			if !ok || info.Key != c.key || info.DType != w.dtype || !slices.Equal(info.Shape, w.shape) ||
				info.Offset[1]-info.Offset[0] != int64(len(w.bytes)) {
				t.Errorf("Info = %+v, %v; want %v %v of %d bytes", info, ok, w.dtype, w.shape, len(w.bytes))
			}
			run(t, func(s *tensor.Scope) error {
				x := f.Load(s, c.key)
				if err := s.Err(); err != nil {
					return err
				}
				if x.DType() != w.dtype || !slices.Equal(x.Shape(), w.shape) {
					t.Errorf("loaded %v, want %v %v", x, w.dtype, w.shape)
				}
				if got := s.Bytes(x); !bytes.Equal(got, w.bytes) {
					t.Errorf("bytes = %x, want %x", got, w.bytes)
				}
				return s.Err()
			})
		})
	}
}

func TestMetadataRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		meta map[string]string
	}{
		{"nil", nil},
		{"empty", map[string]string{}},
		{"several", map[string]string{"format": "pt", "quote\"s": "new\nline", "ünï": "çødé", "": ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, _ := saveRoundTripFile(t, tc.meta)
			want := tc.meta
			if want == nil {
				want = map[string]string{}
			}
			got := mustOpen(t, path).Metadata()
			if got == nil || !maps.Equal(got, want) {
				t.Errorf("Open: Metadata() = %#v, want %#v", got, want)
			}
			_, got, err := ReadHeader(path)
			if err != nil || got == nil || !maps.Equal(got, want) {
				t.Errorf("ReadHeader: metadata = %#v, %v; want %#v", got, err, want)
			}
		})
	}
}

func TestReadHeaderAgreesWithOpen(t *testing.T) {
	path, _ := saveRoundTripFile(t, nil)
	f := mustOpen(t, path)
	infos, _, err := ReadHeader(path)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, info := range infos {
		keys = append(keys, info.Key)
		if want, _ := f.Info(info.Key); !reflect.DeepEqual(info, want) {
			t.Errorf("ReadHeader: %+v, Open: %+v", info, want)
		}
	}
	if !slices.Equal(keys, f.Keys()) {
		t.Errorf("ReadHeader keys %v, Open keys %v", keys, f.Keys())
	}
}

func TestUnsupportedDTypes(t *testing.T) {
	path := writeTemp(t, "mixed.safetensors", rawFile(`{
		"d": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
		"i": {"dtype": "I32", "shape": [2], "data_offsets": [8, 16]},
		"f": {"dtype": "F32", "shape": [1], "data_offsets": [16, 20]},
		"u": {"dtype": "U8", "shape": [0], "data_offsets": [20, 20]}
	}`, 20))
	f := mustOpen(t, path)
	if got := f.Keys(); !slices.Equal(got, []string{"f"}) {
		t.Errorf("Keys() = %v", got)
	}
	if got, want := f.Unsupported(), map[string]string{"d": "F64", "i": "I32", "u": "U8"}; !maps.Equal(got, want) {
		t.Errorf("Unsupported() = %v, want %v", got, want)
	}
	if _, ok := f.Info("d"); ok {
		t.Error("Info reports an unsupported key")
	}
	infos, _, err := ReadHeader(path)
	if err != nil || len(infos) != 1 || infos[0].Key != "f" {
		t.Errorf("ReadHeader = %+v, %v", infos, err)
	}
	run(t, func(s *tensor.Scope) error {
		if x := f.Load(s, "f"); !x.Valid() || !slices.Equal(x.Shape(), []int64{1}) {
			t.Errorf("Load(f) = %v", x)
		}
		return s.Err()
	})
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		f.Load(s, "d")
		return nil
	})
	want := "weights: " + path + ": key d: dtype F64 is not supported (want F32, F16, BF16, I64 or BOOL)"
	if err == nil || err.Error() != want {
		t.Errorf("Load(d) error = %v, want %q", err, want)
	}
}

// brokenFiles are malformed files, each with the part of the error that
// says what is wrong (the path is checked separately).
var brokenFiles = []struct {
	name    string
	content []byte
	want    string
}{
	{"empty", nil, "empty file"},
	{"shorter than 8 bytes", []byte{1, 2, 3, 4, 5}, "file is 5 bytes, too short for the 8-byte header length"},
	{"header length past end", append(binary.LittleEndian.AppendUint64(nil, 1000), "{}"...),
		"header length 1000 exceeds the 2 bytes after the length prefix"},
	{"empty header", rawFile("", 0), "header is empty"},
	{"header not JSON", rawFile(`{"w": {"dtype": "F32",`, 0), "header is not valid JSON"},
	{"header not UTF-8", rawFile("{\"\xff\": 1}", 0), "header is not valid UTF-8"},
	{"header an array", rawFile(`[{"dtype": "F32"}]`, 0), "header is not a JSON object"},
	{"header null", rawFile(`null`, 0), "header is not a JSON object"},
	{"header followed by JSON", rawFile(`{} {}`, 0), "header has data after its JSON object"},
	{"entry not an object", rawFile(`{"w": [1]}`, 0), "key w: entry is not a JSON object"},
	{"missing field", rawFile(`{"w": {"dtype": "F32", "shape": [1]}}`, 4), "key w: missing data_offsets"},
	{"extra field", rawFile(`{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}`, 4),
		`key w: unexpected field "x"`},
	{"null shape", rawFile(`{"w": {"dtype": "F32", "shape": null, "data_offsets": [0, 4]}}`, 4),
		"key w: shape null is not an array of natural numbers"},
	{"null dimension", rawFile(`{"w": {"dtype": "F32", "shape": [null], "data_offsets": [0, 0]}}`, 0),
		"key w: shape [null] is not an array of natural numbers"},
	{"negative dimension", rawFile(`{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}`, 4),
		"key w: shape [-1] is not an array of natural numbers"},
	{"quoted offset", rawFile(`{"w": {"dtype": "F32", "shape": [1], "data_offsets": ["0", 4]}}`, 4),
		`key w: data_offsets ["0", 4] are not two natural numbers`},
	{"three offsets", rawFile(`{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}`, 4),
		"key w: data_offsets [0, 4, 8] are not two natural numbers"},
	{"unknown dtype", rawFile(`{"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}`, 2),
		`key w: unknown dtype "F8_E4M3"`},
	{"lower-case dtype", rawFile(`{"w": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}}`, 4),
		`key w: unknown dtype "f32"`},
	{"non-string metadata", rawFile(`{"__metadata__": {"a": 1}}`, 0), `__metadata__: value of "a" is not a string`},
	{"null metadata value", rawFile(`{"__metadata__": {"a": null}}`, 0), `__metadata__: value of "a" is not a string`},
	{"duplicate key", rawFile(`{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
		"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}`, 8), "key w: appears twice in the header"},
	{"truncated data", rawFile(`{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}`, 10),
		"key w: data_offsets [0 24] end past the 10-byte data section (truncated file?)"},
	{"offsets reversed", rawFile(`{"w": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}}`, 4),
		"key w: data_offsets [4 0] end before they begin"},
	{"size mismatch", rawFile(`{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}`, 20),
		"key w: shape [2 3] of F32 needs 24 bytes but data_offsets [0 20] span 20"},
	{"shape overflows", rawFile(`{"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 0], "data_offsets": [0, 0]}}`, 0),
		"key w: shape [4294967296 4294967296 0] is too large"},
	{"bytes overflow", rawFile(`{"w": {"dtype": "I64", "shape": [4611686018427387904], "data_offsets": [0, 0]}}`, 0),
		"key w: shape [4611686018427387904] of I64 is too large"},
	{"overlapping offsets", rawFile(`{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
		"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}`, 12),
		"key b: data_offsets [4 12] overlap those of key a [0 8]"},
	{"gap between tensors", rawFile(`{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
		"b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}`, 20),
		"key b: data_offsets [12 20] leave 4 unused bytes after key a [0 8]"},
	{"gap at start", rawFile(`{"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}`, 12),
		"key a: data_offsets [4 12] leave 4 unused bytes at the start of the data section"},
	{"data after last tensor", rawFile(`{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}`, 12),
		"4 bytes of data after the last tensor"},
}

func TestBrokenFiles(t *testing.T) {
	for _, tc := range brokenFiles {
		t.Run(tc.name, func(t *testing.T) {
			path := writeTemp(t, "broken.safetensors", tc.content)
			f, err := Open(path)
			if err == nil {
				f.Close()
				t.Fatal("Open succeeded")
			}
			if want := "weights: " + path + ": " + tc.want; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("Open: %v\nwant %q", err, want)
			}
			_, _, herr := ReadHeader(path)
			if herr == nil || herr.Error() != err.Error() {
				t.Errorf("ReadHeader: %v\nOpen:       %v", herr, err)
			}
			if pf, perr := Parse("body", tc.content); perr == nil {
				pf.Close()
				t.Errorf("Parse accepted what Open refused (%v)", err)
			} else if !strings.HasPrefix(perr.Error(), "weights: body: ") {
				t.Errorf("Parse: %v: want an error naming the body", perr)
			}
		})
	}
}

// TestHeaderLengthLimit needs a file longer than the limit; a sparse one
// costs no disk space.
func TestHeaderLengthLimit(t *testing.T) {
	path := writeTemp(t, "huge.safetensors", binary.LittleEndian.AppendUint64(nil, maxHeaderLen+1))
	if err := os.Truncate(path, 8+maxHeaderLen+1); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("weights: %s: header length %d exceeds the limit of %d", path, maxHeaderLen+1, maxHeaderLen)
	if _, err := Open(path); err == nil || err.Error() != want {
		t.Errorf("Open: %v, want %q", err, want)
	}
	if _, _, err := ReadHeader(path); err == nil || err.Error() != want {
		t.Errorf("ReadHeader: %v, want %q", err, want)
	}
}

func TestOpenBadPaths(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.safetensors")
	for _, tc := range []struct {
		name, path, want string
		is               error
	}{
		{"missing", missing, "weights: " + missing + ": open: no such file or directory", fs.ErrNotExist},
		{"directory", dir, "weights: " + dir + ": not a regular file", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(tc.path)
			if err == nil || err.Error() != tc.want || tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("Open: %v, want %q", err, tc.want)
			}
			_, _, err = ReadHeader(tc.path)
			if err == nil || err.Error() != tc.want {
				t.Errorf("ReadHeader: %v, want %q", err, tc.want)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	path, _ := saveRoundTripFile(t, nil)
	for _, tc := range []struct {
		name, key, want string
		close           bool
	}{
		{"missing key", "nope", "key nope: not in file", false},
		{"after close", "f32", "key f32: file is closed", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := mustOpen(t, path)
			if tc.close {
				if err := f.Close(); err != nil {
					t.Fatal(err)
				}
				if err := f.Close(); err != nil {
					t.Errorf("second Close: %v", err)
				}
			}
			err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
				if x := f.Load(s, tc.key); x != nil {
					t.Errorf("Load returned %v", x)
				}
				return nil
			})
			if want := "weights: " + path + ": " + tc.want; err == nil || err.Error() != want {
				t.Errorf("error = %v, want %q", err, want)
			}
		})
	}
}

func TestSaveFailuresLeaveNoFile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tensors func(s *tensor.Scope) map[string]*tensor.Tensor
		want    string
	}{
		{"nil tensor", func(*tensor.Scope) map[string]*tensor.Tensor {
			return map[string]*tensor.Tensor{"w": nil}
		}, "key w: tensor is nil or dropped"},
		{"dropped tensor", func(s *tensor.Scope) map[string]*tensor.Tensor {
			x := s.FromFloat32([]float32{1}, 1)
			x.Drop()
			return map[string]*tensor.Tensor{"w": x}
		}, "key w: tensor is nil or dropped"},
		{"reserved key", func(s *tensor.Scope) map[string]*tensor.Tensor {
			return map[string]*tensor.Tensor{"__metadata__": s.FromFloat32([]float32{1}, 1)}
		}, "key __metadata__: reserved for metadata"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "out.safetensors")
			old := rawFile("{}      ", 0)
			if err := os.WriteFile(path, old, 0o644); err != nil {
				t.Fatal(err)
			}
			run(t, func(s *tensor.Scope) error {
				err := Save(s, path, tc.tensors(s), nil)
				if want := "weights: " + path + ": " + tc.want; err == nil || err.Error() != want {
					t.Errorf("Save: %v, want %q", err, want)
				}
				return nil
			})
			if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, old) {
				t.Errorf("old file changed: %q, %v", got, err)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("directory holds %d files, want 1", len(entries))
			}
		})
	}
}

func TestSaveIntoMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no", "such", "dir", "x.safetensors")
	run(t, func(s *tensor.Scope) error {
		err := Save(s, path, map[string]*tensor.Tensor{"w": s.FromFloat32([]float32{1}, 1)}, nil)
		if err == nil || !strings.HasPrefix(err.Error(), "weights: "+path+": ") || !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Save: %v", err)
		}
		return nil
	})
}

func FuzzOpen(f *testing.F) {
	f.Add(rawFile(`{"__metadata__": {"format": "pt"},
		"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
		"b": {"dtype": "BF16", "shape": [], "data_offsets": [8, 10]},
		"c": {"dtype": "BOOL", "shape": [0, 3], "data_offsets": [10, 10]},
		"d": {"dtype": "F64", "shape": [1], "data_offsets": [10, 18]},
		"e": {"dtype": "I64", "shape": [1, 1], "data_offsets": [18, 26]},
		"f": {"dtype": "F16", "shape": [3], "data_offsets": [26, 32]}}`, 32))
	for _, tc := range brokenFiles {
		f.Add(tc.content)
	}
	f.Fuzz(func(t *testing.T, content []byte) {
		path := writeTemp(t, "fuzz.safetensors", content)
		infos, meta, herr := ReadHeader(path)
		file, err := Open(path)
		if (err == nil) != (herr == nil) {
			t.Fatalf("Open: %v\nReadHeader: %v", err, herr)
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "weights: "+path+": ") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		defer file.Close()
		if !maps.Equal(meta, file.Metadata()) {
			t.Errorf("metadata: ReadHeader %v, Open %v", meta, file.Metadata())
		}
		if len(infos) != len(file.Keys()) {
			t.Errorf("ReadHeader has %d keys, Open %d", len(infos), len(file.Keys()))
		}
		for _, info := range infos {
			if want, _ := file.Info(info.Key); !reflect.DeepEqual(info, want) {
				t.Errorf("ReadHeader: %+v, Open: %+v", info, want)
			}
			err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
				x := file.Load(s, info.Key)
				if s.Err() == nil && (x.DType() != info.DType || !slices.Equal(x.Shape(), info.Shape) ||
					int64(len(s.Bytes(x))) != info.Offset[1]-info.Offset[0]) {
					t.Errorf("Load(%q) = %v, want %+v", info.Key, x, info)
				}
				return nil
			})
			if err != nil {
				t.Errorf("Load(%q): %v", info.Key, err)
			}
		}
		for key := range file.Unsupported() {
			err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
				if x := file.Load(s, key); x != nil {
					t.Errorf("Load(%q) of an unsupported dtype = %v", key, x)
				}
				return nil
			})
			if err == nil || !strings.Contains(err.Error(), path) {
				t.Errorf("Load(%q) of an unsupported dtype: %v", key, err)
			}
		}
	})
}

func TestScalar(t *testing.T) {
	var data []byte
	data = binary.LittleEndian.AppendUint32(data, math.Float32bits(8)) // a: F32 []
	data = binary.LittleEndian.AppendUint16(data, 0x3800)              // h: F16 [1], 0.5
	data = binary.LittleEndian.AppendUint16(data, 0xC000)              // m: F16 [1], -2
	data = binary.LittleEndian.AppendUint16(data, 0x4180)              // b: BF16 [1,1], 16
	data = binary.LittleEndian.AppendUint64(data, 4)                   // i: I64 [], 4
	data = binary.LittleEndian.AppendUint32(data, math.Float32bits(1)) // v: F32 [2]
	data = binary.LittleEndian.AppendUint32(data, math.Float32bits(2)) //
	data = binary.LittleEndian.AppendUint16(data, 0x0001)              // s: F16 [1], smallest subnormal
	header := `{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]},` +
		`"h":{"dtype":"F16","shape":[1],"data_offsets":[4,6]},` +
		`"m":{"dtype":"F16","shape":[1],"data_offsets":[6,8]},` +
		`"b":{"dtype":"BF16","shape":[1,1],"data_offsets":[8,10]},` +
		`"i":{"dtype":"I64","shape":[],"data_offsets":[10,18]},` +
		`"v":{"dtype":"F32","shape":[2],"data_offsets":[18,26]},` +
		`"s":{"dtype":"F16","shape":[1],"data_offsets":[26,28]}}`
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	f := mustOpen(t, writeTemp(t, "scalars.safetensors", append(append(b, header...), data...)))
	for key, want := range map[string]float64{"a": 8, "h": 0.5, "m": -2, "b": 16, "i": 4, "s": math.Ldexp(1, -24)} {
		got, err := f.Scalar(key)
		if err != nil || got != want {
			t.Errorf("Scalar(%q) = %v, %v; want %v", key, got, err, want)
		}
	}
	for key, msg := range map[string]string{"v": "not one element", "nope": "not in file"} {
		if _, err := f.Scalar(key); err == nil || !strings.Contains(err.Error(), msg) || !strings.Contains(err.Error(), key) {
			t.Errorf("Scalar(%q) error = %v; want one naming the key and %q", key, err, msg)
		}
	}
}

func TestEncodeThenParseRoundTrips(t *testing.T) {
	f32 := make([]byte, 0, 24)
	for _, v := range []float32{1, -2, 3.5, 0, 1e-3, 6} {
		f32 = binary.LittleEndian.AppendUint32(f32, math.Float32bits(v))
	}
	in := map[string]Raw{
		"output.0": {DType: tensor.Float32, Shape: []int64{2, 3}, Data: f32},
		"output.1": {DType: tensor.Int64, Shape: []int64{}, Data: binary.LittleEndian.AppendUint64(nil, 7)},
		"empty":    {DType: tensor.BFloat16, Shape: []int64{0, 4}, Data: nil},
	}
	var buf bytes.Buffer
	if err := Encode(&buf, in, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	f, err := Parse("response", buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Metadata()["k"] != "v" {
		t.Errorf("metadata %v", f.Metadata())
	}
	for key, r := range in {
		info, ok := f.Info(key)
		if !ok || info.DType != r.DType || !slices.Equal(info.Shape, r.Shape) {
			t.Errorf("%s: %+v", key, info)
		}
	}
	run(t, func(s *tensor.Scope) error {
		got := s.Bytes(f.Load(s, "output.0"))
		if !bytes.Equal(got, f32) {
			t.Errorf("output.0 bytes differ")
		}
		return s.Err()
	})
	for name, bad := range map[string]Raw{
		"short data":   {DType: tensor.Float32, Shape: []int64{2}, Data: make([]byte, 4)},
		"negative dim": {DType: tensor.Float32, Shape: []int64{-1}, Data: nil},
	} {
		if err := Encode(io.Discard, map[string]Raw{"x": bad}, nil); err == nil || !strings.Contains(err.Error(), "x:") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestFloat64s(t *testing.T) {
	// One tensor per floating dtype, holding values each dtype represents
	// exactly, and one integer tensor.
	data := binary.LittleEndian.AppendUint64(nil, math.Float64bits(math.Pi))
	data = binary.LittleEndian.AppendUint64(data, math.Float64bits(-1e-300))
	data = binary.LittleEndian.AppendUint32(data, math.Float32bits(1.5))
	data = binary.LittleEndian.AppendUint16(data, tensor.Float16Bits(-0.25))
	data = binary.LittleEndian.AppendUint16(data, tensor.BFloat16Bits(3))
	data = binary.LittleEndian.AppendUint64(data, 7)
	header := `{"d": {"dtype": "F64", "shape": [2, 1], "data_offsets": [0, 16]},
		"f": {"dtype": "F32", "shape": [1], "data_offsets": [16, 20]},
		"h": {"dtype": "F16", "shape": [], "data_offsets": [20, 22]},
		"b": {"dtype": "BF16", "shape": [1], "data_offsets": [22, 24]},
		"i": {"dtype": "I64", "shape": [1], "data_offsets": [24, 32]}}`
	raw := rawFile(header, 0)
	path := writeTemp(t, "floats.safetensors", append(raw, data...))
	f := mustOpen(t, path)
	for _, c := range []struct {
		key   string
		want  []float64
		shape []int64
	}{
		{"d", []float64{math.Pi, -1e-300}, []int64{2, 1}},
		{"f", []float64{1.5}, []int64{1}},
		{"h", []float64{-0.25}, []int64{}},
		{"b", []float64{3}, []int64{1}},
	} {
		got, shape, err := f.Float64s(c.key)
		if err != nil || !slices.Equal(got, c.want) || !slices.Equal(shape, c.shape) {
			t.Errorf("Float64s(%s) = %v %v, %v; want %v %v", c.key, got, shape, err, c.want, c.shape)
		}
	}
	for key, want := range map[string]string{"i": "dtype I64 is not floating point", "x": "key x: not in file"} {
		if _, _, err := f.Float64s(key); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Float64s(%s) error = %v, want %q", key, err, want)
		}
	}
}

func TestFloat32Bytes(t *testing.T) {
	cases := [][]float32{nil, {0}, {1, -2.5, float32(math.Inf(1)), math.SmallestNonzeroFloat32, math.MaxFloat32}}
	for _, v := range cases {
		b := Float32Bytes(v)
		if len(b) != 4*len(v) {
			t.Fatalf("%v: %d bytes", v, len(b))
		}
		for i, x := range v {
			if got := math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])); got != x {
				t.Errorf("%v: value %d encodes %v", v, i, got)
			}
		}
		back, err := Float32sFromBytes(b)
		if err != nil || len(back) != len(v) {
			t.Fatalf("%v: round trip %v, %v", v, back, err)
		}
		for i := range v {
			if back[i] != v[i] {
				t.Errorf("%v: round trip value %d is %v", v, i, back[i])
			}
		}
	}
	if _, err := Float32sFromBytes(make([]byte, 5)); err == nil {
		t.Error("5 bytes decoded without an error")
	}
}
