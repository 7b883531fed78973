package imageproc

import "math"

// Filter is one of PIL's resampling filters: its kernel and the kernel's
// support (the half-width, in input pixels, at scale 1).
type Filter struct {
	Kernel  func(x float64) float64
	Support float64
}

// Bilinear is PIL's Image.Resampling.BILINEAR: a triangle of support 1.
var Bilinear = Filter{Kernel: triangle, Support: 1}

// Bicubic is PIL's Image.Resampling.BICUBIC (the default of
// Image.resize for RGB images): cubic convolution with a = −0.5, support 2.
var Bicubic = Filter{Kernel: bicubic, Support: 2}

func triangle(x float64) float64 {
	x = math.Abs(x)
	if x < 1 {
		return 1 - x
	}
	return 0
}

func bicubic(x float64) float64 {
	const a = -0.5
	x = math.Abs(x)
	switch {
	case x < 1:
		return ((a+2)*x-(a+3))*x*x + 1
	case x < 2:
		return (((x-5)*x+8)*x - 4) * a
	}
	return 0
}

// resampleBits is the fixed-point precision of PIL's 8-bit resampling.
const resampleBits = 22

// Resize8 scales interleaved 8-bit pixels (rows top to bottom, channels
// bytes per pixel, w×h pixels) to nw×nh as PIL's Image.resize((nw, nh), f)
// does on an 8-bit image, bit for bit: the filter widened by the scale
// factor when shrinking (so shrinking averages), a horizontal pass then a
// vertical pass, each skipped when its size is unchanged and each rounded
// to 8 bits through 22-bit fixed-point weights. When the size is unchanged
// pix itself is returned.
func Resize8(pix []uint8, w, h, channels, nw, nh int, f Filter) []uint8 {
	if nw != w {
		pix = resampleAxis(pix, w, h, channels, nw, true, f)
		w = nw
	}
	if nh != h {
		pix = resampleAxis(pix, w, h, channels, nh, false, f)
	}
	return pix
}

// axisWeights returns, for each output index, the first input index and
// the fixed-point weights of the inputs it mixes (PIL's precompute_coeffs
// and normalize_coeffs_8bpc).
func axisWeights(in, out int, f Filter) (first []int, kernels [][]int32) {
	scale := float64(in) / float64(out)
	filterScale := math.Max(scale, 1)
	support := f.Support * filterScale
	first = make([]int, out)
	kernels = make([][]int32, out)
	for o := range out {
		center := (float64(o) + 0.5) * scale
		lo := max(int(center-support+0.5), 0)
		hi := min(int(center+support+0.5), in)
		ws := make([]float64, hi-lo)
		total := 0.0
		for i := range ws {
			ws[i] = f.Kernel((float64(i+lo) - center + 0.5) / filterScale)
			total += ws[i]
		}
		k := make([]int32, len(ws))
		for i, v := range ws {
			if total != 0 {
				v /= total
			}
			if v < 0 {
				k[i] = int32(-0.5 + v*(1<<resampleBits))
			} else {
				k[i] = int32(0.5 + v*(1<<resampleBits))
			}
		}
		first[o], kernels[o] = lo, k
	}
	return first, kernels
}

// resampleAxis scales one axis of a w×h image (the width when horizontal)
// to n pixels.
func resampleAxis(pix []uint8, w, h, channels, n int, horizontal bool, f Filter) []uint8 {
	// step: bytes between neighbours along the axis; stride: between lines.
	var in, lines, stride, step, outStride, outStep int
	if horizontal {
		in, lines, stride, step, outStride, outStep = w, h, channels*w, channels, channels*n, channels
	} else {
		in, lines, stride, step, outStride, outStep = h, w, channels, channels*w, channels, channels*w
	}
	out := make([]uint8, channels*n*lines)
	first, kernels := axisWeights(in, n, f)
	for l := range lines {
		for o := range n {
			k := kernels[o]
			for c := range channels {
				acc := int32(1 << (resampleBits - 1))
				base := l*stride + first[o]*step + c
				for i, wt := range k {
					acc += int32(pix[base+i*step]) * wt
				}
				out[l*outStride+o*outStep+c] = uint8(min(max(acc>>resampleBits, 0), 255))
			}
		}
	}
	return out
}
