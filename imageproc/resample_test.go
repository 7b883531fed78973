package imageproc

import (
	"bytes"
	"fmt"
	"testing"
)

// TestResize8MatchesPIL: one row of 8-bit gray pixels resized as Pillow
// 10+ does, Image.new("L", (7, 1)) with the pixels below, then
// .resize((w, 1), filter); the wanted rows are Pillow's output.
func TestResize8MatchesPIL(t *testing.T) {
	src := []uint8{0, 50, 100, 150, 200, 250, 30}
	cases := []struct {
		name   string
		filter Filter
		w      int
		want   []uint8
	}{
		{"bilinear", Bilinear, 3, []uint8{43, 150, 161}},
		{"bilinear", Bilinear, 4, []uint8{26, 104, 196, 132}},
		{"bilinear", Bilinear, 11, []uint8{0, 23, 55, 86, 118, 150, 182, 214, 245, 130, 30}},
		{"bicubic", Bicubic, 3, []uint8{36, 158, 161}},
		{"bicubic", Bicubic, 4, []uint8{20, 104, 206, 131}},
		{"bicubic", Bicubic, 11, []uint8{0, 18, 55, 86, 118, 150, 182, 221, 255, 124, 15}},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s/%d", c.name, c.w), func(t *testing.T) {
			if got := Resize8(src, len(src), 1, 1, c.w, 1, c.filter); !bytes.Equal(got, c.want) {
				t.Errorf("row = %v, PIL gives %v", got, c.want)
			}
			// The same row as a column, resized vertically, and with
			// three identical channels: the same samples.
			if got := Resize8(src, 1, len(src), 1, 1, c.w, c.filter); !bytes.Equal(got, c.want) {
				t.Errorf("column = %v, PIL gives %v", got, c.want)
			}
			rgb := make([]uint8, 0, 3*len(src))
			for _, v := range src {
				rgb = append(rgb, v, v, v)
			}
			got := Resize8(rgb, len(src), 1, 3, c.w, 1, c.filter)
			for i, v := range c.want {
				if got[3*i] != v || got[3*i+1] != v || got[3*i+2] != v {
					t.Fatalf("rgb pixel %d = %v, want %d in each channel", i, got[3*i:3*i+3], v)
				}
			}
		})
	}
}

func TestResize8SameSizeAndConstant(t *testing.T) {
	pix := bytes.Repeat([]uint8{77}, 3*5*4)
	for _, f := range []Filter{Bilinear, Bicubic} {
		if got := Resize8(pix, 5, 4, 3, 5, 4, f); &got[0] != &pix[0] {
			t.Error("resizing to the same size copied the pixels")
		}
		for _, sz := range [][2]int{{11, 7}, {2, 1}, {5, 9}, {1, 4}} {
			got := Resize8(pix, 5, 4, 3, sz[0], sz[1], f)
			if len(got) != 3*sz[0]*sz[1] {
				t.Fatalf("%v: %d samples", sz, len(got))
			}
			for _, v := range got {
				if v != 77 {
					t.Fatalf("a constant image resized to %v has a sample %d", sz, v)
				}
			}
		}
	}
}
