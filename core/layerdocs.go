package core

// The reference documentation of the core layers (see LayerDoc): the
// Refiners class each stands for, its inputs and outputs, the contexts it
// uses, and the arguments registered without a doc.

const chainInputs = "whatever its first child takes"

func init() {
	conv := map[string]string{
		"stride": "step of the kernel", "padding": "zeros added on each side of H and W",
		"dilation": "spacing of the kernel's taps", "groups": "in_channels and out_channels are split into this many groups",
		"use_bias": "add a learned bias per output channel",
	}
	attn := map[string]string{
		"num_heads": "heads; embedding_dim (or inner_dim) must be divisible by it", "use_bias": "biases on the four projections",
		"is_causal": "mask attention to later positions",
	}
	lora := map[string]string{"rank": "inner size of the down/up pair", "scale": "factor on the branch's output"}
	delta := map[string]string{"scale": "factor on the delta"}
	ctx := map[string]string{"context": "context name", "key": "key within the context"}
	structural := func(refiners, what string) LayerDoc {
		return LayerDoc{Refiners: refiners, Inputs: chainInputs, Outputs: what}
	}

	DocumentAll(map[string]LayerDoc{
		"Linear": {Refiners: "fl.Linear", Inputs: "x [..., in_features]", Outputs: "[..., out_features]",
			Args: map[string]string{"in_features": "size of the last input dim", "out_features": "size of the last output dim", "bias": "add a learned bias"}},
		"MultiLinear": {Refiners: "fl.MultiLinear", Inputs: "x [..., input_dim]", Outputs: "[..., output_dim]",
			Args: map[string]string{"num_layers": "number of Linear layers"}},
		"Conv2d": {Refiners: "fl.Conv2d", Inputs: "x [B, in_channels, H, W]", Outputs: "[B, out_channels, H', W'] with H' = (H + 2·padding − dilation·(kernel_size−1) − 1) / stride + 1", Args: conv},
		"ConvTranspose2d": {Refiners: "fl.ConvTranspose2d", Inputs: "x [B, in_channels, H, W]", Outputs: "[B, out_channels, H', W'] with H' = (H−1)·stride − 2·padding + dilation·(kernel_size−1) + output_padding + 1",
			Args: mergeDocs(conv, map[string]string{"output_padding": "extra rows and columns added on one side of the output"})},
		"LayerNorm": {Refiners: "fl.LayerNorm", Inputs: "x [..., normalized_shape]", Outputs: "same shape",
			Args: map[string]string{"normalized_shape": "size of the last dim", "eps": "added to the variance", "elementwise_affine": "learned weight and bias"}},
		"GroupNorm": {Refiners: "fl.GroupNorm", Inputs: "x [B, channels, ...]", Outputs: "same shape",
			Args: map[string]string{"channels": "channels (dim 1); divisible by num_groups", "num_groups": "groups normalised together", "eps": "added to the variance", "affine": "learned weight and bias"}},
		"LayerNorm2d": {Refiners: "fl.LayerNorm2d", Inputs: "x [B, channels, H, W]", Outputs: "same shape",
			Args: map[string]string{"channels": "channels (dim 1)", "eps": "added to the variance"}},
		"InstanceNorm2d": {Refiners: "fl.InstanceNorm2d", Inputs: "x [B, num_features, H, W]", Outputs: "same shape",
			Args: map[string]string{"num_features": "channels (dim 1)", "eps": "added to the variance", "affine": "learned weight and bias"}},
		"Embedding": {Refiners: "fl.Embedding", Inputs: "ids [...], int64 in [0, num_embeddings)", Outputs: "[..., embedding_dim]",
			Args: map[string]string{"num_embeddings": "rows of the table", "embedding_dim": "width of a row"}},

		"ReLU":            {Refiners: "fl.ReLU", Inputs: "x", Outputs: "same shape"},
		"SiLU":            {Refiners: "fl.SiLU", Inputs: "x", Outputs: "same shape"},
		"Sigmoid":         {Refiners: "fl.Sigmoid", Inputs: "x", Outputs: "same shape"},
		"Tanh":            {Refiners: "fl.Tanh", Inputs: "x", Outputs: "same shape"},
		"ApproximateGeLU": {Refiners: "fl.ApproximateGeLU", Inputs: "x", Outputs: "same shape"},
		"GeLU":            {Refiners: "fl.GeLU", Inputs: "x", Outputs: "same shape"},
		"GLU":             {Refiners: "fl.GLU", Inputs: "x [..., 2n]", Outputs: "[..., n]: first half · activation(second half)"},
		"Sin":             {Refiners: "fl.Sin", Inputs: "x", Outputs: "same shape"},
		"Cos":             {Refiners: "fl.Cos", Inputs: "x", Outputs: "same shape"},

		"ScaledDotProductAttention": {Refiners: "fl.ScaledDotProductAttention", Inputs: "q [B, Lq, D], k [B, Lk, D], v [B, Lk, Dv] (and an optional mask)", Outputs: "[B, Lq, Dv]",
			Args: map[string]string{"num_heads": "heads D is split into", "is_causal": "mask attention to later positions"}},
		"Attention": {Refiners: "fl.Attention", Inputs: "query [B, Lq, embedding_dim], key [B, Lk, key_embedding_dim], value [B, Lk, value_embedding_dim]", Outputs: "[B, Lq, embedding_dim]",
			Args: mergeDocs(attn, map[string]string{"embedding_dim": "width of the query and of the output", "key_embedding_dim": "width of the key (0: embedding_dim)", "value_embedding_dim": "width of the value (0: embedding_dim)"})},
		"SelfAttention": {Refiners: "fl.SelfAttention", Inputs: "x [B, L, embedding_dim]", Outputs: "same shape",
			Args: mergeDocs(attn, map[string]string{"embedding_dim": "width of the input and output"})},
		"SelfAttention2d": {Refiners: "fl.SelfAttention2d", Inputs: "x [B, channels, H, W]", Outputs: "same shape",
			Args: mergeDocs(attn, map[string]string{"channels": "channels (dim 1)"})},

		"MaxPool2d": {Refiners: "fl.MaxPool2d", Inputs: "x [B, C, H, W]", Outputs: "[B, C, H', W'] with H' = (H + 2·padding − kernel_size) / stride + 1",
			Args: map[string]string{"kernel_size": "side of the pooling window", "padding": "implicit −∞ padding on each side"}},
		"Interpolate": {Refiners: "fl.Interpolate", Inputs: "x [B, C, H, W], size (an int64 tensor of 2 values)", Outputs: "[B, C, size[0], size[1]]"},
		"Downsample": {Refiners: "fl.Downsample", Inputs: "x [B, channels, H, W]", Outputs: "[B, channels, H/scale_factor, W/scale_factor]",
			Writes: []string{"sampling/shapes (with register_shape: the input's H, W pushed on a stack)"},
			Args: map[string]string{"channels": "channels in and out", "scale_factor": "stride of the 3×3 convolution", "padding": "convolution padding",
				"register_shape": "record the input size for the matching Upsample"}},
		"Upsample": {Refiners: "fl.Upsample", Inputs: "x [B, channels, H, W]", Outputs: "[B, channels, H·factor, W·factor] (or the size a Downsample recorded)",
			Reads: []string{"sampling/shapes (with upsample_factor 0: pops the size a Downsample pushed)"},
			Args:  map[string]string{"channels": "channels in and out"}},
		"ReflectionPad2d": {Refiners: "fl.ReflectionPad2d", Inputs: "x [B, C, H, W]", Outputs: "[B, C, H + 2·padding, W + 2·padding]",
			Args: map[string]string{"padding": "rows and columns mirrored on each side"}},
		"Pad":            {Refiners: "torch.nn.functional.pad (in a Lambda)", Inputs: "x", Outputs: "x padded: each trailing dim grows by its (before, after) pair"},
		"PixelUnshuffle": {Refiners: "fl.PixelUnshuffle", Inputs: "x [B, C, H, W]", Outputs: "[B, C·f², H/f, W/f] with f = downscale_factor", Args: map[string]string{"downscale_factor": "f: H and W must be divisible by it"}},

		"Identity": {Refiners: "fl.Identity", Inputs: "any", Outputs: "its inputs"},
		"Return":   {Refiners: "fl.Return", Inputs: "any", Outputs: "its inputs, as the output of the whole call (the layers after it do not run)"},
		"GetArg":   {Refiners: "fl.GetArg", Inputs: "several tensors", Outputs: "input number index", Args: map[string]string{"index": "which input (from 0)"}},
		"Flatten": {Refiners: "fl.Flatten", Inputs: "x", Outputs: "x with dims start_dim..end_dim merged into one",
			Args: map[string]string{"start_dim": "first dim merged (negative: from the end)", "end_dim": "last dim merged (negative: from the end)"}},
		"Unflatten": {Refiners: "fl.Unflatten", Inputs: "x (and, without sizes, a second input holding them)", Outputs: "x with dim split into sizes",
			Args: map[string]string{"dim": "the dim split (negative: from the end)"}},
		"Reshape": {Refiners: "fl.Reshape", Inputs: "x [B, ...]", Outputs: "[B, shape...]", Args: map[string]string{"shape": "the new shape after the batch dim; one entry may be −1"}},
		"Transpose": {Refiners: "fl.Transpose", Inputs: "x", Outputs: "x with dims dim0 and dim1 swapped",
			Args: map[string]string{"dim0": "a dim (negative: from the end)", "dim1": "the other dim"}},
		"Permute":   {Refiners: "fl.Permute", Inputs: "x", Outputs: "x with dims reordered", Args: map[string]string{"dims": "the new order of all dims"}},
		"Squeeze":   {Refiners: "fl.Squeeze", Inputs: "x", Outputs: "x without dim (when its size is 1)", Args: map[string]string{"dim": "the dim removed (negative: from the end)"}},
		"Unsqueeze": {Refiners: "fl.Unsqueeze", Inputs: "x", Outputs: "x with a new dim of size 1 at dim", Args: map[string]string{"dim": "where the new dim goes (negative: from the end)"}},
		"Slicing": {Refiners: "fl.Slicing", Inputs: "x", Outputs: "x[start:end:step] along dim",
			Args: map[string]string{"dim": "the dim sliced", "start": "first index kept", "step": "keep every step-th index"}},
		"Chunk": {Refiners: "fl.Chunk", Inputs: "x", Outputs: "chunks tensors, x split into equal parts along dim",
			Args: map[string]string{"chunks": "number of parts", "dim": "the dim split"}},
		"Multiply": {Refiners: "fl.Multiply", Inputs: "x", Outputs: "x·scale + bias, same shape", Args: map[string]string{"scale": "factor", "bias": "added after scaling"}},
		"Parameter": {Refiners: "fl.Parameter", Inputs: "ignored but for its batch size: x [B, ...]", Outputs: "[B, dims...]: the learned tensor repeated over the batch",
			Args: map[string]string{"dims": "the tensor's shape"}},
		"SetContext": {Refiners: "fl.SetContext", Inputs: "x", Outputs: "x, unchanged", Writes: []string{"{context}/{key}: x"}, Args: ctx},
		"UseContext": {Refiners: "fl.UseContext", Inputs: "ignored", Outputs: "the value stored at {context}/{key}", Reads: []string{"{context}/{key}"}, Args: ctx},
		"Converter": {Refiners: "fl.Converter", Inputs: "any", Outputs: "the inputs on the device and in the dtype of the parent chain's first weights",
			Args: map[string]string{"set_device": "move to the weights' device", "set_dtype": "cast floating-point inputs to the weights' dtype"}},

		"Chain":       structural("fl.Chain", "the last child's outputs (children run in sequence)"),
		"Residual":    structural("fl.Residual", "the children's output (in sequence) + the input"),
		"Sum":         structural("fl.Sum", "the sum of the children's outputs, each run on the input"),
		"Parallel":    structural("fl.Parallel", "every child's outputs, each run on the input, as a tuple"),
		"Distribute":  {Refiners: "fl.Distribute", Inputs: "one tensor per child", Outputs: "child i run on input i, as a tuple"},
		"Passthrough": structural("fl.Passthrough", "its inputs (the children run in sequence for their effect on contexts)"),
		"Concatenate": {Refiners: "fl.Concatenate", Inputs: chainInputs, Outputs: "the children's outputs, each run on the input, joined along dim",
			Args: map[string]string{"dim": "the dim joined along"}},
		"Matmul": structural("fl.Matmul", "the matrix product of its two children's outputs"),

		"LinearLora": {Refiners: "fl.LinearLora", Inputs: "x [..., in_features]", Outputs: "[..., out_features]: up(down(x))·scale",
			Args: map[string]string{"in_features": "the target Linear's in_features", "out_features": "the target Linear's out_features", "rank": lora["rank"], "scale": lora["scale"]}},
		"Conv2dLora": {Refiners: "fl.Conv2dLora", Inputs: "x [B, in_channels, H, W]", Outputs: "[B, out_channels, H', W']: up(down(x))·scale",
			Args: map[string]string{"name": "the LoRA's name in its adapter", "in_channels": "the target Conv2d's in_channels", "out_channels": "the target Conv2d's out_channels", "rank": lora["rank"], "scale": lora["scale"]}},
		"LoraAdapter": {Refiners: "fl.LoraAdapter", Inputs: "the target layer's input", Outputs: "the target's output plus each branch's (the first child is the target)"},
		"DoRA": {Refiners: "none (PEFT's use_dora, LyCORIS' dora_scale)", Inputs: "the target layer's input", Outputs: "the target layer's output with its weight rescaled per channel",
			Args: mergeDocs(delta, map[string]string{"rank": "inner size of the low-rank delta"})},
		"WeightDelta": {Refiners: "none (LyCORIS diff)", Inputs: "the target layer's input", Outputs: "the target layer's output with the delta added to its weight", Args: delta},
		"LoHa":        {Refiners: "none (LyCORIS LoHa)", Inputs: "the target layer's input", Outputs: "the target layer's output with the delta added to its weight", Args: mergeDocs(delta, map[string]string{"rank": "rank of both factor pairs"})},
		"LoKr":        {Refiners: "none (LyCORIS LoKr)", Inputs: "the target layer's input", Outputs: "the target layer's output with the delta added to its weight", Args: delta},
	})
}

// mergeDocs merges two argument doc tables.
func mergeDocs(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}
