package predict

import (
	"bytes"
	"context"
	"errors"
	"image"
	"image/png"
	"math"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

const tinyWeights = "../../../conformance/testdata/sam/predict_model.safetensors"

func TestTargetSize(t *testing.T) {
	for _, c := range []struct{ w, h, size, ww, wh int }{
		{150, 97, 128, 128, 83},
		{45, 70, 128, 82, 128},
		{1024, 1024, 1024, 1024, 1024},
		{1500, 2000, 1024, 768, 1024},
		{3, 1000, 1024, 3, 1024},
	} {
		w, h := TargetSize(c.w, c.h, int64(c.size))
		if w != c.ww || h != c.wh {
			t.Errorf("TargetSize(%d, %d, %d) = %d×%d, want %d×%d", c.w, c.h, c.size, w, h, c.ww, c.wh)
		}
	}
}

func TestCacheLRU(t *testing.T) {
	emb := func(n int) *Embedding { return &Embedding{Features: make([]float32, n)} }
	c := NewCache(3 * 4 * 10) // three embeddings of 10 values
	c.Add("a", emb(10))
	c.Add("b", emb(10))
	c.Add("c", emb(10))
	if _, ok := c.Get("a"); !ok { // a is now the most recent
		t.Fatal("a evicted too early")
	}
	c.Add("d", emb(10)) // evicts b, the least recently used
	if _, ok := c.Get("b"); ok {
		t.Error("b should have been evicted")
	}
	for _, k := range []string{"a", "c", "d"} {
		if _, ok := c.Get(k); !ok {
			t.Errorf("%s evicted", k)
		}
	}
	c.Add("big", emb(100)) // larger than the bound: kept alone
	st := c.Stats()
	if st.Entries != 1 || st.Bytes != 400 {
		t.Errorf("after a too-large entry: %+v, want 1 entry of 400 bytes", st)
	}
	c.Add("big", emb(5)) // replacing updates the size
	if st := c.Stats(); st.Bytes != 20 || st.Entries != 1 {
		t.Errorf("after replacing: %+v", st)
	}
	if st := c.Stats(); st.Hits != 4 || st.Misses != 1 {
		t.Errorf("hits/misses %d/%d, want 4/1", st.Hits, st.Misses)
	}
	none := NewCache(0)
	none.Add("a", emb(1))
	if _, ok := none.Get("a"); ok {
		t.Error("a cache of 0 bytes kept an entry")
	}
	if d := Digest([]byte("abc")); d != "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Errorf("Digest = %s", d)
	}
}

func TestResizeIdentityAndConstant(t *testing.T) {
	img := pipeline.NewRGB(5, 3)
	for i := range img.Pix {
		img.Pix[i] = 77
	}
	if got := resizeBilinear(img, 5, 3); got != img {
		t.Error("same size should return the image itself")
	}
	for _, sz := range [][2]int{{11, 7}, {2, 1}, {5, 9}} {
		r := resizeBilinear(img, sz[0], sz[1])
		if r.Width != sz[0] || r.Height != sz[1] {
			t.Fatalf("size %dx%d, want %v", r.Width, r.Height, sz)
		}
		for _, v := range r.Pix {
			if v != 77 {
				t.Fatalf("a constant image resized to %v has a pixel %d", sz, v)
			}
		}
	}
}

// TestPredictInputErrors: bad prompts are input errors, named, and the
// model still predicts afterwards.
func TestPredictInputErrors(t *testing.T) {
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		m, err := Load(s, Config{Weights: tinyWeights})
		if err != nil {
			return err
		}
		defer m.Release()
		if m.ImageSize != 128 || m.Grid != 8 || m.Channels != 32 || m.EncoderParams["num_heads"] != "2" || m.EncoderParams["global_1"] != "1" || m.EncoderParams["window_size"] != "3" {
			t.Errorf("sizes read from the weights: %d %d %d %v", m.ImageSize, m.Grid, m.Channels, m.EncoderParams)
		}
		img := pipeline.NewRGB(30, 20)
		for i := range img.Pix {
			img.Pix[i] = uint8(i * 7)
		}
		e, err := m.Embed(s, img)
		if err != nil {
			return err
		}
		nan := math.NaN()
		for _, c := range []struct {
			name   string
			prompt Prompt
			want   string
		}{
			{"empty", Prompt{}, "at least one point or a box"},
			{"nan point", Prompt{Points: []Point{{X: nan, Y: 1}}}, "not a finite number"},
			{"inf box", Prompt{Box: &Box{0, 0, math.Inf(1), 3}}, "not a finite number"},
			{"mask size", Prompt{Points: []Point{{X: 1, Y: 1, Foreground: true}}, Mask: make([]float32, 10)}, "want 32×32"},
			{"mask nan", Prompt{Points: []Point{{X: 1, Y: 1, Foreground: true}}, Mask: append(make([]float32, 1023), float32(nan))}, "NaN"},
		} {
			_, err := m.Predict(s, e, c.prompt)
			if err == nil || !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: error %v, want an input error containing %q", c.name, err, c.want)
			}
		}
		if _, err := m.Predict(s, &Embedding{Features: []float32{1}, Channels: 1, Grid: 1}, Prompt{Points: []Point{{X: 1, Y: 1}}}); !errors.Is(err, ErrInput) {
			t.Errorf("foreign embedding: %v", err)
		}
		p, err := m.Predict(s, e, Prompt{Points: []Point{{X: 3, Y: 4, Foreground: true}}})
		if err != nil {
			return err
		}
		if len(p.Masks) != 3 || len(p.Masks[0]) != 30*20 || len(p.IoU) != 3 || len(p.LowRes[2]) != 32*32 || p.LowResSide != 32 {
			t.Errorf("prediction sizes: %d masks of %d, %d IoU, low-res %d", len(p.Masks), len(p.Masks[0]), len(p.IoU), len(p.LowRes[2]))
		}
		// Feeding the best low-res mask back works.
		if _, err := m.Predict(s, e, Prompt{Points: []Point{{X: 3, Y: 4, Foreground: true}}, Mask: p.LowRes[p.Best()]}); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestLoadRefusesOtherFiles(t *testing.T) {
	for _, c := range []struct{ path, want string }{
		{"", "no weights"},
		{"../../../conformance/testdata/sam/decode_points.safetensors", "not Segment Anything weights"},
		{"missing.safetensors", "missing.safetensors"},
	} {
		err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
			m, err := Load(s, Config{Weights: c.path})
			if err == nil {
				m.Release()
			}
			return err
		})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Load(%q): %v, want an error containing %q", c.path, err, c.want)
		}
	}
}

// TestMaskPNG: each mask as a gray PNG, 255 where its logit is above
// MaskThreshold, with the count of those pixels.
func TestMaskPNG(t *testing.T) {
	p := &Prediction{Width: 3, Height: 2, Masks: [][]float32{
		{-1, 0, 0.5, 2, -3, 1e-6},
		{-1, -1, -1, -1, -1, -1},
	}}
	for _, c := range []struct {
		i      int
		want   []uint8
		pixels int
	}{
		{0, []uint8{0, 0, 255, 255, 0, 255}, 3},
		{1, []uint8{0, 0, 0, 0, 0, 0}, 0},
	} {
		data, n, err := p.MaskPNG(c.i)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("mask %d: %v", c.i, err)
		}
		g, ok := img.(*image.Gray)
		if !ok || g.Bounds() != image.Rect(0, 0, 3, 2) || !bytes.Equal(g.Pix, c.want) || n != c.pixels {
			t.Errorf("mask %d: %T %v pixels %v, count %d; want gray 3x2 %v, count %d", c.i, img, img.Bounds(), g, n, c.want, c.pixels)
		}
	}
}
