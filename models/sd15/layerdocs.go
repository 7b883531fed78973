package sd15

import "github.com/refiners-go/refiners/core"

// The reference documentation of the SD 1.5 layers (core.LayerDoc).
func init() {
	residuals := "unet/residuals"
	core.DocumentAll(map[string]core.LayerDoc{
		"SinusoidalEmbedding": {Refiners: "Lambda(compute_sinusoidal_embedding) in RangeEncoder", Inputs: "timesteps [B]", Outputs: "float32 [B, embedding_dim]"},
		"StatefulFlatten": {Refiners: "StatefulFlatten (sd1 cross_attention)", Inputs: "x", Outputs: "x with dims start_dim..end_dim merged", Writes: []string{"{context}/{key}: the merged sizes, pushed on a stack"},
			Args: map[string]string{"context": "context name", "key": "key within the context", "start_dim": "first dim merged", "end_dim": "last dim merged"}},
		"PopContext": {Refiners: "UseContext(context, key).compose(lambda x: x.pop())", Inputs: "ignored", Outputs: "int64 [n]: the sizes last pushed", Reads: []string{"{context}/{key}"}, Writes: []string{"{context}/{key}: the stack, popped"},
			Args: map[string]string{"context": "context name", "key": "key within the context"}},
		"ResidualAccumulator":  {Refiners: "ResidualAccumulator", Inputs: "x [B, C, H, W]", Outputs: "x, unchanged", Reads: []string{residuals}, Writes: []string{residuals + ": slot n += x"}},
		"ResidualConcatenator": {Refiners: "ResidualConcatenator", Inputs: "x [B, C, H, W]", Outputs: "[B, C + C_n, H, W]: x and slot n", Reads: []string{residuals}},
		"UseResidual":          {Refiners: "UseContext(unet, residuals).compose(lambda x: x[n])", Inputs: "ignored", Outputs: "slot n of the residuals (0 while unset)", Reads: []string{residuals}},
		"ControlnetResidual": {Refiners: "Lambda(_store_nth_residual(n)) in Controlnet", Inputs: "x [B, C, H, W]", Outputs: "x, unchanged",
			Reads: []string{"controlnet/scale_{name} (when set)"}, Writes: []string{residuals + ": slot n += scale·x"}},
	})
}
