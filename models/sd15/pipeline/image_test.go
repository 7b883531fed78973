package pipeline

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"os"
	"path/filepath"
	"testing"
)

func readRGB(t *testing.T, path string) *RGB {
	t.Helper()
	img, err := ReadImage(path)
	if err != nil {
		t.Fatal(err)
	}
	return ToRGB(img)
}

// TestResizeMatchesPIL compares Resize with PIL's Image.resize (default
// bicubic) on the images testdata/make_resize.py wrote: up, down, one axis,
// non-integer factors. Every pixel must be equal.
func TestResizeMatchesPIL(t *testing.T) {
	src := readRGB(t, "testdata/resize_src.png")
	if src.Width != 37 || src.Height != 23 {
		t.Fatalf("source is %dx%d", src.Width, src.Height)
	}
	for _, size := range [][2]int{{64, 48}, {16, 11}, {37, 50}, {20, 23}, {5, 3}, {111, 69}} {
		t.Run(fmt.Sprintf("%dx%d", size[0], size[1]), func(t *testing.T) {
			want := readRGB(t, fmt.Sprintf("testdata/resize_%dx%d.png", size[0], size[1]))
			got := src.Resize(size[0], size[1])
			if got.Width != want.Width || got.Height != want.Height {
				t.Fatalf("got %dx%d", got.Width, got.Height)
			}
			diff, worst := 0, 0
			for i := range got.Pix {
				if d := int(got.Pix[i]) - int(want.Pix[i]); d != 0 {
					diff++
					worst = max(worst, d, -d)
				}
			}
			if diff > 0 {
				t.Errorf("%d of %d samples differ from PIL's, by up to %d", diff, len(got.Pix), worst)
			}
		})
	}
	if same := src.Resize(37, 23); same != src {
		t.Error("resizing to the same size made a new image")
	}
}

// TestToGrayMatchesPIL checks the RGB to L conversion against PIL's.
func TestToGrayMatchesPIL(t *testing.T) {
	img, err := ReadImage("testdata/resize_src.png")
	if err != nil {
		t.Fatal(err)
	}
	want, err := ReadImage("testdata/gray_src.png")
	if err != nil {
		t.Fatal(err)
	}
	got, w := ToGray(img), want.(*image.Gray)
	if !bytes.Equal(got.Pix, w.Pix) {
		t.Error("luma differs from PIL's convert(\"L\")")
	}
}

func TestToRGBKinds(t *testing.T) {
	nrgba := image.NewNRGBA(image.Rect(0, 0, 2, 1))
	nrgba.SetNRGBA(0, 0, color.NRGBA{10, 20, 30, 0}) // transparent: colour kept
	nrgba.SetNRGBA(1, 0, color.NRGBA{40, 50, 60, 128})
	gray := image.NewGray(image.Rect(0, 0, 2, 1))
	gray.SetGray(0, 0, color.Gray{7})
	gray.SetGray(1, 0, color.Gray{200})
	pal := image.NewPaletted(image.Rect(0, 0, 2, 1), color.Palette{color.NRGBA{1, 2, 3, 0}, color.RGBA{4, 5, 6, 255}})
	pal.SetColorIndex(1, 0, 1)
	g16 := image.NewGray16(image.Rect(0, 0, 2, 1))
	g16.SetGray16(0, 0, color.Gray16{0x1234})
	g16.SetGray16(1, 0, color.Gray16{0xff00})
	rgba := image.NewRGBA(image.Rect(0, 0, 2, 1))
	rgba.SetRGBA(0, 0, color.RGBA{9, 8, 7, 255})
	rgba.SetRGBA(1, 0, color.RGBA{100, 50, 0, 255})
	for _, c := range []struct {
		name string
		img  image.Image
		want []uint8
	}{
		{"nrgba", nrgba, []uint8{10, 20, 30, 40, 50, 60}},
		{"gray", gray, []uint8{7, 7, 7, 200, 200, 200}},
		{"paletted", pal, []uint8{1, 2, 3, 4, 5, 6}},
		{"gray16", g16, []uint8{0x12, 0x12, 0x12, 0xff, 0xff, 0xff}},
		{"rgba", rgba, []uint8{9, 8, 7, 100, 50, 0}},
	} {
		if got := ToRGB(c.img).Pix; !bytes.Equal(got, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

func TestWritePNG(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.png")
	m := NewRGB(2, 2)
	m.Pix[0] = 200
	if err := m.WritePNG(path); err != nil {
		t.Fatal(err)
	}
	img, err := ReadImage(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := ToRGB(img); !bytes.Equal(got.Pix, m.Pix) {
		t.Errorf("read back %v", got.Pix)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
	if err := m.WritePNG(filepath.Join(dir, "missing", "out.png")); err == nil {
		t.Error("writing into a missing directory succeeded")
	}
}

func TestPNGRoundTrip(t *testing.T) {
	m := NewRGB(3, 2)
	for i := range m.Pix {
		m.Pix[i] = uint8(i * 13)
	}
	data, err := m.EncodePNG()
	if err != nil {
		t.Fatal(err)
	}
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if got := ToRGB(img); !bytes.Equal(got.Pix, m.Pix) || got.Width != 3 || got.Height != 2 {
		t.Errorf("round trip: %v", got)
	}
}
