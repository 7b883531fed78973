package pipeline

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	_ "image/jpeg" // init images may be JPEG
	"image/png"
	"os"

	"github.com/refiners-go/refiners/imageproc"
	"github.com/refiners-go/refiners/internal/atomicfile"
)

// RGB is an 8-bit RGB image, rows top to bottom, pixels left to right,
// three bytes each: what Refiners' pipeline reads (PIL mode "RGB") and
// writes.
type RGB struct {
	Width, Height int
	Pix           []uint8
}

// Gray is an 8-bit one-channel image (PIL mode "L"): inpainting masks.
type Gray struct {
	Width, Height int
	Pix           []uint8
}

// NewRGB makes a black image.
func NewRGB(w, h int) *RGB { return &RGB{Width: w, Height: h, Pix: make([]uint8, 3*w*h)} }

// ToRGB converts an image as PIL's convert("RGB") does: alpha is dropped
// (not composited), gray is replicated, palette entries give their colour,
// 16-bit samples keep their high byte. Images decoded from PNG convert
// exactly as PIL's; JPEG decoders differ between Go and libjpeg by a few
// levels.
func ToRGB(img image.Image) *RGB {
	b := img.Bounds()
	out := NewRGB(b.Dx(), b.Dy())
	i := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl := rgbAt(img, x, y)
			out.Pix[i], out.Pix[i+1], out.Pix[i+2] = r, g, bl
			i += 3
		}
	}
	return out
}

// rgbAt reads one pixel's colour without alpha, un-premultiplied.
func rgbAt(img image.Image, x, y int) (r, g, b uint8) {
	switch m := img.(type) {
	case *image.NRGBA:
		p := m.Pix[m.PixOffset(x, y):]
		return p[0], p[1], p[2]
	case *image.Gray:
		v := m.Pix[m.PixOffset(x, y)]
		return v, v, v
	case *image.Paletted:
		entry := m.Palette[m.ColorIndexAt(x, y)]
		c, ok := entry.(color.NRGBA) // keeps the colour of transparent entries, as PIL does
		if !ok {
			c = color.NRGBAModel.Convert(entry).(color.NRGBA)
		}
		return c.R, c.G, c.B
	case *image.NRGBA64:
		p := m.Pix[m.PixOffset(x, y):]
		return p[0], p[2], p[4]
	case *image.Gray16:
		v := m.Pix[m.PixOffset(x, y)]
		return v, v, v
	}
	c := color.NRGBA64Model.Convert(img.At(x, y)).(color.NRGBA64)
	return uint8(c.R >> 8), uint8(c.G >> 8), uint8(c.B >> 8)
}

// ToGray converts an image as PIL's convert("L") does: luma
// (19595·R + 38470·G + 7471·B + 2^15) >> 16 of the RGB values, alpha
// ignored.
func ToGray(img image.Image) *Gray {
	b := img.Bounds()
	out := &Gray{Width: b.Dx(), Height: b.Dy(), Pix: make([]uint8, b.Dx()*b.Dy())}
	i := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if g, ok := img.(*image.Gray); ok {
				out.Pix[i] = g.Pix[g.PixOffset(x, y)]
			} else {
				r, gr, bl := rgbAt(img, x, y)
				out.Pix[i] = luma(r, gr, bl)
			}
			i++
		}
	}
	return out
}

func luma(r, g, b uint8) uint8 {
	return uint8((uint32(r)*19595 + uint32(g)*38470 + uint32(b)*7471 + 0x8000) >> 16)
}

// ReadImage decodes a PNG or JPEG file.
func ReadImage(path string) (image.Image, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: not a PNG or JPEG image: %w", path, err)
	}
	return img, nil
}

// Image returns the picture as an opaque image.RGBA (PNG-encodes as 8-bit RGB).
func (m *RGB) Image() *image.RGBA {
	out := image.NewRGBA(image.Rect(0, 0, m.Width, m.Height))
	for i, j := 0, 0; i < len(m.Pix); i, j = i+3, j+4 {
		out.Pix[j], out.Pix[j+1], out.Pix[j+2], out.Pix[j+3] = m.Pix[i], m.Pix[i+1], m.Pix[i+2], 255
	}
	return out
}

// EncodePNG returns the image as PNG bytes (8-bit RGB, default compression):
// the same pixels always give the same bytes.
func (m *RGB) EncodePNG() ([]byte, error) {
	var buf bytes.Buffer
	if err := png.Encode(&buf, m.Image()); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WritePNG writes the image as a PNG file, atomically (internal/atomicfile:
// a temporary file synced and renamed into place), so a failure leaves no
// partial file.
func (m *RGB) WritePNG(path string) error {
	data, err := m.EncodePNG()
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return atomicfile.WriteFile(path, data, 0o644)
}

// Resize scales an image to w×h with PIL's Image.resize default for RGB
// images (bicubic, a = −0.5, the filter widened by the scale factor when
// shrinking, horizontal then vertical pass, each rounded to 8 bits with
// 22-bit fixed-point weights: imageproc.Resize8), so that an init image of
// another size gives Refiners' pixels. An image already w×h is returned as
// is (PIL copies it).
func (m *RGB) Resize(w, h int) *RGB {
	if w == m.Width && h == m.Height {
		return m
	}
	return &RGB{Width: w, Height: h, Pix: imageproc.Resize8(m.Pix, m.Width, m.Height, 3, w, h, imageproc.Bicubic)}
}
