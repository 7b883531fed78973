// Package imageproc holds pure-Go image preprocessors for condition images
// (ControlNet): std image only, no libtorch.
package imageproc

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"math"
)

// Gray8 converts img to 8-bit grayscale as OpenCV 4.10's
// cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) does for 8-bit input:
// Y = (9798·R + 19235·G + 3735·B + 2^14) >> 15 (the 0.299/0.587/0.114
// weights in 15-bit fixed point, rounded), bit for bit.
//
// An *image.Gray is used as is and an *image.Gray16 keeps its high byte.
// Other images are read as 8-bit non-premultiplied RGB (color.NRGBAModel)
// and alpha is dropped, as cv2.imread(path, IMREAD_COLOR) drops it. The
// result has img's bounds.
func Gray8(img image.Image) *image.Gray {
	b := img.Bounds()
	if g, ok := img.(*image.Gray); ok {
		out := image.NewGray(b)
		for y := b.Min.Y; y < b.Max.Y; y++ {
			copy(out.Pix[out.PixOffset(b.Min.X, y):out.PixOffset(b.Max.X, y)],
				g.Pix[g.PixOffset(b.Min.X, y):g.PixOffset(b.Max.X, y)])
		}
		return out
	}
	out := image.NewGray(b)
	switch img.(type) {
	case *image.RGBA, *image.NRGBA:
		at := rgbReader(img)
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				r, g, bl := at(x, y)
				out.Pix[out.PixOffset(x, y)] = luma(r, g, bl)
			}
		}
		return out
	}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			var v uint8
			switch c := img.At(x, y).(type) {
			case color.Gray:
				v = c.Y
			case color.Gray16:
				v = uint8(c.Y >> 8)
			default:
				n := color.NRGBAModel.Convert(c).(color.NRGBA)
				v = luma(n.R, n.G, n.B)
			}
			out.Pix[out.PixOffset(x, y)] = v
		}
	}
	return out
}

// rgbReader reads img's pixels as 8-bit non-premultiplied R, G, B (alpha
// dropped), straight from Pix for *image.NRGBA and opaque *image.RGBA
// pixels, through color.NRGBAModel otherwise.
func rgbReader(img image.Image) func(x, y int) (r, g, b uint8) {
	switch m := img.(type) {
	case *image.NRGBA:
		return func(x, y int) (uint8, uint8, uint8) {
			p := m.Pix[m.PixOffset(x, y):]
			return p[0], p[1], p[2]
		}
	case *image.RGBA:
		return func(x, y int) (uint8, uint8, uint8) {
			p := m.Pix[m.PixOffset(x, y):]
			if p[3] == 255 {
				return p[0], p[1], p[2]
			}
			n := color.NRGBAModel.Convert(color.RGBA{p[0], p[1], p[2], p[3]}).(color.NRGBA)
			return n.R, n.G, n.B
		}
	}
	return func(x, y int) (uint8, uint8, uint8) {
		n := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
		return n.R, n.G, n.B
	}
}

// luma is OpenCV's 8-bit RGB→gray in 15-bit fixed point.
func luma(r, g, b uint8) uint8 {
	return uint8((9798*uint32(r) + 19235*uint32(g) + 3735*uint32(b) + 1<<14) >> 15)
}

// ErrThreshold is returned by CannyStrict for thresholds Canny would only
// accept under its documented fallbacks.
var ErrThreshold = errors.New("imageproc: bad canny threshold")

// CannyStrict is Canny for callers that take thresholds from users: it
// refuses a nil image, NaN or infinite thresholds, negative thresholds and
// low > high, with an error naming the values.
func CannyStrict(img image.Image, low, high float64) (*image.Gray, error) {
	if img == nil {
		return nil, errors.New("imageproc: canny: nil image")
	}
	for _, t := range []struct {
		name string
		v    float64
	}{{"low", low}, {"high", high}} {
		if math.IsNaN(t.v) || math.IsInf(t.v, 0) || t.v < 0 {
			return nil, fmt.Errorf("%w: %s threshold %v: want a finite value >= 0", ErrThreshold, t.name, t.v)
		}
	}
	if low > high {
		return nil, fmt.Errorf("%w: low threshold %v > high threshold %v", ErrThreshold, low, high)
	}
	return Canny(img, low, high), nil
}

// Canny is OpenCV's cv2.Canny(gray, low, high) with its defaults
// (apertureSize=3, L2gradient=false) on Gray8(img): edges are 255, the rest
// 0, and the result has img's bounds.
//
// As OpenCV does: the 3×3 Sobel derivatives use replicated borders; the
// gradient magnitude is |dx|+|dy|; thresholds are swapped when low > high
// and then floored to integers; non-maximum suppression quantises the
// direction into horizontal, vertical and the two diagonals with
// tan(22.5°) in 15-bit fixed point, keeps a pixel whose magnitude is above
// low and strictly above its "before" neighbour and at least its "after"
// neighbour (strictly above both on diagonals), treating magnitudes
// outside the image as 0; pixels above high are edges, and hysteresis adds
// the kept pixels 8-connected to an edge.
//
// Documented fallbacks (CannyStrict refuses them): negative thresholds are
// used as OpenCV uses them (floored; every magnitude, 0 included, is above
// a negative low, so only non-maximum suppression filters); a NaN threshold
// is treated as +Inf, so no pixel is an edge (OpenCV's result for NaN is
// platform-dependent).
func Canny(img image.Image, low, high float64) *image.Gray {
	g := Gray8(img)
	b := g.Bounds()
	w, h := b.Dx(), b.Dy()
	if w == 0 || h == 0 {
		return image.NewGray(b)
	}
	dx, dy, mag := sobel(w, h, func(x, y int) int32 { return int32(g.Pix[y*g.Stride+x]) })
	return suppress(b, dx, dy, mag, low, high)
}

// CannyRGB is OpenCV's cv2.Canny(rgb, low, high) on a 3-channel array in R,
// G, B order, as ControlNet's usual Canny preprocessor calls it (without a
// grayscale conversion): Sobel derivatives per channel, and at each pixel
// the channel with the largest |dx|+|dy| (the first of R, G, B on ties)
// gives the magnitude and the direction; the rest is Canny's. img is read
// as 8-bit non-premultiplied RGB (color.NRGBAModel), alpha dropped; gray
// images give three equal channels, so CannyRGB equals Canny on them.
func CannyRGB(img image.Image, low, high float64) *image.Gray {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	if w == 0 || h == 0 {
		return image.NewGray(b)
	}
	at := rgbReader(img)
	var planes [3][]uint8
	for c := range planes {
		planes[c] = make([]uint8, w*h)
	}
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			planes[0][y*w+x], planes[1][y*w+x], planes[2][y*w+x] = at(b.Min.X+x, b.Min.Y+y)
		}
	}
	dx, dy, mag := sobel(w, h, func(x, y int) int32 { return int32(planes[0][y*w+x]) })
	for c := 1; c < 3; c++ {
		p := planes[c]
		cdx, cdy, cmag := sobel(w, h, func(x, y int) int32 { return int32(p[y*w+x]) })
		ms := w + 2
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				// A later channel wins only when strictly larger.
				if k := (y+1)*ms + x + 1; cmag[k] > mag[k] {
					mag[k] = cmag[k]
					dx[y*w+x], dy[y*w+x] = cdx[y*w+x], cdy[y*w+x]
				}
			}
		}
	}
	return suppress(b, dx, dy, mag, low, high)
}

// sobel returns OpenCV's 3×3 Sobel derivatives of a w×h plane with
// replicated borders, and |dx|+|dy| in a (w+2)×(h+2) buffer with a ring of
// zeros (index (y+1)*(w+2) + x+1).
func sobel(w, h int, at func(x, y int) int32) (dx, dy, mag []int32) {
	px := func(x, y int) int32 {
		return at(min(max(x, 0), w-1), min(max(y, 0), h-1))
	}
	dx = make([]int32, w*h)
	dy = make([]int32, w*h)
	ms := w + 2
	mag = make([]int32, ms*(h+2))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			a, bb, c := px(x-1, y-1), px(x, y-1), px(x+1, y-1)
			d, f := px(x-1, y), px(x+1, y)
			gg, hh, ii := px(x-1, y+1), px(x, y+1), px(x+1, y+1)
			sx := (c - a) + 2*(f-d) + (ii - gg)
			sy := (gg + 2*hh + ii) - (a + 2*bb + c)
			dx[y*w+x], dy[y*w+x] = sx, sy
			mag[(y+1)*ms+x+1] = abs32(sx) + abs32(sy)
		}
	}
	return dx, dy, mag
}

// suppress runs the thresholds, non-maximum suppression and hysteresis on
// sobel's outputs and returns the edge map with bounds b.
func suppress(b image.Rectangle, dx, dy, mag []int32, low, high float64) *image.Gray {
	w, h := b.Dx(), b.Dy()
	out := image.NewGray(b)
	if math.IsNaN(low) {
		low = math.Inf(1)
	}
	if math.IsNaN(high) {
		high = math.Inf(1)
	}
	if low > high {
		low, high = high, low
	}
	lo, hi := floorThreshold(low), floorThreshold(high)
	ms := w + 2

	// Non-maximum suppression. state: 0 candidate (kept, weak), 1 not an
	// edge, 2 edge. The border ring is 1 so hysteresis never leaves the image.
	const shift = 15
	tg22 := int64(math.Floor(0.4142135623730950488*(1<<shift) + 0.5))
	state := make([]uint8, ms*(h+2))
	for i := range state {
		state[i] = 1
	}
	stack := make([]int, 0, 1024)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			k := (y+1)*ms + x + 1
			m := int64(mag[k])
			if m <= lo {
				continue
			}
			xs, ys := int64(dx[y*w+x]), int64(dy[y*w+x])
			ax, ay := absInt64(xs), absInt64(ys)<<shift
			t22 := ax * tg22
			var keep bool
			switch {
			case ay < t22: // horizontal gradient: compare left and right
				keep = m > int64(mag[k-1]) && m >= int64(mag[k+1])
			case ay > t22+(ax<<(shift+1)): // vertical: above and below
				keep = m > int64(mag[k-ms]) && m >= int64(mag[k+ms])
			default: // diagonal
				s := 1
				if (xs < 0) != (ys < 0) {
					s = -1
				}
				keep = m > int64(mag[k-ms-s]) && m > int64(mag[k+ms+s])
			}
			if !keep {
				continue
			}
			if m > hi {
				state[k] = 2
				stack = append(stack, k)
			} else {
				state[k] = 0
			}
		}
	}

	// Hysteresis, 8-connected.
	nb := [8]int{-1, 1, -ms - 1, -ms, -ms + 1, ms - 1, ms, ms + 1}
	for len(stack) > 0 {
		k := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, o := range nb {
			if state[k+o] == 0 {
				state[k+o] = 2
				stack = append(stack, k+o)
			}
		}
	}

	for y := 0; y < h; y++ {
		row := out.Pix[y*out.Stride : y*out.Stride+w]
		for x := range row {
			if state[(y+1)*ms+x+1] == 2 {
				row[x] = 255
			}
		}
	}
	return out
}

// floorThreshold floors t to an integer; values beyond any 8-bit Sobel
// magnitude (at most 2040) are clamped, which changes no comparison.
func floorThreshold(t float64) int64 {
	const limit = 1 << 20
	if t >= limit {
		return limit
	}
	if t <= -limit {
		return -limit
	}
	return int64(math.Floor(t))
}

func abs32(v int32) int32 {
	if v < 0 {
		return -v
	}
	return v
}

func absInt64(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}
