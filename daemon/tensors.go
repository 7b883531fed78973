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

// decodeTensor turns a JSON tensor into raw bytes, checking that the data
// fills the shape.
func decodeTensor(name string, jt *JSONTensor) (weights.Raw, error) {
	dt, err := tensor.ParseDType(jt.DType)
	if err != nil {
		return weights.Raw{}, fmt.Errorf("%s: %w", name, err)
	}
	n := int64(1)
	for _, d := range jt.Shape {
		if d < 0 || d > maxJSONElements {
			return weights.Raw{}, fmt.Errorf("%s: bad dimension %d in shape %v", name, d, jt.Shape)
		}
		n *= d
		if n > maxJSONElements {
			return weights.Raw{}, fmt.Errorf("%s: shape %v has more than %d elements", name, jt.Shape, maxJSONElements)
		}
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
		switch dt {
		case tensor.Float32:
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(float32(v)))
		case tensor.BFloat16:
			b = binary.LittleEndian.AppendUint16(b, tensor.BFloat16Bits(float32(v)))
		case tensor.Float16:
			b = binary.LittleEndian.AppendUint16(b, tensor.Float16Bits(float32(v)))
		case tensor.Int64:
			if v != math.Trunc(v) || math.Abs(v) > 1<<53 {
				return weights.Raw{}, fmt.Errorf("%s: element %d (%v) is not an integer", name, i, v)
			}
			b = binary.LittleEndian.AppendUint64(b, uint64(int64(v)))
		case tensor.Bool:
			if v != 0 && v != 1 {
				return weights.Raw{}, fmt.Errorf("%s: element %d (%v) is not 0 or 1", name, i, v)
			}
			b = append(b, byte(v))
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
