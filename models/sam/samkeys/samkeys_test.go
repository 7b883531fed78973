package samkeys

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"strings"
	"testing"
)

// official is the key layout of a small official checkpoint: blocks image
// blocks, layers decoder layers.
func official(blocks, layers int) map[string][]int64 {
	s := map[string][]int64{
		"image_encoder.patch_embed.proj.weight": {16, 3, 16, 16}, "image_encoder.patch_embed.proj.bias": {16},
		"image_encoder.pos_embed":     {1, 8, 8, 16},
		"image_encoder.neck.0.weight": {32, 16, 1, 1},
		"image_encoder.neck.1.weight": {32}, "image_encoder.neck.1.bias": {32},
		"image_encoder.neck.2.weight": {32, 32, 3, 3},
		"image_encoder.neck.3.weight": {32}, "image_encoder.neck.3.bias": {32},
		"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": {2, 16},
		"prompt_encoder.not_a_point_embed.weight":                     {1, 32},
		"prompt_encoder.no_mask_embed.weight":                         {1, 32},
		"mask_decoder.iou_token.weight":                               {1, 32},
		"mask_decoder.mask_tokens.weight":                             {4, 32},
		"mask_decoder.transformer.norm_final_attn.weight":             {32},
		"mask_decoder.transformer.norm_final_attn.bias":               {32},
	}
	wb := func(p string, out, in int64) {
		s[p+".weight"] = []int64{out, in}
		s[p+".bias"] = []int64{out}
	}
	for i := range 4 {
		s[fmt.Sprintf("prompt_encoder.point_embeddings.%d.weight", i)] = []int64{1, 32}
	}
	for _, i := range []int{0, 1, 3, 4, 6} {
		wb(fmt.Sprintf("prompt_encoder.mask_downscaling.%d", i), 4, 1)
	}
	for i := range blocks {
		p := fmt.Sprintf("image_encoder.blocks.%d.", i)
		for _, n := range []string{"norm1", "attn.qkv", "attn.proj", "norm2", "mlp.lin1", "mlp.lin2"} {
			wb(p+n, 16, 16)
		}
		s[p+"attn.rel_pos_h"] = []int64{5, 8}
		s[p+"attn.rel_pos_w"] = []int64{5, 8}
	}
	attn := func(p string) {
		for _, n := range []string{"q_proj", "k_proj", "v_proj", "out_proj"} {
			wb(p+n, 16, 32)
		}
	}
	for i := range layers {
		p := fmt.Sprintf("mask_decoder.transformer.layers.%d.", i)
		for _, n := range []string{"norm1", "norm2", "norm3", "norm4", "mlp.lin1", "mlp.lin2"} {
			wb(p+n, 32, 32)
		}
		attn(p + "self_attn.")
		attn(p + "cross_attn_token_to_image.")
		attn(p + "cross_attn_image_to_token.")
	}
	attn("mask_decoder.transformer.final_attn_token_to_image.")
	for _, i := range []int{0, 1, 3} {
		wb(fmt.Sprintf("mask_decoder.output_upscaling.%d", i), 8, 32)
	}
	for h := range 4 {
		for l := range 3 {
			wb(fmt.Sprintf("mask_decoder.output_hypernetworks_mlps.%d.layers.%d", h, l), 32, 32)
		}
	}
	for l := range 3 {
		wb(fmt.Sprintf("mask_decoder.iou_prediction_head.layers.%d", l), 32, 32)
	}
	return s
}

func TestOfficial(t *testing.T) {
	keys := official(3, 2)
	rules, err := Official(keys)
	if err != nil {
		t.Fatal(err)
	}
	sources := 0
	byTarget := map[string]Rule{}
	for _, r := range rules {
		sources += len(r.Sources)
		if _, dup := byTarget[r.Target]; dup {
			t.Errorf("target %s made twice", r.Target)
		}
		byTarget[r.Target] = r
	}
	if sources != len(keys) {
		t.Errorf("rules use %d sources, the checkpoint has %d keys", sources, len(keys))
	}
	for target, want := range map[string]struct {
		op    Op
		shape []int64
		n     int
	}{
		"image_encoder.PositionalEncoder.Parameter.weight": {Reshape, []int64{8, 8, 16}, 1},
		"point_encoder.CoordinateEncoder.Linear.weight":    {Transpose, []int64{16, 2}, 1},
		"point_encoder.Residual.PointTypeEmbedding.weight": {Concat, []int64{5, 32}, 5},
		"mask_decoder.IOUMaskEncoder.weight":               {Concat, []int64{5, 32}, 2},
		"image_encoder.Transformer.TransformerLayer_3.Residual_1.FusedSelfAttention.RelativePositionAttention.horizontal_embedding": {Copy, []int64{5, 8}, 1},
		"mask_decoder.Transformer.TwoWayTransformerLayer_1.SelfAttention.Distribute.Linear_3.weight":                                {Copy, []int64{16, 32}, 1},
		"mask_decoder.Transformer.TwoWayTransformerLayer_2.SparseSelfAttention.Attention.Linear.bias":                               {Copy, []int64{16}, 1},
		"mask_decoder.Parallel.MaskPrediction.Matmul.Hypernetworks.Chain_4.MultiLinear.Linear_3.weight":                             {Copy, []int64{32, 32}, 1},
		"mask_encoder.no_mask_embedding": {Copy, []int64{1, 32}, 1},
	} {
		r, ok := byTarget[target]
		if !ok {
			t.Errorf("no rule for %s", target)
			continue
		}
		if r.Op != want.op || fmt.Sprint(r.Shape) != fmt.Sprint(want.shape) || len(r.Sources) != want.n {
			t.Errorf("%s: %s %v from %d sources, want %s %v from %d", target, r.Op, r.Shape, len(r.Sources), want.op, want.shape, want.n)
		}
	}
	if got := byTarget["image_encoder.Transformer.TransformerLayer_1.Residual_1.FusedSelfAttention.RelativePositionAttention.vertical_embedding"].Sources[0]; got != "image_encoder.blocks.0.attn.rel_pos_h" {
		t.Errorf("vertical embedding from %s, want rel_pos_h", got)
	}
}

func TestOfficialRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(map[string][]int64)
		want string
	}{
		{"refiners layout", func(s map[string][]int64) { delete(s, "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix") }, "not an official"},
		{"missing key", func(s map[string][]int64) { delete(s, "image_encoder.blocks.1.norm2.bias") }, "missing (first: image_encoder.blocks.1.norm2.bias)"},
		{"extra key", func(s map[string][]int64) { s["optimizer.state"] = []int64{1} }, "not part of SAM (first: optimizer.state)"},
		{"hole in blocks", func(s map[string][]int64) {
			for k := range s {
				if strings.HasPrefix(k, "image_encoder.blocks.1.") {
					delete(s, k)
				}
			}
		}, "index 1 is missing"},
		{"bad pos_embed", func(s map[string][]int64) { s["image_encoder.pos_embed"] = []int64{8, 8, 16} }, "want [1, grid, grid, channels]"},
		{"bad token", func(s map[string][]int64) { s["mask_decoder.mask_tokens.weight"] = []int64{4, 31} }, "want [rows, 32]"},
	} {
		keys := maps.Clone(official(3, 2))
		c.edit(keys)
		_, err := Official(keys)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

// TestReadSizesViTH reads SegmentAnythingH's own layout (the headers
// conformance/generate_sam.py writes from Refiners' classes on the meta
// device) and finds ViT-H's parameters, the spec's defaults.
func TestReadSizesViTH(t *testing.T) {
	shapes := map[string][]int64{
		"point_encoder.Residual.PointTypeEmbedding.weight": {5, 256},
		"point_encoder.CoordinateEncoder.Linear.weight":    {128, 2},
		"mask_encoder.Conv2d_2.weight":                     {16, 4, 2, 2},
		"mask_encoder.Conv2d_3.weight":                     {256, 16, 1, 1},
	}
	for prefix, file := range map[string]string{"image_encoder.": "sam_vit_h_image_encoder.json", "mask_decoder.": "sam_vit_h_mask_decoder.json"} {
		b, err := os.ReadFile("../../../conformance/testdata/headers/" + file)
		if err != nil {
			t.Fatal(err)
		}
		var h map[string]struct{ Shape []int64 }
		if err := json.Unmarshal(b, &h); err != nil {
			t.Fatal(err)
		}
		for k, v := range h {
			shapes[prefix+k] = v.Shape
		}
	}
	sz, err := ReadSizes(shapes, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"embedding_dim": "1280", "num_layers": "32", "num_heads": "16", "global_1": "7", "global_2": "15",
		"global_3": "23", "global_4": "31", "image_size": "1024", "patch_size": "16", "window_size": "14", "neck_dim": "256"}
	if !maps.Equal(sz.Encoder, want) {
		t.Errorf("encoder sizes %v, want %v", sz.Encoder, want)
	}
	wantDec := map[string]string{"embedding_dim": "256", "feed_forward_dim": "2048", "num_layers": "2", "num_output_mask": "3", "num_heads": "8", "dense_side": "64"}
	if !maps.Equal(sz.Decoder, wantDec) {
		t.Errorf("decoder sizes %v, want %v", sz.Decoder, wantDec)
	}
	if sz.PointDim != 256 || sz.MaskDim != 256 || sz.MaskInner != 16 {
		t.Errorf("prompt sizes %d %d %d", sz.PointDim, sz.MaskDim, sz.MaskInner)
	}
}
