package imageproc

import (
	"errors"
	"image"
	"image/color"
	"math"
	"testing"
)

// step is a w×h gray image: lo where !right(x, y), hi elsewhere.
func step(w, h int, lo, hi uint8, right func(x, y int) bool) *image.Gray {
	g := image.NewGray(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			v := lo
			if right(x, y) {
				v = hi
			}
			g.SetGray(x, y, color.Gray{v})
		}
	}
	return g
}

func whiteRGBA(r image.Rectangle) *image.RGBA {
	m := image.NewRGBA(r)
	for i := range m.Pix {
		m.Pix[i] = 255
	}
	return m
}

func edgeSet(g *image.Gray) map[image.Point]bool {
	s := map[image.Point]bool{}
	b := g.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			switch g.GrayAt(x, y).Y {
			case 255:
				s[image.Pt(x, y)] = true
			case 0:
			default:
				panic("edge map value neither 0 nor 255")
			}
		}
	}
	return s
}

func TestCannyFlatImageHasNoEdges(t *testing.T) {
	for _, tc := range []struct {
		name      string
		img       image.Image
		low, high float64
	}{
		{"gray 0", image.NewGray(image.Rect(0, 0, 9, 7)), 100, 200},
		{"gray 128 low thresholds", step(9, 7, 128, 128, func(int, int) bool { return false }), 0, 1},
		{"gray negative thresholds", step(9, 7, 77, 77, func(int, int) bool { return false }), -5, -1},
		{"rgba white off origin", whiteRGBA(image.Rect(2, 3, 12, 10)), 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := tc.img
			got := Canny(img, tc.low, tc.high)
			if got.Bounds() != img.Bounds() {
				t.Fatalf("bounds %v, want %v", got.Bounds(), img.Bounds())
			}
			if n := len(edgeSet(got)); n != 0 {
				t.Fatalf("%d edge pixels on a flat image, want 0", n)
			}
		})
	}
}

// A step edge gives a line one pixel wide, on the dark side for vertical
// and horizontal steps (OpenCV keeps the first of two equal maxima:
// strictly above the one before, at least the one after).
func TestCannyStepEdgeIsOnePixelLine(t *testing.T) {
	const w, h = 16, 12
	for _, tc := range []struct {
		name  string
		img   *image.Gray
		onPix func(x, y int) bool
	}{
		{"vertical step at x=8", step(w, h, 0, 255, func(x, _ int) bool { return x >= 8 }), func(x, _ int) bool { return x == 7 }},
		{"vertical step, bright left", step(w, h, 0, 255, func(x, _ int) bool { return x < 8 }), func(x, _ int) bool { return x == 7 }},
		{"horizontal step at y=5", step(w, h, 30, 200, func(_, y int) bool { return y >= 5 }), func(_, y int) bool { return y == 4 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := edgeSet(Canny(tc.img, 100, 200))
			for y := 0; y < h; y++ {
				for x := 0; x < w; x++ {
					if got[image.Pt(x, y)] != tc.onPix(x, y) {
						t.Fatalf("pixel (%d,%d): edge=%v, want %v", x, y, got[image.Pt(x, y)], tc.onPix(x, y))
					}
				}
			}
		})
	}
}

// A step of contrast 20 has magnitude 4·20 = 80 on its line: an edge
// exactly when floor(high) < 80, whatever the order of the thresholds.
func TestCannyThresholds(t *testing.T) {
	img := step(12, 10, 100, 120, func(x, _ int) bool { return x >= 6 })
	for _, tc := range []struct {
		low, high float64
		edge      bool
	}{
		{50, 79, true},
		{50, 79.99, true}, // floored to 79
		{50, 80, false},   // strictly above high
		{79, 50, true},    // swapped
		{80, 50, false},   // swapped
		{80, 80, false},
		{79.5, 79.5, true},
		{0, 0, true},
		{-3, 10, true},
		{math.NaN(), 10, false}, // NaN is +Inf: no edges
		{10, math.NaN(), false},
		{10, math.Inf(1), false},
	} {
		got := len(edgeSet(Canny(img, tc.low, tc.high))) > 0
		if got != tc.edge {
			t.Errorf("Canny(low=%v, high=%v): edges=%v, want %v", tc.low, tc.high, got, tc.edge)
		}
	}
}

// Raising either threshold can only remove edges; swapping them changes nothing.
func TestCannyThresholdOrder(t *testing.T) {
	img := readPNG(t, "noise.png")
	pairs := [][2]float64{{20, 60}, {20, 120}, {50, 120}, {50, 200}, {150, 200}}
	var prev map[image.Point]bool
	for i, p := range pairs {
		cur := edgeSet(Canny(img, p[0], p[1]))
		if len(cur) == 0 {
			t.Fatalf("%v: no edges on the noise image", p)
		}
		swapped := edgeSet(Canny(img, p[1], p[0]))
		if len(swapped) != len(cur) {
			t.Fatalf("%v: %d edges, swapped %d", p, len(cur), len(swapped))
		}
		for q := range cur {
			if !swapped[q] {
				t.Fatalf("%v: %v is an edge only in the unswapped call", p, q)
			}
			if i > 0 && !prev[q] {
				t.Fatalf("%v: %v is an edge but not at lower thresholds %v", p, q, pairs[i-1])
			}
		}
		if i > 0 && len(cur) >= len(prev) {
			t.Errorf("%v: %d edges, not fewer than %d at %v", p, len(cur), len(prev), pairs[i-1])
		}
		prev = cur
	}
}

func TestCannyStrict(t *testing.T) {
	img := step(8, 8, 0, 255, func(x, _ int) bool { return x >= 4 })
	for _, tc := range []struct {
		name      string
		img       image.Image
		low, high float64
		ok        bool
	}{
		{"ordered", img, 100, 200, true},
		{"equal", img, 100, 100, true},
		{"zero", img, 0, 0, true},
		{"nil image", nil, 100, 200, false},
		{"low > high", img, 200, 100, false},
		{"negative low", img, -1, 100, false},
		{"NaN high", img, 1, math.NaN(), false},
		{"Inf high", img, 1, math.Inf(1), false},
		{"-Inf low", img, math.Inf(-1), 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CannyStrict(tc.img, tc.low, tc.high)
			if !tc.ok {
				if err == nil || got != nil {
					t.Fatalf("got (%v, %v), want an error", got != nil, err)
				}
				if tc.img != nil && !errors.Is(err, ErrThreshold) {
					t.Fatalf("error %v is not ErrThreshold", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := Canny(tc.img, tc.low, tc.high)
			if string(got.Pix) != string(want.Pix) || len(edgeSet(got)) == 0 {
				t.Fatal("CannyStrict differs from Canny or found no edge on a step")
			}
		})
	}
}

func TestGray8(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    color.Color
		want uint8
	}{
		{"red", color.RGBA{255, 0, 0, 255}, 76},
		{"green", color.RGBA{0, 255, 0, 255}, 150},
		{"blue", color.RGBA{0, 0, 255, 255}, 29},
		{"white", color.RGBA{255, 255, 255, 255}, 255},
		{"mid", color.RGBA{10, 200, 90, 255}, 131}, // (9798·10 + 19235·200 + 3735·90 + 16384) >> 15
		{"transparent red, alpha ignored", color.NRGBA{255, 0, 0, 0}, 76},
		{"gray16 high byte", color.Gray16{0xabff}, 0xab},
		{"gray", color.Gray{7}, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var img image.Image
			switch c := tc.c.(type) {
			case color.NRGBA:
				m := image.NewNRGBA(image.Rect(0, 0, 1, 1))
				m.SetNRGBA(0, 0, c)
				img = m
			case color.Gray16:
				m := image.NewGray16(image.Rect(0, 0, 1, 1))
				m.SetGray16(0, 0, c)
				img = m
			case color.Gray:
				m := image.NewGray(image.Rect(0, 0, 1, 1))
				m.SetGray(0, 0, c)
				img = m
			default:
				m := image.NewRGBA(image.Rect(0, 0, 1, 1))
				m.Set(0, 0, c)
				img = m
			}
			if got := Gray8(img).GrayAt(0, 0).Y; got != tc.want {
				t.Fatalf("Gray8 = %d, want %d", got, tc.want)
			}
		})
	}
}

// A sub-image keeps its bounds and gives the same map as a copy at the origin.
func TestCannySubImage(t *testing.T) {
	full := step(20, 20, 0, 255, func(x, y int) bool { return x+y >= 20 })
	sub := full.SubImage(image.Rect(3, 4, 15, 17)).(*image.Gray)
	moved := image.NewGray(image.Rect(0, 0, 12, 13))
	for y := 0; y < 13; y++ {
		for x := 0; x < 12; x++ {
			moved.SetGray(x, y, sub.GrayAt(x+3, y+4))
		}
	}
	a, b := Canny(sub, 50, 100), Canny(moved, 50, 100)
	if a.Bounds() != sub.Bounds() {
		t.Fatalf("bounds %v, want %v", a.Bounds(), sub.Bounds())
	}
	n := 0
	for y := 0; y < 13; y++ {
		for x := 0; x < 12; x++ {
			if a.GrayAt(x+3, y+4) != b.GrayAt(x, y) {
				t.Fatalf("pixel (%d,%d) differs between sub-image and copy", x, y)
			}
			if b.GrayAt(x, y).Y == 255 {
				n++
			}
		}
	}
	if n == 0 {
		t.Fatal("no edge on a diagonal step")
	}
	if e := Canny(image.NewGray(image.Rect(0, 0, 0, 5)), 1, 2); len(e.Pix) != 0 {
		t.Fatal("empty image gave pixels")
	}
}

// CannyRGB sees a step between colours of equal luma that Canny (on Gray8)
// cannot, and equals Canny on gray images.
func TestCannyRGB(t *testing.T) {
	red, green := color.RGBA{255, 0, 0, 255}, color.RGBA{0, 129, 0, 255} // both luma 76
	img := image.NewRGBA(image.Rect(0, 0, 10, 8))
	for y := 0; y < 8; y++ {
		for x := 0; x < 10; x++ {
			if x < 5 {
				img.SetRGBA(x, y, red)
			} else {
				img.SetRGBA(x, y, green)
			}
		}
	}
	if n := len(edgeSet(Canny(img, 100, 200))); n != 0 {
		t.Fatalf("Canny: %d edge pixels between equal lumas, want 0", n)
	}
	rgb := edgeSet(CannyRGB(img, 100, 200))
	if len(rgb) != 8 {
		t.Fatalf("CannyRGB: %d edge pixels, want the 8 of column 4", len(rgb))
	}
	for q := range rgb {
		if q.X != 4 {
			t.Fatalf("CannyRGB: edge at %v, want column 4", q)
		}
	}
	noise := Gray8(readPNG(t, "noise.png"))
	for _, p := range [][2]float64{{20, 60}, {100, 200}} {
		a, b := Canny(noise, p[0], p[1]), CannyRGB(noise, p[0], p[1])
		if string(a.Pix) != string(b.Pix) {
			t.Fatalf("%v: CannyRGB differs from Canny on a gray image", p)
		}
	}
}

// Opaque, translucent and non-premultiplied pixels read the same through
// the fast paths and through color.NRGBAModel.
func TestRGBReaderFastPaths(t *testing.T) {
	r := image.NewRGBA(image.Rect(1, 2, 4, 3))
	r.SetRGBA(1, 2, color.RGBA{10, 200, 90, 255})
	r.SetRGBA(2, 2, color.RGBA{60, 30, 10, 128}) // premultiplied, translucent
	n := image.NewNRGBA(image.Rect(1, 2, 4, 3))
	n.SetNRGBA(3, 2, color.NRGBA{250, 5, 40, 7})
	for _, img := range []image.Image{r, n} {
		at := rgbReader(img)
		for x := 1; x < 4; x++ {
			c := color.NRGBAModel.Convert(img.At(x, 2)).(color.NRGBA)
			if gr, gg, gb := at(x, 2); gr != c.R || gg != c.G || gb != c.B {
				t.Fatalf("%T (%d,2): %d,%d,%d, want %d,%d,%d", img, x, gr, gg, gb, c.R, c.G, c.B)
			}
			if got, want := Gray8(img).GrayAt(x, 2).Y, luma(c.R, c.G, c.B); got != want {
				t.Fatalf("%T (%d,2): Gray8 %d, want %d", img, x, got, want)
			}
		}
	}
}

// 512×512 (a ControlNet condition image's size), RGB input.
func BenchmarkCanny512(b *testing.B) {
	img := image.NewRGBA(image.Rect(0, 0, 512, 512))
	for i := range img.Pix {
		img.Pix[i] = uint8(i*7919>>3) | 3
	}
	for _, bc := range []struct {
		name string
		f    func(image.Image, float64, float64) *image.Gray
	}{{"gray", Canny}, {"rgb", CannyRGB}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				bc.f(img, 100, 200)
			}
		})
	}
}
