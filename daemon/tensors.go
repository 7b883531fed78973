package daemon

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// JSONTensor is a tensor in a JSON request or response: values as a flat
// row-major array ("data"), or as little-endian bytes in base64
// ("data_base64", exact and compact).
type JSONTensor struct {
	DType      string      `json:"dtype"`
	Shape      []int64     `json:"shape"`
	Data       []float64   `json:"data,omitempty"`
	DataBase64 string      `json:"data_base64,omitempty"`
	raw        weights.Raw `json:"-"`
}

// tensorNameRE is the naming `refinersd run` uses for its input and output
// files: input.N, output.N and context.<name>.<key>.
var tensorNameRE = regexp.MustCompile(`^(input\.[0-9]{1,4}|context\.[A-Za-z0-9_]{1,64}\.[A-Za-z0-9_]{1,64})$`)

// maxJSONElements bounds a JSON array's length before anything is
// allocated for it (the body limit bounds it too; this gives a clear error).
const maxJSONElements = 1 << 26

// checkShape validates a tensor's shape and returns its element count.
func checkShape(name string, shape []int64) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 || d > maxJSONElements {
			return 0, fmt.Errorf("%s: bad dimension %d in shape %v", name, d, shape)
		}
		n *= d
		if n > maxJSONElements {
			return 0, fmt.Errorf("%s: shape %v has more than %d elements", name, shape, maxJSONElements)
		}
	}
	return n, nil
}

// appendFloat appends element i, of value v, as dt's little-endian bytes.
// A value dt cannot hold (a fraction for int64, 2 for bool, 1e39 for
// float32) is an error, not a silent Inf or truncation.
func appendFloat(b []byte, dt tensor.DType, v float64, i int64) ([]byte, error) {
	switch dt {
	case tensor.Float32, tensor.BFloat16, tensor.Float16:
		f := float32(v)
		if math.IsInf(float64(f), 0) && !math.IsInf(v, 0) {
			return b, fmt.Errorf("element %d (%v) is out of the range of %s", i, v, dt)
		}
		switch dt {
		case tensor.Float32:
			return binary.LittleEndian.AppendUint32(b, math.Float32bits(f)), nil
		case tensor.BFloat16:
			return binary.LittleEndian.AppendUint16(b, tensor.BFloat16Bits(f)), nil
		}
		return binary.LittleEndian.AppendUint16(b, tensor.Float16Bits(f)), nil
	case tensor.Int64:
		if v != math.Trunc(v) || math.Abs(v) > 1<<53 {
			return b, fmt.Errorf("element %d (%v) is not an integer", i, v)
		}
		return appendInt64(b, int64(v)), nil
	case tensor.Bool:
		if v != 0 && v != 1 {
			return b, fmt.Errorf("element %d (%v) is not 0 or 1", i, v)
		}
		return append(b, byte(v)), nil
	}
	return b, fmt.Errorf("dtype %s cannot be given as JSON values", dt)
}

func appendInt64(b []byte, v int64) []byte { return binary.LittleEndian.AppendUint64(b, uint64(v)) }

// decodeTensor turns a JSON tensor held in memory into raw bytes, checking
// that the data fills the shape.
func decodeTensor(name string, jt *JSONTensor) (weights.Raw, error) {
	dt, err := tensor.ParseDType(jt.DType)
	if err != nil {
		return weights.Raw{}, fmt.Errorf("%s: %w", name, err)
	}
	n, err := checkShape(name, jt.Shape)
	if err != nil {
		return weights.Raw{}, err
	}
	shape := append([]int64{}, jt.Shape...)
	if jt.DataBase64 != "" {
		if jt.Data != nil {
			return weights.Raw{}, fmt.Errorf("%s: give data or data_base64, not both", name)
		}
		b, err := base64.StdEncoding.DecodeString(jt.DataBase64)
		if err != nil {
			return weights.Raw{}, fmt.Errorf("%s: data_base64: %w", name, err)
		}
		if int64(len(b)) != n*int64(dt.Size()) {
			return weights.Raw{}, fmt.Errorf("%s: data_base64 has %d bytes; %s %v needs %d", name, len(b), dt, shape, n*int64(dt.Size()))
		}
		return weights.Raw{DType: dt, Shape: shape, Data: b}, nil
	}
	if int64(len(jt.Data)) != n {
		return weights.Raw{}, fmt.Errorf("%s: %d values for shape %v (%d elements)", name, len(jt.Data), shape, n)
	}
	b := make([]byte, 0, n*int64(dt.Size()))
	for i, v := range jt.Data {
		if b, err = appendFloat(b, dt, v, int64(i)); err != nil {
			return weights.Raw{}, fmt.Errorf("%s: %w", name, err)
		}
	}
	return weights.Raw{DType: dt, Shape: shape, Data: b}, nil
}

// encodeTensor turns raw bytes into a JSON tensor, as values or base64.
func encodeTensor(r weights.Raw, asBase64 bool) JSONTensor {
	jt := JSONTensor{DType: r.DType.String(), Shape: r.Shape}
	if jt.Shape == nil {
		jt.Shape = []int64{}
	}
	if asBase64 {
		jt.DataBase64 = base64.StdEncoding.EncodeToString(r.Data)
		return jt
	}
	n := len(r.Data) / r.DType.Size()
	jt.Data = make([]float64, n)
	for i := range n {
		switch r.DType {
		case tensor.Float32:
			jt.Data[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(r.Data[4*i:])))
		case tensor.BFloat16:
			jt.Data[i] = float64(tensor.BFloat16FromBits(binary.LittleEndian.Uint16(r.Data[2*i:])))
		case tensor.Float16:
			jt.Data[i] = float64(tensor.Float16FromBits(binary.LittleEndian.Uint16(r.Data[2*i:])))
		case tensor.Int64:
			jt.Data[i] = float64(int64(binary.LittleEndian.Uint64(r.Data[8*i:])))
		case tensor.Bool:
			jt.Data[i] = float64(r.Data[i])
		}
	}
	return jt
}

// jsonOutputs marshals float32 tensors with float32 precision, so that
// values round-trip exactly and JSON stays short.
type jsonOutputs map[string]JSONTensor

func (o jsonOutputs) MarshalJSON() ([]byte, error) {
	keys := make([]string, 0, len(o))
	for k := range o {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	buf := []byte{'{'}
	for i, k := range keys {
		if i > 0 {
			buf = append(buf, ',')
		}
		kb, _ := json.Marshal(k)
		buf = append(append(buf, kb...), ':')
		t := o[k]
		if t.DType != "float32" || t.Data == nil {
			b, err := json.Marshal(t)
			if err != nil {
				return nil, err
			}
			buf = append(buf, b...)
			continue
		}
		shape, _ := json.Marshal(t.Shape)
		buf = append(buf, `{"dtype":"float32","shape":`...)
		buf = append(buf, shape...)
		buf = append(buf, `,"data":[`...)
		for j, v := range t.Data {
			if j > 0 {
				buf = append(buf, ',')
			}
			f := float32(v)
			if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
				return nil, fmt.Errorf("output %s: element %d is %v, which JSON cannot carry; ask for safetensors or data_base64", k, j, f)
			}
			buf = appendFloat32(buf, f)
		}
		buf = append(buf, "]}"...)
	}
	return append(buf, '}'), nil
}

func appendFloat32(buf []byte, f float32) []byte {
	return strconv.AppendFloat(buf, float64(f), 'g', -1, 32)
}
