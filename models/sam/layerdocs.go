package sam

import "github.com/refiners-go/refiners/core"

// The reference documentation of the SAM layers (core.LayerDoc).
func init() {
	types := pointContext + "/" + typeMaskKey
	core.DocumentAll(map[string]core.LayerDoc{
		"RelativePositionAttention": {Refiners: "RelativePositionAttention (segment_anything.image_encoder)", Inputs: "x [B, H, W, 3·embedding_dim]", Outputs: "[B, H, W, embedding_dim]",
			Args: map[string]string{"num_heads": "heads; embedding_dim must be divisible by it"}},
		"WindowPartition": {Refiners: "WindowPartition", Inputs: "x [B, H, W, C]", Outputs: "[B·n, window_size, window_size, C]", Writes: []string{windowContext + "/" + windowKey + ": the padded and original sizes"}},
		"WindowMerge":     {Refiners: "WindowMerge", Inputs: "x [B·n, window_size, window_size, C]", Outputs: "[B, H, W, C]", Reads: []string{windowContext + "/" + windowKey}},
		"PointTypeEmbedding": {Refiners: "PointTypeEmbedding", Inputs: "point types [B, N], integers (UseContext(point_encoder, type_mask) before it in the spec)", Outputs: "float32 [B, N, embedding_dim]",
			Args: map[string]string{"embedding_dim": "width of the embeddings"}},
		"SAMPositionalEncoder": {Refiners: "PositionalEncoder (segment_anything.image_encoder)", Inputs: "x [B, H, W, embedding_dim]", Outputs: "same shape",
			Args: map[string]string{"embedding_dim": "width of the embeddings"}},
		"PointPadding": {Refiners: "Lambda(pad) in PointEncoder", Inputs: "x [B, N, C]", Outputs: "[B, N+1, C] without a box, else x", Reads: []string{types}, Writes: []string{types + ": with the padding point's type"}},
		"MaskEncoder": {Refiners: "MaskEncoder", Inputs: "mask [B, 1, 4h, 4w]", Outputs: "[B, embedding_dim, h, w]",
			Args: map[string]string{"embedding_dim": "output channels", "intermediate_channels": "channels after the second strided conv (the first has a quarter)"}},
		"IOUMaskEncoder": {Refiners: "IOUMaskEncoder", Inputs: "ignored", Outputs: "[1, num_mask_tokens + 1, embedding_dim]", Args: map[string]string{"embedding_dim": "width of a token"}},
		"EmbeddingsAggregator": {Refiners: "EmbeddingsAggregator", Inputs: "tokens [B, T, C]", Outputs: "sparse [B, T + N, C]: the tokens and the point embedding",
			Reads:  []string{decoderContext + "/image_embedding", decoderContext + "/point_embedding", decoderContext + "/mask_embedding", decoderContext + "/dense_positional_embedding"},
			Writes: []string{decoderContext + "/dense_embedding", decoderContext + "/dense_positional_embedding", decoderContext + "/sparse_embedding"},
			Args:   map[string]string{"num_output_mask": "masks the decoder outputs"}},
		"Hypernetworks": {Refiners: "Hypernetworks", Inputs: "sparse [B, T, C]", Outputs: "[B, num_mask_tokens + 1, C/8]",
			Args: map[string]string{"embedding_dim": "C, the token width", "num_layers": "Linear layers of each MultiLinear", "num_mask_tokens": "mask tokens after the IoU token, one MultiLinear each"}},
	})
}
