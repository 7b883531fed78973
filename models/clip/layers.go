package clip

import (
	"fmt"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
)

// Layers of Refiners' CLIP text encoder (refiners.foundationals.clip) that
// cannot be written as a spec block of core layers: the token table (an
// Embedding under its own type name) and the positional encoder (its
// position ids come from a function, not a layer). Refiners' Converter,
// which the encoder places right after its tokenizer, is generic and stays
// in core (converter.go).

func init() {
	core.RegisterLeaf("TokenEncoder", "token embedding table (an Embedding named TokenEncoder)", []core.ArgSpec{
		core.AtLeast(1, core.RequiredArg("vocabulary_size", core.IntArg, "")), core.AtLeast(1, core.RequiredArg("embedding_dim", core.IntArg, "")),
	}, func(a *core.Args) (core.Module, error) {
		return NewTokenEncoder(a.Int("vocabulary_size"), a.Int("embedding_dim")), nil
	})
	core.RegisterLeaf("PositionalEncoder", "learned position embeddings for the positions of its [batch, sequence] input", []core.ArgSpec{
		core.AtLeast(1, core.RequiredArg("max_sequence_length", core.IntArg, "")), core.AtLeast(1, core.RequiredArg("embedding_dim", core.IntArg, "")),
	}, func(a *core.Args) (core.Module, error) {
		return NewPositionalEncoder(a.Int("max_sequence_length"), a.Int("embedding_dim")), nil
	})
}

// TokenEncoder is an Embedding of int64 token ids [batch, sequence] into
// [batch, sequence, embedding_dim]; it differs only in its name, which
// makes its state-dict key (Sum.TokenEncoder.weight).
type TokenEncoder struct {
	core.Embedding
}

// NewTokenEncoder declares a table of vocab rows of width dim.
func NewTokenEncoder(vocab, dim int64) *TokenEncoder {
	return &TokenEncoder{Embedding: core.Embedding{Count: vocab, Dim: dim}}
}

func (l *TokenEncoder) TypeName() string { return "TokenEncoder" }

func (l *TokenEncoder) Describe() string {
	return core.DescribeWeighted(core.DescribeArgs("TokenEncoder", "vocabulary_size", l.Count, "embedding_dim", l.Dim), l.Params()[0])
}

// NewPositionalEncoder is Refiners' PositionalEncoder: a chain that turns
// its input [batch, sequence] into the position ids [1, sequence]
// (get_position_ids) and looks them up in a [maxLen, dim] Embedding. The
// result [1, sequence, dim] broadcasts over the batch when summed with the
// token embeddings.
func NewPositionalEncoder(maxLen, dim int64) *core.Chain {
	table := core.NewEmbedding(maxLen, dim)
	c := core.NewNamed("PositionalEncoder", core.Sequence, positionIDs(maxLen, table), table)
	c.Args = fmt.Sprintf("max_sequence_length=%d, embedding_dim=%d", maxLen, dim)
	return c
}

// positionIDs returns 0, 1, ..., sequence-1 as int64 [1, sequence], on the
// device of the position table, as Refiners takes them from a buffer on the
// encoder's device.
func positionIDs(maxLen int64, table *core.Embedding) *core.Func {
	return core.NewFunc("get_position_ids", func(f *core.Frame, in core.Tensors) (core.Tensors, error) {
		x, err := core.OneInput("get_position_ids", in)
		if err != nil {
			return nil, err
		}
		s := x.Shape()
		if len(s) < 2 {
			return nil, fmt.Errorf("PositionalEncoder: input shape %v, want [batch, sequence]", s)
		}
		if s[1] > maxLen {
			return nil, fmt.Errorf("PositionalEncoder: sequence of %d tokens is longer than max_sequence_length %d", s[1], maxLen)
		}
		ids := f.Reshape(f.Arange(s[1]), 1, s[1])
		if table.Weight.Valid() && table.Weight.Device() != tensor.CPU {
			ids = f.To(ids, table.Weight.Device())
		}
		return core.Tensors{ids}, f.Err()
	})
}
