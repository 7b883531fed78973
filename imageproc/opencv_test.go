package imageproc

import (
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"testing"
)

// goldenDir holds cv2.Canny outputs written by conformance/generate_canny.py.
var goldenDir = filepath.Join("..", "conformance", "testdata", "canny")

// minAgreement is the bar (issue 13): the share of pixels on which
// Canny and cv2.Canny agree, per case. Canny matches OpenCV 4.10 bit for bit
// on every golden case, and the bar is held there: an NMS tie-breaking
// mistake (>= for > on one side) still agrees on 99.25% of the pixels, so
// 99% alone would not catch it.
const minAgreement = 1.0

type cannyCase struct {
	Image      string  `json:"image"`
	Mode       string  `json:"mode"`
	Low        float64 `json:"low"`
	High       float64 `json:"high"`
	Edges      string  `json:"edges"`
	EdgePixels int     `json:"edge_pixels"`
}

func readPNG(t *testing.T, name string) image.Image {
	t.Helper()
	f, err := os.Open(filepath.Join(goldenDir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decoding %s: %v", name, err)
	}
	return img
}

// TestCannyMatchesOpenCV compares Canny (mode gray) and CannyRGB (mode rgb)
// with cv2.Canny pixel by pixel on
// each golden case and reports the agreement; the edge maps must agree on
// at least minAgreement of the pixels, and the golden maps must have edges
// (a case with none would pass trivially).
func TestCannyMatchesOpenCV(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(goldenDir, "cases.json"))
	if err != nil {
		t.Fatalf("reading the golden cases (run conformance/generate_canny.py): %v", err)
	}
	var meta struct {
		OpenCV string      `json:"opencv"`
		Cases  []cannyCase `json:"cases"`
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		t.Fatalf("cases.json: %v", err)
	}
	if len(meta.Cases) == 0 {
		t.Fatal("cases.json lists no cases")
	}
	report := fmt.Sprintf("imageproc.Canny and CannyRGB vs cv2.Canny (OpenCV %s)\n%-30s %8s %9s %10s %9s\n",
		meta.OpenCV, "case", "pixels", "cv edges", "differing", "agree %")
	worst := 1.0
	for _, c := range meta.Cases {
		t.Run(c.Edges, func(t *testing.T) {
			want := readPNG(t, c.Edges)
			var got *image.Gray
			switch c.Mode {
			case "gray":
				got = Canny(readPNG(t, c.Image), c.Low, c.High)
			case "rgb":
				got = CannyRGB(readPNG(t, c.Image), c.Low, c.High)
			default:
				t.Fatalf("mode %q, want gray or rgb", c.Mode)
			}
			b := want.Bounds()
			if got.Bounds() != b {
				t.Fatalf("bounds %v, want %v", got.Bounds(), b)
			}
			edges, diff := 0, 0
			for y := b.Min.Y; y < b.Max.Y; y++ {
				for x := b.Min.X; x < b.Max.X; x++ {
					r, _, _, _ := want.At(x, y).RGBA()
					w := r > 0x7fff
					if w {
						edges++
					}
					if (got.GrayAt(x, y).Y == 255) != w {
						diff++
					}
					if v := got.GrayAt(x, y).Y; v != 0 && v != 255 {
						t.Fatalf("pixel (%d,%d) = %d, want 0 or 255", x, y, v)
					}
				}
			}
			if edges == 0 || edges != c.EdgePixels {
				t.Fatalf("golden map has %d edge pixels, cases.json says %d (want > 0)", edges, c.EdgePixels)
			}
			n := b.Dx() * b.Dy()
			agree := 1 - float64(diff)/float64(n)
			worst = min(worst, agree)
			report += fmt.Sprintf("%-30s %8d %9d %10d %9.4f\n", c.Edges, n, edges, diff, 100*agree)
			if agree < minAgreement {
				t.Errorf("%.4f%% of pixels agree (%d differ), want >= %.2f%%", 100*agree, diff, 100*minAgreement)
			}
		})
	}
	report += fmt.Sprintf("worst agreement %.4f%%\n", 100*worst)
	t.Log("\n" + report)
}
