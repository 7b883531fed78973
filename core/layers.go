package core

import "fmt"

// Registration of the core layers under their Refiners names and argument
// names, so a description written for Refiners reads the same here.

func req(name string, k ArgKind, doc string) ArgSpec {
	return ArgSpec{Name: name, Kind: k, Required: true, Doc: doc}
}

func opt(name string, k ArgKind, def any, doc string) ArgSpec {
	return ArgSpec{Name: name, Kind: k, Default: def, Doc: doc}
}

func leaf(name, doc string, args []ArgSpec, build func(a *Args) (Module, error)) {
	Register(&LayerType{Name: name, Doc: doc, Args: args, Build: func(a *Args, _ []Module) (Module, error) { return build(a) }})
}

func simple(name, doc string, m func() Module) {
	leaf(name, doc, nil, func(*Args) (Module, error) { return m(), nil })
}

func chainKind(name, doc string, args []ArgSpec, build func(a *Args, children []Module) (Module, error)) {
	Register(&LayerType{Name: name, Doc: doc, Args: args, Children: true, Build: build})
}

var convArgs = []ArgSpec{
	atLeast(1, req("in_channels", IntArg, "input channels")),
	atLeast(1, req("out_channels", IntArg, "output channels")),
	atLeast(1, req("kernel_size", IntArg, "square kernel size")),
	atLeast(1, opt("stride", IntArg, int64(1), "")),
	atLeast(0, opt("padding", IntArg, int64(0), "")),
	atLeast(1, opt("dilation", IntArg, int64(1), "")),
	atLeast(1, opt("groups", IntArg, int64(1), "")),
	opt("use_bias", BoolArg, true, ""),
}

func convOptions(a *Args) ConvOptions {
	return ConvOptions{Stride: a.Int("stride"), Padding: a.Int("padding"), Dilation: a.Int("dilation"), Groups: a.Int("groups"), NoBias: !a.Bool("use_bias")}
}

func init() {
	leaf("Linear", "y = x Wᵀ + b", []ArgSpec{
		atLeast(1, req("in_features", IntArg, "")), atLeast(1, req("out_features", IntArg, "")), opt("bias", BoolArg, true, ""),
	}, func(a *Args) (Module, error) {
		return NewLinear(a.Int("in_features"), a.Int("out_features"), a.Bool("bias")), nil
	})
	leaf("MultiLinear", "num_layers Linear layers with ReLUs between them", []ArgSpec{
		atLeast(1, req("input_dim", IntArg, "input features of the first layer")), atLeast(1, req("output_dim", IntArg, "output features of the last layer")),
		atLeast(1, req("inner_dim", IntArg, "features between layers (and the last layer's input)")), atLeast(1, req("num_layers", IntArg, "")),
	}, func(a *Args) (Module, error) {
		return NewMultiLinear(a.Int("input_dim"), a.Int("output_dim"), a.Int("inner_dim"), a.Int("num_layers"))
	})
	leaf("Conv2d", "2-d convolution", convArgs, func(a *Args) (Module, error) {
		return NewConv2d(a.Int("in_channels"), a.Int("out_channels"), a.Int("kernel_size"), convOptions(a)), nil
	})
	leaf("ConvTranspose2d", "transposed 2-d convolution", append(append([]ArgSpec{}, convArgs...), atLeast(0, opt("output_padding", IntArg, int64(0), ""))),
		func(a *Args) (Module, error) {
			o := convOptions(a)
			o.OutputPadding = a.Int("output_padding")
			return NewConvTranspose2d(a.Int("in_channels"), a.Int("out_channels"), a.Int("kernel_size"), o), nil
		})
	leaf("LayerNorm", "normalise over the last dim", []ArgSpec{
		atLeast(1, req("normalized_shape", IntArg, "")), opt("eps", FloatArg, 1e-5, ""), opt("elementwise_affine", BoolArg, true, ""),
	}, func(a *Args) (Module, error) {
		l := NewLayerNorm(a.Int("normalized_shape"))
		l.Eps, l.Affine = a.Float("eps"), a.Bool("elementwise_affine")
		return l, nil
	})
	leaf("GroupNorm", "normalise groups of channels", []ArgSpec{
		atLeast(1, req("channels", IntArg, "")), atLeast(1, req("num_groups", IntArg, "")), opt("eps", FloatArg, 1e-5, ""), opt("affine", BoolArg, true, ""),
	}, func(a *Args) (Module, error) {
		l := NewGroupNorm(a.Int("channels"), a.Int("num_groups"))
		l.Eps, l.Affine = a.Float("eps"), a.Bool("affine")
		if l.Channels%l.Groups != 0 {
			return nil, fmt.Errorf("GroupNorm: %d channels not divisible by %d groups", l.Channels, l.Groups)
		}
		return l, nil
	})
	leaf("LayerNorm2d", "normalise channels at each position", []ArgSpec{
		atLeast(1, req("channels", IntArg, "")), opt("eps", FloatArg, 1e-6, ""),
	}, func(a *Args) (Module, error) {
		l := NewLayerNorm2d(a.Int("channels"))
		l.Eps = a.Float("eps")
		return l, nil
	})
	leaf("InstanceNorm2d", "normalise each channel of each sample", []ArgSpec{
		atLeast(1, req("num_features", IntArg, "")), opt("eps", FloatArg, 1e-5, ""), opt("affine", BoolArg, false, ""),
	}, func(a *Args) (Module, error) {
		l := NewInstanceNorm2d(a.Int("num_features"))
		l.Eps, l.Affine = a.Float("eps"), a.Bool("affine")
		return l, nil
	})
	leaf("Embedding", "lookup table", []ArgSpec{
		atLeast(1, req("num_embeddings", IntArg, "")), atLeast(1, req("embedding_dim", IntArg, "")),
	}, func(a *Args) (Module, error) {
		return NewEmbedding(a.Int("num_embeddings"), a.Int("embedding_dim")), nil
	})

	simple("ReLU", "max(x, 0)", func() Module { return NewReLU() })
	simple("SiLU", "x·sigmoid(x)", func() Module { return NewSiLU() })
	simple("Sigmoid", "1/(1+e^-x)", func() Module { return NewSigmoid() })
	simple("Tanh", "tanh(x)", func() Module { return NewTanh() })
	simple("ApproximateGeLU", "x·sigmoid(1.702x)", func() Module { return NewApproximateGeLU() })
	leaf("GeLU", "Gaussian error linear unit", []ArgSpec{
		opt("approximation", StringArg, GeLUExact, "none, tanh or sigmoid"),
	}, func(a *Args) (Module, error) { return NewGeLU(a.String("approximation")) })
	leaf("GLU", "gated linear unit: x·act(gate)", []ArgSpec{req("activation", ModuleArg, "the gate's activation")},
		func(a *Args) (Module, error) { return NewGLU(a.Module("activation")), nil })

	leaf("ScaledDotProductAttention", "multi-head attention core over (q, k, v[, mask])", []ArgSpec{
		atLeast(1, opt("num_heads", IntArg, int64(1), "")), opt("is_causal", BoolArg, false, ""),
	}, func(a *Args) (Module, error) {
		return NewScaledDotProductAttention(a.Int("num_heads"), a.Bool("is_causal")), nil
	})
	attnArgs := []ArgSpec{
		atLeast(1, opt("num_heads", IntArg, int64(1), "")), atLeast(0, opt("inner_dim", IntArg, int64(0), "0: the embedding dim")),
		opt("use_bias", BoolArg, true, ""), opt("is_causal", BoolArg, false, ""),
	}
	attnOptions := func(a *Args) AttentionOptions {
		return AttentionOptions{Heads: a.Int("num_heads"), InnerDim: a.Int("inner_dim"), NoBias: !a.Bool("use_bias"), Causal: a.Bool("is_causal")}
	}
	leaf("Attention", "multi-head attention over (query, key, value)", append([]ArgSpec{
		atLeast(1, req("embedding_dim", IntArg, "")), atLeast(0, opt("key_embedding_dim", IntArg, int64(0), "")), atLeast(0, opt("value_embedding_dim", IntArg, int64(0), "")),
	}, attnArgs...), func(a *Args) (Module, error) {
		o := attnOptions(a)
		o.KeyDim, o.ValueDim = a.Int("key_embedding_dim"), a.Int("value_embedding_dim")
		return NewAttention(a.Int("embedding_dim"), o)
	})
	leaf("SelfAttention", "multi-head self-attention", append([]ArgSpec{atLeast(1, req("embedding_dim", IntArg, ""))}, attnArgs...),
		func(a *Args) (Module, error) { return NewSelfAttention(a.Int("embedding_dim"), attnOptions(a)) })
	leaf("SelfAttention2d", "self-attention over a feature map", append([]ArgSpec{atLeast(1, req("channels", IntArg, ""))}, attnArgs...),
		func(a *Args) (Module, error) { return NewSelfAttention2d(a.Int("channels"), attnOptions(a)) })

	leaf("MaxPool2d", "2-d max pooling", []ArgSpec{
		atLeast(1, req("kernel_size", IntArg, "")), atLeast(0, opt("stride", IntArg, int64(0), "0: the kernel size")), atLeast(0, opt("padding", IntArg, int64(0), "")),
	}, func(a *Args) (Module, error) {
		return NewMaxPool2d(a.Int("kernel_size"), a.Int("stride"), a.Int("padding")), nil
	})
	leaf("Interpolate", "resize (x, size) to size", []ArgSpec{opt("mode", StringArg, "nearest", "nearest or bilinear")},
		func(a *Args) (Module, error) { return NewInterpolate(a.String("mode")), nil })
	leaf("Downsample", "strided 3×3 convolution", []ArgSpec{
		atLeast(1, req("channels", IntArg, "")), atLeast(1, req("scale_factor", IntArg, "")), atLeast(0, opt("padding", IntArg, int64(0), "")), opt("register_shape", BoolArg, true, ""),
	}, func(a *Args) (Module, error) {
		return NewDownsample(a.Int("channels"), a.Int("scale_factor"), a.Int("padding"), a.Bool("register_shape")), nil
	})
	leaf("Upsample", "nearest upsampling then 3×3 convolution", []ArgSpec{
		atLeast(1, req("channels", IntArg, "")), atLeast(0, opt("upsample_factor", IntArg, int64(0), "0: restore the size a Downsample recorded")),
	}, func(a *Args) (Module, error) { return NewUpsample(a.Int("channels"), a.Int("upsample_factor")), nil })
	leaf("ReflectionPad2d", "reflection padding of H and W", []ArgSpec{atLeast(0, req("padding", IntArg, ""))},
		func(a *Args) (Module, error) { return NewReflectionPad2d(a.Int("padding")), nil })
	leaf("Pad", "padding of the trailing dims", []ArgSpec{
		req("pad", IntsArg, "(before, after) pairs from the last dim"), opt("mode", StringArg, "constant", "constant, reflect, replicate or circular"),
		opt("value", FloatArg, 0.0, "fill value for constant"),
	}, func(a *Args) (Module, error) {
		p := NewPad(a.String("mode"), a.Ints("pad")...)
		p.Value = a.Float("value")
		return p, nil
	})
	leaf("PixelUnshuffle", "space to channels", []ArgSpec{atLeast(1, req("downscale_factor", IntArg, ""))},
		func(a *Args) (Module, error) { return NewPixelUnshuffle(a.Int("downscale_factor")), nil })

	simple("Identity", "returns its inputs", func() Module { return NewIdentity() })
	simple("Return", "ends the forward pass with its input", func() Module { return NewReturn() })
	simple("Sin", "sin(x)", func() Module { return NewSin() })
	simple("Cos", "cos(x)", func() Module { return NewCos() })
	leaf("GetArg", "selects one input", []ArgSpec{atLeast(0, req("index", IntArg, ""))},
		func(a *Args) (Module, error) { return NewGetArg(int(a.Int("index"))), nil })
	leaf("Flatten", "merges dims", []ArgSpec{opt("start_dim", IntArg, int64(0), ""), opt("end_dim", IntArg, int64(-1), "")},
		func(a *Args) (Module, error) { return NewFlatten(a.Int("start_dim"), a.Int("end_dim")), nil })
	leaf("Unflatten", "splits a dim", []ArgSpec{req("dim", IntArg, ""), opt("sizes", IntsArg, nil, "default: the second input")},
		func(a *Args) (Module, error) { return NewUnflatten(a.Int("dim"), a.Ints("sizes")...), nil })
	leaf("Reshape", "reshapes all but the batch dim", []ArgSpec{req("shape", IntsArg, "")},
		func(a *Args) (Module, error) { return NewReshape(a.Ints("shape")...), nil })
	leaf("Transpose", "swaps two dims", []ArgSpec{req("dim0", IntArg, ""), req("dim1", IntArg, "")},
		func(a *Args) (Module, error) { return NewTranspose(a.Int("dim0"), a.Int("dim1")), nil })
	leaf("Permute", "reorders dims", []ArgSpec{req("dims", IntsArg, "")},
		func(a *Args) (Module, error) { return NewPermute(a.Ints("dims")...), nil })
	leaf("Squeeze", "removes a dim of size 1", []ArgSpec{req("dim", IntArg, "")},
		func(a *Args) (Module, error) { return NewSqueeze(a.Int("dim")), nil })
	leaf("Unsqueeze", "inserts a dim of size 1", []ArgSpec{req("dim", IntArg, "")},
		func(a *Args) (Module, error) { return NewUnsqueeze(a.Int("dim")), nil })
	leaf("Slicing", "start:end:step along a dim", []ArgSpec{
		opt("dim", IntArg, int64(0), ""), opt("start", IntArg, int64(0), ""), opt("end", IntArg, SliceToEnd, "default: to the end"), opt("step", IntArg, int64(1), ""),
	}, func(a *Args) (Module, error) {
		return NewSlicing(a.Int("dim"), a.Int("start"), a.Int("end"), a.Int("step")), nil
	})
	leaf("Chunk", "splits into equal parts", []ArgSpec{atLeast(1, req("chunks", IntArg, "")), opt("dim", IntArg, int64(0), "")},
		func(a *Args) (Module, error) { return NewChunk(a.Int("chunks"), a.Int("dim")), nil })
	leaf("Multiply", "x·scale + bias", []ArgSpec{opt("scale", FloatArg, 1.0, ""), opt("bias", FloatArg, 0.0, "")},
		func(a *Args) (Module, error) { return NewMultiply(a.Float("scale"), a.Float("bias")), nil })
	leaf("Parameter", "a learned tensor expanded over the batch", []ArgSpec{atLeast(1, req("dims", IntsArg, ""))},
		func(a *Args) (Module, error) { return NewParameter(a.Ints("dims")...), nil })
	ctxArgs := []ArgSpec{req("context", StringArg, ""), req("key", StringArg, "")}
	leaf("SetContext", "stores its input in a context", ctxArgs,
		func(a *Args) (Module, error) { return NewSetContext(a.String("context"), a.String("key")), nil })
	leaf("UseContext", "outputs a context value", ctxArgs,
		func(a *Args) (Module, error) { return NewUseContext(a.String("context"), a.String("key")), nil })

	kindDocs := map[Kind]string{
		Sequence:    "children in sequence, each fed the previous one's outputs",
		Residual:    "children in sequence, plus a skip connection: the input is added to their output",
		Sum:         "children side by side on the same inputs, their outputs added",
		Parallel:    "children side by side on the same inputs, their outputs gathered",
		Distribute:  "child i on input i",
		Passthrough: "children in sequence for their effect on contexts; outputs the inputs unchanged",
	}
	for _, k := range []Kind{Sequence, Residual, Sum, Parallel, Distribute, Passthrough} {
		k := k
		chainKind(k.String(), kindDocs[k], nil, func(a *Args, children []Module) (Module, error) {
			return newKind(k, children), nil
		})
	}
	chainKind("Concatenate", "parallel outputs joined along dim", []ArgSpec{opt("dim", IntArg, int64(0), "")},
		func(a *Args, children []Module) (Module, error) {
			return NewConcatenate(a.Int("dim"), children...), nil
		})
	chainKind("Matmul", "matmul of two children's outputs", nil, func(a *Args, children []Module) (Module, error) {
		if len(children) != 2 {
			return nil, fmt.Errorf("Matmul: needs 2 children, has %d", len(children))
		}
		return NewMatmul(children[0], children[1]), nil
	})
}
