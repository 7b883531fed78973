package predict

import (
	"math"

	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

// resizeBilinear scales an image to w×h as PIL's
// Image.resize((w, h), Image.Resampling.BILINEAR) does on an 8-bit RGB
// image: a triangle filter of support 1, widened by the scale factor when
// shrinking (so shrinking averages), horizontal pass then vertical pass,
// each rounded to 8 bits through 22-bit fixed-point weights. An image
// already w×h is returned as is (PIL copies it).
func resizeBilinear(m *pipeline.RGB, w, h int) *pipeline.RGB {
	out := m
	if w != m.Width {
		out = resampleAxis(out, w, true)
	}
	if h != m.Height {
		out = resampleAxis(out, h, false)
	}
	return out
}

// precisionBits is the fixed-point precision of PIL's 8-bit resampling.
const precisionBits = 22

// triangle is PIL's bilinear filter.
func triangle(x float64) float64 {
	x = math.Abs(x)
	if x < 1 {
		return 1 - x
	}
	return 0
}

// axisWeights returns, for each output index, the first input index and
// the fixed-point weights of the inputs it mixes (PIL's precompute_coeffs
// and normalize_coeffs_8bpc).
func axisWeights(in, out int) (first []int, kernels [][]int32) {
	scale := float64(in) / float64(out)
	filterScale := math.Max(scale, 1)
	support := filterScale // the triangle's support is 1
	first = make([]int, out)
	kernels = make([][]int32, out)
	for o := range out {
		center := (float64(o) + 0.5) * scale
		lo := max(int(center-support+0.5), 0)
		hi := min(int(center+support+0.5), in)
		ws := make([]float64, hi-lo)
		total := 0.0
		for i := range ws {
			ws[i] = triangle((float64(i+lo) - center + 0.5) / filterScale)
			total += ws[i]
		}
		k := make([]int32, len(ws))
		for i, v := range ws {
			if total != 0 {
				v /= total
			}
			if v < 0 {
				k[i] = int32(-0.5 + v*(1<<precisionBits))
			} else {
				k[i] = int32(0.5 + v*(1<<precisionBits))
			}
		}
		first[o], kernels[o] = lo, k
	}
	return first, kernels
}

// resampleAxis scales one axis (the width when horizontal) to n pixels.
func resampleAxis(m *pipeline.RGB, n int, horizontal bool) *pipeline.RGB {
	var out *pipeline.RGB
	var in, lines, stride, step, outStride, outStep int
	if horizontal {
		out = pipeline.NewRGB(n, m.Height)
		in, lines, stride, step, outStride, outStep = m.Width, m.Height, 3*m.Width, 3, 3*n, 3
	} else {
		out = pipeline.NewRGB(m.Width, n)
		in, lines, stride, step, outStride, outStep = m.Height, m.Width, 3, 3*m.Width, 3, 3*m.Width
	}
	first, kernels := axisWeights(in, n)
	for l := range lines {
		for o := range n {
			k := kernels[o]
			for c := range 3 {
				acc := int32(1 << (precisionBits - 1))
				base := l*stride + first[o]*step + c
				for i, w := range k {
					acc += int32(m.Pix[base+i*step]) * w
				}
				out.Pix[l*outStride+o*outStep+c] = uint8(min(max(acc>>precisionBits, 0), 255))
			}
		}
	}
	return out
}
