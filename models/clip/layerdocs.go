package clip

import "github.com/refiners-go/refiners/core"

// The reference documentation of the CLIP layers (core.LayerDoc).
func init() {
	core.DocumentAll(map[string]core.LayerDoc{
		"TokenEncoder": {Refiners: "TokenEncoder (clip.text_encoder)", Inputs: "token ids [B, L], int64", Outputs: "[B, L, embedding_dim]",
			Args: map[string]string{"vocabulary_size": "rows of the table (49408 for CLIP)", "embedding_dim": "width of a row"}},
		"PositionalEncoder": {Refiners: "PositionalEncoder (clip.text_encoder)", Inputs: "token ids [B, L] (only L is used)", Outputs: "[1, L, embedding_dim]",
			Args: map[string]string{"max_sequence_length": "rows of the table (77 for CLIP)", "embedding_dim": "width of a row"}},
	})
}
