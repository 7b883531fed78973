package predict

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/models/sam/samkeys"
	"github.com/refiners-go/refiners/torchfile"
)

// isTorchFile reports whether path starts as a PyTorch file (a zip archive
// or a legacy pickle) rather than safetensors.
func isTorchFile(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var head [9]byte
	if _, err := io.ReadFull(f, head[:]); err != nil {
		return false
	}
	if head[8] == '{' { // safetensors: an 8-byte length, then the JSON header
		return false
	}
	return string(head[:4]) == "PK\x03\x04" || (head[0] == 0x80 && head[1] == 0x02)
}

// torchDTypes are the element types an official checkpoint may hold.
var torchDTypes = map[torchfile.DType]tensor.DType{
	torchfile.F32: tensor.Float32, torchfile.F16: tensor.Float16, torchfile.BF16: tensor.BFloat16,
}

// openOfficial reads an official segment_anything checkpoint (a state dict
// saved by torch.save, read without Python by torchfile) and renames it
// to Refiners' keys in memory with samkeys.Official, as an in-memory
// safetensors file.
func openOfficial(path string) (*weights.File, error) {
	tf, err := torchfile.Open(path)
	if err != nil {
		return nil, fmt.Errorf("sam: %w", err)
	}
	defer tf.Close()
	named, _, err := torchfile.Flatten(tf.Root())
	if err != nil {
		return nil, fmt.Errorf("sam: %s: %w", path, err)
	}
	shapes := map[string][]int64{}
	byKey := map[string]*torchfile.Tensor{}
	for _, n := range named {
		shapes[n.Key], byKey[n.Key] = n.Tensor.Shape, n.Tensor
	}
	rules, err := samkeys.Official(shapes)
	if err != nil {
		return nil, fmt.Errorf("sam: %s: %w", path, err)
	}
	raws := make(map[string]weights.Raw, len(rules))
	for _, r := range rules {
		dt, ok := torchDTypes[byKey[r.Sources[0]].DType]
		if !ok {
			return nil, fmt.Errorf("sam: %s: %s has dtype %s (want F32, F16 or BF16)", path, r.Sources[0], byKey[r.Sources[0]].DType)
		}
		var data []byte
		for _, s := range r.Sources {
			t := byKey[s]
			if t.DType != byKey[r.Sources[0]].DType {
				return nil, fmt.Errorf("sam: %s: %s and %s have different dtypes", path, s, r.Sources[0])
			}
			b, release, err := t.Bytes()
			if err != nil {
				return nil, fmt.Errorf("sam: %s: %w", path, err)
			}
			data = append(data, b...)
			release()
		}
		if r.Op == samkeys.Transpose {
			data = transpose2D(data, byKey[r.Sources[0]].Shape, t2size(dt))
		}
		raws[r.Target] = weights.Raw{DType: dt, Shape: r.Shape, Data: data}
	}
	var buf bytes.Buffer
	if err := weights.Encode(&buf, raws, map[string]string{"converted_from": "segment_anything"}); err != nil {
		return nil, fmt.Errorf("sam: %s: %w", path, err)
	}
	f, err := weights.Parse(path, buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("sam: %s: %w", path, err)
	}
	return f, nil
}

func t2size(d tensor.DType) int {
	if d == tensor.Float32 {
		return 4
	}
	return 2
}

// transpose2D transposes a row-major [rows, cols] array of size-byte
// elements.
func transpose2D(data []byte, shape []int64, size int) []byte {
	rows, cols := int(shape[0]), int(shape[1])
	out := make([]byte, len(data))
	for r := range rows {
		for c := range cols {
			copy(out[(c*rows+r)*size:(c*rows+r+1)*size], data[(r*cols+c)*size:(r*cols+c+1)*size])
		}
	}
	return out
}
