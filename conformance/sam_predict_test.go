package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"testing"
	"time"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/models/sam/predict"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

// samPrompt is a predict case's prompt (metadata "prompt").
type samPrompt struct {
	Image      string       `json:"image"`
	Foreground [][2]float64 `json:"foreground"`
	Background [][2]float64 `json:"background"`
	Box        [][2]float64 `json:"box"`
	Mask       bool         `json:"mask"`
}

// TestSAMPredict checks the predictor (models/sam/predict) end to end
// against Refiners 0.4.0's SegmentAnything.predict on a small model with
// random weights, loaded from a file in Refiners' SegmentAnything layout:
// the pre-processed image bit for bit, then the image embedding, the
// high-res mask logits, the IoU predictions and the low-res logits under
// the error model, for points, a box, both, a low-res mask prompt, and
// images shrunk and enlarged. The binarised masks agree wherever the
// reference's logit is farther from 0 than the allowed error.
func TestSAMPredict(t *testing.T) {
	names := []string{"points", "box", "points_box", "points_mask", "one_point"}
	rows := runSAMPredictCases(t, "testdata/sam/predict_model.safetensors", "testdata/sam", "predict_", names)
	publishReport(t, reportHeader("SAM predict")+rows)
}

// TestSAMOfficial checks the predictor on an official segment_anything
// checkpoint (a state dict saved by torch.save, read by torchfile, renamed
// by models/sam/samkeys) against the official SamPredictor: a small model
// by default; with CONFORMANCE_TIER=full, the official model at full size
// in testdata/full/sam_official_$SAM_SIZE (vit_b unless set; written by
// generate_sam_official.py --full --size $SAM_SIZE).
func TestSAMOfficial(t *testing.T) {
	dir := "testdata/sam_official"
	if os.Getenv("CONFORMANCE_TIER") == "full" {
		size := os.Getenv("SAM_SIZE")
		if size == "" {
			size = "vit_b"
		}
		dir = "testdata/full/sam_official_" + size
	}
	names := []string{"points", "box", "points_box", "points_mask"}
	rows := runSAMPredictCases(t, dir+"/model.pth", dir, "", names)
	publishReport(t, reportHeader("SAM official checkpoint")+rows)
}

// runSAMPredictCases loads the model once and checks each case
// (dir/<prefix><name>.safetensors) against its reference. The image
// encoder runs once per image: cases on the same image share its
// embedding (each case still checks it).
func runSAMPredictCases(t *testing.T, modelPath, dir, prefix string, names []string) string {
	var rows string
	embeddings := map[string]*predict.Embedding{}
	var model *predict.Model
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		var err error
		model, err = predict.Load(s, predict.Config{Weights: modelPath})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer model.Release()
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			path := dir + "/" + prefix + name + ".safetensors"
			f, err := weights.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var pr samPrompt
			if err := json.Unmarshal([]byte(f.Metadata()["prompt"]), &pr); err != nil {
				t.Fatalf("%s: prompt: %v", path, err)
			}
			img, err := pipeline.ReadImage(dir + "/" + pr.Image)
			if err != nil {
				t.Fatal(err)
			}
			rgb := pipeline.ToRGB(img)
			var prompt predict.Prompt
			for _, p := range pr.Foreground {
				prompt.Points = append(prompt.Points, predict.Point{X: p[0], Y: p[1], Foreground: true})
			}
			for _, p := range pr.Background {
				prompt.Points = append(prompt.Points, predict.Point{X: p[0], Y: p[1]})
			}
			if pr.Box != nil {
				prompt.Box = &predict.Box{X0: pr.Box[0][0], Y0: pr.Box[0][1], X1: pr.Box[1][0], Y1: pr.Box[1][1]}
			}
			if pr.Mask {
				v, _, err := f.Float64s("input.low_res_mask")
				if err != nil {
					t.Fatal(err)
				}
				for _, x := range v {
					prompt.Mask = append(prompt.Mask, float32(x))
				}
			}
			keys := []string{"embedding", "masks", "iou", "low_res"}
			diffs := map[string]Diff{}
			var flips, total int
			err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
				if _, ok := f.Info("output.preprocessed"); ok {
					x, err := model.Preprocess(s, rgb)
					if err != nil {
						return err
					}
					diffs["preprocessed"] = ExactDiff(s, x, f.Load(s, "output.preprocessed"))
					keys = append([]string{"preprocessed"}, keys...)
				}
				e, ok := embeddings[pr.Image]
				if !ok {
					start := time.Now()
					e, err = model.Embed(s, rgb)
					if err != nil {
						return err
					}
					t.Logf("%s: image encoder %.1f s", pr.Image, time.Since(start).Seconds())
					embeddings[pr.Image] = e
				}
				got := map[string]*tensor.Tensor{"embedding": s.FromFloat32(e.Features, 1, e.Channels, e.Grid, e.Grid)}
				got["masks"], got["iou"], got["low_res"], err = model.PredictTensors(s, e, prompt)
				if err != nil {
					return err
				}
				for key, g := range got {
					ref, err := ReadReference(f, "output."+key)
					if err != nil {
						return err
					}
					diffs[key] = ref.Check(s, g)
				}
				// Binarised masks: Predict's copy of the same logits.
				p, err := model.Predict(s, e, prompt)
				if err != nil {
					return err
				}
				ref, err := ReadReference(f, "output.masks")
				if err != nil {
					return err
				}
				margin := ErrorBound * math.Max(diffs["masks"].RefErr, diffs["masks"].Floor)
				hw := p.Width * p.Height
				for i := range p.Masks {
					for j, b := range p.Binary(i) {
						exact := ref.Exact[i*hw+j]
						if math.Abs(exact) > margin {
							total++
							if b != (exact > predict.MaskThreshold) {
								flips++
							}
						}
					}
				}
				return s.Err()
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, key := range keys {
				if !diffs[key].Pass {
					t.Errorf("%s: %s", key, diffs[key])
				}
				rows += reportRow(prefix+name, key, diffs[key]) + "\n"
			}
			if flips > 0 || total == 0 {
				t.Errorf("binarised masks: %d of %d pixels away from the threshold differ", flips, total)
			}
			rows += fmt.Sprintf("%-34s %-14s %d of %d decided pixels equal\n", prefix+name, "binary", total-flips, total)
		})
	}
	return rows
}
