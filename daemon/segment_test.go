package daemon

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/models/sam/predict"
)

// The tiny SAM of the predictor's conformance cases (random weights).
const (
	segWeights = "../conformance/testdata/sam/predict_model.safetensors"
	segImage   = "../conformance/testdata/sam/predict_wide.png"
	segImage2  = "../conformance/testdata/sam/predict_tall.png"
)

func segDaemon(t *testing.T, cacheBytes int64) *testDaemon {
	t.Helper()
	return newTestDaemon(t, func(c *Config) {
		c.Segmenters = map[string]SegmenterConfig{"tiny": {Weights: segWeights, CacheBytes: cacheBytes}}
	})
}

func imageB64(t *testing.T, path string) (string, string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b), predict.Digest(b)
}

func segPost(t *testing.T, td *testDaemon, req map[string]any) (int, SegmentResponse, string) {
	t.Helper()
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	code, out := td.post(t, "/v1/segment", string(body))
	var res SegmentResponse
	if code == 200 {
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("answer: %v\n%s", err, out)
		}
	}
	return code, res, string(out)
}

// TestSegmentCache: the first prompt on an image computes its embedding,
// later prompts (by image or by digest) reuse it (cached, one image
// encoder run), and the masks are the library's.
func TestSegmentCache(t *testing.T) {
	td := segDaemon(t, 0)
	g := td.d.segs.byName["tiny"]
	img, digest := imageB64(t, segImage)
	points := []map[string]any{{"x": 40, "y": 30.5}, {"x": 12, "y": 80, "label": "bg"}}
	code, first, body := segPost(t, td, map[string]any{"model": "tiny", "image": img, "points": points, "multimask": true})
	if code != 200 {
		t.Fatalf("first prompt: %d %s", code, body)
	}
	if first.Cached || first.ImageDigest != digest || len(first.Masks) != 3 || first.Width != 150 || first.Height != 97 {
		t.Fatalf("first answer: cached %v, digest %s (want %s), %d masks, %dx%d", first.Cached, first.ImageDigest, digest, len(first.Masks), first.Width, first.Height)
	}
	// The library's answer to the same prompt.
	want := predictTiny(t, predict.Prompt{Points: []predict.Point{{X: 40, Y: 30.5, Foreground: true}, {X: 12, Y: 80}}})
	for i, m := range first.Masks {
		b, err := base64.StdEncoding.DecodeString(m.PNGBase64)
		if err != nil {
			t.Fatal(err)
		}
		wantPNG, n, err := want.MaskPNG(i)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != string(wantPNG) || m.Score != want.IoU[i] || m.Pixels != n || m.Index != i {
			t.Errorf("mask %d differs from the library's", i)
		}
	}
	if first.Best != want.Best() || first.LowResSide != 32 {
		t.Errorf("best %d (want %d), low_res_side %d", first.Best, want.Best(), first.LowResSide)
	}

	// Second and third prompts: by image, then by digest alone, with the
	// low-res logits fed back. Only the decoder runs.
	code, second, body := segPost(t, td, map[string]any{"model": "tiny", "image": img, "box": []float64{20, 15, 120, 90}})
	if code != 200 || !second.Cached || len(second.Masks) != 1 || second.Masks[0].Index != second.Best {
		t.Fatalf("second prompt: %d cached %v %s", code, second.Cached, body)
	}
	code, third, body := segPost(t, td, map[string]any{"model": "tiny", "image_digest": digest, "points": points,
		"mask_input": first.LowResLogitsBase64, "low_res_logits": false})
	if code != 200 || !third.Cached || third.LowResLogitsBase64 != "" {
		t.Fatalf("third prompt: %d cached %v %s", code, third.Cached, body)
	}
	raw, _ := base64.StdEncoding.DecodeString(first.LowResLogitsBase64)
	mask := make([]float32, len(raw)/4)
	for i := range mask {
		mask[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	refined := predictTiny(t, predict.Prompt{Points: []predict.Point{{X: 40, Y: 30.5, Foreground: true}, {X: 12, Y: 80}}, Mask: mask})
	if third.Best != refined.Best() || third.Masks[0].Score != refined.IoU[refined.Best()] {
		t.Errorf("refined answer differs from the library's: best %d score %v, want %d %v", third.Best, third.Masks[0].Score, refined.Best(), refined.IoU[refined.Best()])
	}
	if n := g.embeddings.Load(); n != 1 {
		t.Errorf("%d image-encoder runs for three prompts on one image, want 1", n)
	}
	if n := g.decodes.Load(); n != 3 {
		t.Errorf("%d decodes, want 3", n)
	}

	// Another image: a new embedding.
	img2, _ := imageB64(t, segImage2)
	if code, res, body := segPost(t, td, map[string]any{"model": "tiny", "image": img2, "points": points[:1]}); code != 200 || res.Cached {
		t.Fatalf("other image: %d %v %s", code, res.Cached, body)
	}
	if n := g.embeddings.Load(); n != 2 {
		t.Errorf("%d image-encoder runs, want 2", n)
	}
	code, list := td.do(t, "GET", "/v1/segmenters", "", nil)
	var info struct{ Segmenters []SegmenterInfo }
	if err := json.Unmarshal(list, &info); code != 200 || err != nil || len(info.Segmenters) != 1 {
		t.Fatalf("GET /v1/segmenters: %d %v %s", code, err, list)
	}
	if s := info.Segmenters[0]; !s.Loaded || s.Format != "refiners" || s.Embeddings != 2 || s.Decodes != 4 || s.Cache.Entries != 2 || s.Cache.Hits != 2 {
		t.Errorf("segmenter info: %+v", s)
	}
}

// TestSegmentCacheEviction: a cache holding one embedding evicts the
// older image, and a digest-only prompt for it is then a 404.
func TestSegmentCacheEviction(t *testing.T) {
	td := segDaemon(t, 1) // bytes: one embedding at most
	img, digest := imageB64(t, segImage)
	img2, _ := imageB64(t, segImage2)
	pt := []map[string]any{{"x": 10, "y": 10}}
	for _, im := range []string{img, img2} {
		if code, _, body := segPost(t, td, map[string]any{"model": "tiny", "image": im, "points": pt}); code != 200 {
			t.Fatalf("%d %s", code, body)
		}
	}
	code, _, body := segPost(t, td, map[string]any{"model": "tiny", "image_digest": digest, "points": pt})
	if code != 404 || !strings.Contains(body, "send the image") {
		t.Errorf("evicted digest: %d %s", code, body)
	}
	if code, res, body := segPost(t, td, map[string]any{"model": "tiny", "image": img, "points": pt}); code != 200 || res.Cached {
		t.Errorf("resent image: %d cached %v %s", code, res.Cached, body)
	}
}

func TestSegmentRefusals(t *testing.T) {
	td := segDaemon(t, 0)
	img, _ := imageB64(t, segImage)
	notPNG := base64.StdEncoding.EncodeToString([]byte("not an image"))
	for _, c := range []struct {
		name string
		body string
		code int
		want string
	}{
		{"not json", `{"model": `, 400, "request body"},
		{"unknown field", `{"model": "tiny", "imag": "x"}`, 400, "unknown field"},
		{"unknown model", `{"model": "other", "image": "` + img + `", "points": [{"x": 1, "y": 1}]}`, 404, "no segmenter"},
		{"no image", `{"model": "tiny", "points": [{"x": 1, "y": 1}]}`, 400, "image_digest"},
		{"bad digest", `{"model": "tiny", "image_digest": "sha256:xyz", "points": [{"x": 1, "y": 1}]}`, 400, "64 lower-case hex"},
		{"digest mismatch", `{"model": "tiny", "image": "` + img + `", "image_digest": "sha256:` + strings.Repeat("0", 64) + `", "points": [{"x": 1, "y": 1}]}`, 400, "is not the image's"},
		{"unknown digest", `{"model": "tiny", "image_digest": "sha256:` + strings.Repeat("a", 64) + `", "points": [{"x": 1, "y": 1}]}`, 404, "send the image"},
		{"no prompt", `{"model": "tiny", "image": "` + img + `"}`, 400, "at least one point or a box"},
		{"bad label", `{"model": "tiny", "image": "` + img + `", "points": [{"x": 1, "y": 1, "label": "in"}]}`, 400, "fg or bg"},
		{"bad box", `{"model": "tiny", "image": "` + img + `", "box": [1, 2, 3]}`, 400, "x0, y0, x1, y1"},
		{"not base64", `{"model": "tiny", "image": "%%%", "points": [{"x": 1, "y": 1}]}`, 400, "not base64"},
		{"not an image", `{"model": "tiny", "image": "` + notPNG + `", "points": [{"x": 1, "y": 1}]}`, 400, "image"},
		{"too many pixels", `{"model": "tiny", "image": "` + hugePNGHeader() + `", "points": [{"x": 1, "y": 1}]}`, 400, "at most"},
		{"mask size", `{"model": "tiny", "image": "` + img + `", "points": [{"x": 1, "y": 1}], "mask_input": "AAAAAA=="}`, 400, "want 32×32"},
		{"mask bytes", `{"model": "tiny", "image": "` + img + `", "points": [{"x": 1, "y": 1}], "mask_input": "AAA="}`, 400, "float32"},
	} {
		code, body := td.post(t, "/v1/segment", c.body)
		if code != c.code || !strings.Contains(string(body), c.want) {
			t.Errorf("%s: %d %s, want %d containing %q", c.name, code, body, c.code, c.want)
		}
	}
	// Refused requests decoded nothing.
	if n := td.d.segs.byName["tiny"].decodes.Load(); n != 0 {
		t.Errorf("%d decodes after refused requests", n)
	}
}

func TestSegmentersConfig(t *testing.T) {
	for _, c := range []struct {
		name string
		seg  SegmenterConfig
		key  string
		want string
	}{
		{"no weights", SegmenterConfig{}, "a", "no weights"},
		{"bad name", SegmenterConfig{Weights: "x"}, "Bad Name", "segmenter"},
		{"bad device", SegmenterConfig{Weights: "x", Device: "tpu"}, "a", "tpu"},
		{"negative", SegmenterConfig{Weights: "x", CacheBytes: -2}, "a", "cache_bytes"},
	} {
		cfg := Defaults()
		cfg.Store, cfg.PluginsDir = "s", "p"
		cfg.Segmenters = map[string]SegmenterConfig{c.key: c.seg}
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
	// A configuration file with a segmenter.
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	yml := fmt.Sprintf("store: s\nplugins_dir: p\nsegmenters:\n  sam-h:\n    weights: %s\n    cache_bytes: 1048576\n", segWeights)
	if err := os.WriteFile(path, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Defaults()
	if err := cfg.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil || cfg.Segmenters["sam-h"].CacheBytes != 1<<20 {
		t.Errorf("config: %v %+v", err, cfg.Segmenters)
	}
}

// predictTiny is the library's answer on the tiny model and segImage.
func predictTiny(t *testing.T, prompt predict.Prompt) *predict.Prediction {
	t.Helper()
	raw, err := os.ReadFile(segImage)
	if err != nil {
		t.Fatal(err)
	}
	rgb, err := decodeSegmentImage(raw)
	if err != nil {
		t.Fatal(err)
	}
	var p *predict.Prediction
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		m, err := predict.Load(s, predict.Config{Weights: segWeights})
		if err != nil {
			return err
		}
		defer m.Release()
		e, err := m.Embed(s, rgb)
		if err != nil {
			return err
		}
		p, err = m.Predict(s, e, prompt)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// hugePNGHeader is the start of a PNG claiming 20000×20000 pixels (a
// valid signature and IHDR chunk, no data): refused from its header.
func hugePNGHeader() string {
	ihdr := binary.BigEndian.AppendUint32(nil, 20000)
	ihdr = binary.BigEndian.AppendUint32(ihdr, 20000)
	ihdr = append(ihdr, 8, 0, 0, 0, 0) // 8-bit gray
	chunk := append([]byte("IHDR"), ihdr...)
	b := []byte("\x89PNG\r\n\x1a\n")
	b = binary.BigEndian.AppendUint32(b, uint32(len(ihdr)))
	b = append(b, chunk...)
	b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(chunk))
	return base64.StdEncoding.EncodeToString(b)
}
