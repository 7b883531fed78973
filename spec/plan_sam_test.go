package spec

import (
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/weights"
)

// TestPlanFullSAMImageEncoder checks specs/sam.yaml at its defaults (ViT-H)
// against the layout of Refiners' SegmentAnythingH image_encoder
// (generate_sam.py writes it), from the header alone; and that a ViT-B
// build does not fit it, naming a mismatched key.
func TestPlanFullSAMImageEncoder(t *testing.T) {
	path := sparseWeights(t, "../conformance/testdata/headers/sam_vit_h_image_encoder.json")
	header, _, err := weights.ReadHeader(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Load("../specs/sam.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		overrides map[string]string
		problem   string // "" when every key and shape fits
	}{
		{"ViT-H", nil, ""},
		{"ViT-B", map[string]string{"embedding_dim": "768", "num_layers": "12", "num_heads": "12",
			"global_1": "2", "global_2": "5", "global_3": "8", "global_4": "11"}, "PatchEncoder.Conv2d.weight"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := s.Build(tc.overrides)
			if err != nil {
				t.Fatal(err)
			}
			r := Plan(m, header, "")
			errs := r.Errors(path)
			if tc.problem == "" {
				if len(errs) > 0 {
					t.Fatalf("plan found %d problems:\n%v", len(errs), errs)
				}
				if len(r.Rows) != 457 {
					t.Errorf("%d parameter tensors, SegmentAnythingH's image encoder has 457", len(r.Rows))
				}
				return
			}
			var all []string
			for _, e := range errs {
				all = append(all, e.Error())
			}
			if !strings.Contains(strings.Join(all, "\n"), tc.problem) {
				t.Errorf("plan problems do not mention %s:\n%s", tc.problem, strings.Join(all, "\n"))
			}
		})
	}
}

// TestPlanFullSAMMaskDecoder checks specs/sam_mask_decoder.yaml at its
// defaults against the layout of SegmentAnythingH's mask_decoder.
func TestPlanFullSAMMaskDecoder(t *testing.T) {
	path := sparseWeights(t, "../conformance/testdata/headers/sam_vit_h_mask_decoder.json")
	header, _, err := weights.ReadHeader(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Load("../specs/sam_mask_decoder.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Build(nil)
	if err != nil {
		t.Fatal(err)
	}
	r := Plan(m, header, "")
	if errs := r.Errors(path); len(errs) > 0 {
		t.Fatalf("plan found %d problems:\n%v", len(errs), errs)
	}
	if len(r.Rows) != 119 {
		t.Errorf("%d parameter tensors, SegmentAnythingH's mask decoder has 119", len(r.Rows))
	}
}

// TestPlanSAMMaskEncoder plans specs/sam_mask_encoder.yaml against a file
// in Refiners' SegmentAnything layout (a small model written by
// generate_sam_predict.py) under --prefix mask_encoder.: every key and
// shape fits, no_mask_embedding included. Without the prefix, or with
// another width, the plan reports problems.
func TestPlanSAMMaskEncoder(t *testing.T) {
	path := "../conformance/testdata/sam/predict_model.safetensors"
	header, _, err := weights.ReadHeader(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Load("../specs/sam_mask_encoder.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, dim, prefix string
		problem           string // "" when every key and shape fits
	}{
		{"fits", "32", "mask_encoder.", ""},
		{"no prefix", "32", "", "no_mask_embedding"},
		{"other width", "64", "mask_encoder.", "mask_encoder.no_mask_embedding"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := s.Build(map[string]string{"embedding_dim": tc.dim})
			if err != nil {
				t.Fatal(err)
			}
			r := Plan(m, header, tc.prefix)
			errs := r.Errors(path)
			if tc.problem == "" {
				if len(errs) > 0 {
					t.Fatalf("plan found %d problems:\n%v", len(errs), errs)
				}
				if len(r.Rows) != 11 {
					t.Errorf("%d parameter tensors, SegmentAnything's mask encoder has 11", len(r.Rows))
				}
				for _, row := range r.Rows {
					if row.Status != "ok" {
						t.Errorf("%s: %s", row.Key, row.Status)
					}
				}
				return
			}
			var all []string
			for _, e := range errs {
				all = append(all, e.Error())
			}
			if !strings.Contains(strings.Join(all, "\n"), tc.problem) {
				t.Errorf("plan problems do not mention %s:\n%s", tc.problem, strings.Join(all, "\n"))
			}
		})
	}
}
