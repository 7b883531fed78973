package core

import (
	"fmt"

	"github.com/refiners-go/refiners/core/tensor"
)

// ScaledDotProductAttention takes query, key and value [B, L, E], splits E
// into Heads, attends, and merges the heads back to [B, L, E]. An optional
// fourth input is a mask (boolean, true = attend, or additive).
type ScaledDotProductAttention struct {
	Heads  int64
	Causal bool
}

func NewScaledDotProductAttention(heads int64, causal bool) *ScaledDotProductAttention {
	return &ScaledDotProductAttention{Heads: heads, Causal: causal}
}

func (l *ScaledDotProductAttention) Describe() string {
	var kv []any
	if l.Heads != 1 {
		kv = append(kv, "num_heads", l.Heads)
	}
	if l.Causal {
		kv = append(kv, "is_causal", true)
	}
	return describe("ScaledDotProductAttention", kv...)
}

func (l *ScaledDotProductAttention) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if len(in) != 3 && len(in) != 4 {
		return nil, fmt.Errorf("ScaledDotProductAttention takes query, key, value [, mask], got %d inputs", len(in))
	}
	for i, x := range in[:3] {
		if x.Dim() != 3 {
			return nil, fmt.Errorf("ScaledDotProductAttention: input %d has shape %v, want [batch, sequence, embedding]", i, x.Shape())
		}
		if x.Shape()[2]%l.Heads != 0 {
			return nil, fmt.Errorf("ScaledDotProductAttention: embedding %d not divisible by %d heads", x.Shape()[2], l.Heads)
		}
	}
	var mask *tensor.Tensor
	if len(in) == 4 {
		mask = in[3]
	}
	q, k, v := l.split(f, in[0]), l.split(f, in[1]), l.split(f, in[2])
	y := f.Attention(q, k, v, mask, l.Causal, 0)
	qs := in[0].Shape()
	return Tensors{f.Reshape(f.Transpose(y, 1, 2), qs[0], qs[1], -1)}, f.Err()
}

// split reshapes [B, L, E] to [B, heads, L, E/heads].
func (l *ScaledDotProductAttention) split(f *Frame, x *tensor.Tensor) *tensor.Tensor {
	s := x.Shape()
	return f.Transpose(f.Reshape(x, s[0], s[1], l.Heads, s[2]/l.Heads), 1, 2)
}

// AttentionOptions are Attention's optional settings; zero dims default to
// the embedding dim.
type AttentionOptions struct {
	Heads            int64
	KeyDim, ValueDim int64
	InnerDim         int64
	NoBias, Causal   bool
}

// NewAttention declares multi-head attention over (query, key, value)
// inputs: projections, attention, output projection, as a named chain.
func NewAttention(dim int64, o AttentionOptions) (*Chain, error) {
	if o.Heads == 0 {
		o.Heads = 1
	}
	if dim%o.Heads != 0 {
		return nil, fmt.Errorf("Attention: embedding_dim %d not divisible by num_heads %d", dim, o.Heads)
	}
	or := func(v, d int64) int64 {
		if v == 0 {
			return d
		}
		return v
	}
	inner := or(o.InnerDim, dim)
	c := NewNamed("Attention", Sequence,
		NewDistribute(
			NewLinear(dim, inner, !o.NoBias),
			NewLinear(or(o.KeyDim, dim), inner, !o.NoBias),
			NewLinear(or(o.ValueDim, dim), inner, !o.NoBias),
		),
		NewScaledDotProductAttention(o.Heads, o.Causal),
		NewLinear(inner, dim, true),
	)
	c.Args = attentionArgs([]any{"embedding_dim", dim, "key_embedding_dim", or(o.KeyDim, dim),
		"value_embedding_dim", or(o.ValueDim, dim), "inner_dim", inner}, o)
	return c, nil
}

// attentionArgs prints what Refiners shows: arguments that differ from
// their defaults, with the resolved key, value and inner dims.
func attentionArgs(dims []any, o AttentionOptions) string {
	kv := append([]any{}, dims[:2]...)
	if o.Heads != 1 {
		kv = append(kv, "num_heads", o.Heads)
	}
	kv = append(kv, dims[2:]...)
	if o.NoBias {
		kv = append(kv, "use_bias", false)
	}
	if o.Causal {
		kv = append(kv, "is_causal", true)
	}
	d := describe("", kv...)
	return d[1 : len(d)-1]
}

// NewSelfAttention is Attention with the one input fanned out to query, key
// and value.
func NewSelfAttention(dim int64, o AttentionOptions) (*Chain, error) {
	c, err := NewAttention(dim, AttentionOptions{Heads: o.Heads, InnerDim: o.InnerDim, NoBias: o.NoBias, Causal: o.Causal})
	if err != nil {
		return nil, err
	}
	c.typeName = "SelfAttention"
	c.Args = attentionArgs([]any{"embedding_dim", dim, "inner_dim", max(o.InnerDim, dim)}, o)
	c.Insert(0, NewParallel(NewIdentity(), NewIdentity(), NewIdentity()))
	return c, nil
}

// NewSelfAttention2d is SelfAttention over the positions of a [B, C, H, W]
// feature map: flattened to a sequence, attended, and folded back.
func NewSelfAttention2d(channels int64, o AttentionOptions) (*Chain, error) {
	c, err := NewSelfAttention(channels, o)
	if err != nil {
		return nil, err
	}
	c.typeName = "SelfAttention2d"
	c.Args = attentionArgs([]any{"channels", channels}, AttentionOptions{Heads: max(o.Heads, 1), NoBias: o.NoBias, Causal: o.Causal})
	c.Provider = true // the stored height and width stay inside this layer
	c.Insert(0, NewFunc("tensor_2d_to_sequence", func(f *Frame, in Tensors) (Tensors, error) {
		x, err := one("tensor_2d_to_sequence", in)
		if err != nil {
			return nil, err
		}
		s := x.Shape()
		if len(s) != 4 {
			return nil, fmt.Errorf("SelfAttention2d: input shape %v, want [batch, channels, height, width]", s)
		}
		f.SetContext("reshape", "height", s[2])
		f.SetContext("reshape", "width", s[3])
		return Tensors{f.Transpose(f.Reshape(x, s[0], s[1], s[2]*s[3]), 1, 2)}, f.Err()
	}))
	c.Append(NewFunc("sequence_to_tensor_2d", func(f *Frame, in Tensors) (Tensors, error) {
		x, err := one("sequence_to_tensor_2d", in)
		if err != nil {
			return nil, err
		}
		h, _ := f.LookupContext("reshape", "height")
		w, _ := f.LookupContext("reshape", "width")
		hh, ok1 := h.(int64)
		ww, ok2 := w.(int64)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("SelfAttention2d: reshape context not set")
		}
		s := x.Shape()
		return Tensors{f.Reshape(f.Transpose(x, 1, 2), s[0], s[2], hh, ww)}, f.Err()
	}))
	return c, nil
}
