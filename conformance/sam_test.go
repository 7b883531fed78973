package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/models/sam"
	"github.com/refiners-go/refiners/spec"
)

// TestSAMDensePositionalEmbedding checks sam.DensePositionalEmbedding
// (Refiners' PointEncoder.get_dense_positional_embedding) on the point
// encoder spec with the reference's weights.
func TestSAMDensePositionalEmbedding(t *testing.T) {
	path := "testdata/sam/dense_positional_embedding.safetensors"
	f, err := weights.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var overrides map[string]string
	if err := json.Unmarshal([]byte(f.Metadata()["overrides"]), &overrides); err != nil {
		t.Fatalf("%s: overrides: %v", path, err)
	}
	side, err := strconv.ParseInt(f.Metadata()["side"], 10, 64)
	if err != nil {
		t.Fatalf("%s: side: %v", path, err)
	}
	sp, err := spec.Load("../specs/sam_point_encoder.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := sp.Build(overrides)
	if err != nil {
		t.Fatal(err)
	}
	var d Diff
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if _, err := core.LoadState(s, m, f, core.LoadOptions{Strict: true, Prefix: "param."}); err != nil {
			return err
		}
		defer core.ReleaseParams(m)
		got, err := sam.DensePositionalEmbedding(s, m, side, side)
		if err != nil {
			return err
		}
		ref, err := ReadReference(f, "output.0")
		if err != nil {
			return err
		}
		d = ref.Check(s, got)
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Pass {
		t.Errorf("dense positional embedding: %s", d)
	}
	publishReport(t, reportHeader("SAM")+reportRow("dense_positional_embedding", "0", d)+"\n")
}

// TestSAMDecode checks sam.Decode (the prompt side of Refiners'
// SegmentAnything.predict: point and mask encoders, dense positional
// embedding, mask decoder) against Refiners' parts at a small size, with
// the weights under Refiners' part prefixes.
func TestSAMDecode(t *testing.T) {
	var rows string
	for _, name := range []string{"decode_points", "decode_box_mask"} {
		t.Run(name, func(t *testing.T) {
			path := "testdata/sam/" + name + ".safetensors"
			f, err := weights.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			meta := f.Metadata()
			dim, side := meta["embedding_dim"], meta["side"]
			build := func(file string, overrides map[string]string) *core.Chain {
				sp, err := spec.Load(file)
				if err != nil {
					t.Fatal(err)
				}
				m, err := sp.Build(overrides)
				if err != nil {
					t.Fatal(err)
				}
				return m
			}
			n, err := strconv.ParseInt(dim, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			maskEncoder, err := sam.NewMaskEncoder(n, 16)
			if err != nil {
				t.Fatal(err)
			}
			parts := sam.Parts{
				PointEncoder: build("../specs/sam_point_encoder.yaml", map[string]string{"embedding_dim": dim}),
				MaskEncoder:  maskEncoder,
				MaskDecoder: build("../specs/sam_mask_decoder.yaml", map[string]string{
					"embedding_dim": dim, "feed_forward_dim": strconv.FormatInt(2*n, 10), "dense_side": side}),
			}
			diffs := map[string]Diff{}
			err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
				for prefix, m := range map[string]*core.Chain{"point_encoder": parts.PointEncoder, "mask_encoder": parts.MaskEncoder, "mask_decoder": parts.MaskDecoder} {
					if _, err := core.LoadState(s, m, f, core.LoadOptions{Strict: false, Prefix: "param." + prefix + "."}); err != nil {
						return err
					}
					defer core.ReleaseParams(m)
					for _, e := range core.StateDict(m) {
						if !(*e.Value).Valid() {
							return fmt.Errorf("%s.%s not loaded", prefix, e.Key)
						}
					}
				}
				var lowRes *tensor.Tensor
				if _, ok := f.Info("input.low_res_mask"); ok {
					lowRes = f.Load(s, "input.low_res_mask")
				}
				masks, iou, err := sam.Decode(s, parts, f.Load(s, "input.image_embedding"), f.Load(s, "input.points"), f.Load(s, "input.types"), lowRes)
				if err != nil {
					return err
				}
				for key, got := range map[string]*tensor.Tensor{"masks": masks, "iou": iou} {
					ref, err := ReadReference(f, "output."+key)
					if err != nil {
						return err
					}
					diffs[key] = ref.Check(s, got)
				}
				return s.Err()
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, key := range []string{"masks", "iou"} {
				if !diffs[key].Pass {
					t.Errorf("%s: %s", key, diffs[key])
				}
				rows += reportRow(name, key, diffs[key]) + "\n"
			}
		})
	}
	publishReport(t, reportHeader("SAM decode")+rows)
}
