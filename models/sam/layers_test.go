package sam

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
)

func TestBuildErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		desc map[string]any
		err  string // "" when it builds
	}{
		{"attention", map[string]any{"type": "RelativePositionAttention", "embedding_dim": 8, "num_heads": 2, "spatial_size": []any{4, 4}}, ""},
		{"heads do not divide", map[string]any{"type": "RelativePositionAttention", "embedding_dim": 8, "num_heads": 3, "spatial_size": []any{4, 4}}, "not divisible"},
		{"not square", map[string]any{"type": "RelativePositionAttention", "embedding_dim": 8, "num_heads": 2, "spatial_size": []any{4, 5}}, "must be square"},
		{"one size", map[string]any{"type": "RelativePositionAttention", "embedding_dim": 8, "num_heads": 2, "spatial_size": []any{4}}, "2 values"},
		{"window zero", map[string]any{"type": "WindowPartition", "window_size": 0}, "at least 1"},
		{"merge", map[string]any{"type": "WindowMerge", "window_size": 14}, ""},
		{"point types", map[string]any{"type": "PointTypeEmbedding", "embedding_dim": 4}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := core.BuildLayer(tc.desc)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}

// TestForwardErrors: bad inputs fail with a message naming the layer.
func TestForwardErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		layer func(s *tensor.Scope) core.Module
		input func(s *tensor.Scope) *tensor.Tensor
		err   string
	}{
		{"merge without partition", func(*tensor.Scope) core.Module { return &WindowMerge{WindowSize: 2} },
			func(s *tensor.Scope) *tensor.Tensor { return s.Zeros(tensor.Float32, 4, 2, 2, 3) }, "no WindowPartition ran"},
		{"partition of a 3-d map", func(*tensor.Scope) core.Module { return &WindowPartition{WindowSize: 2} },
			func(s *tensor.Scope) *tensor.Tensor { return s.Zeros(tensor.Float32, 4, 2, 3) }, "want [B, H, W, C]"},
		{"merge with another window", func(*tensor.Scope) core.Module {
			return core.NewChain(&WindowPartition{WindowSize: 2}, &WindowMerge{WindowSize: 3})
		}, func(s *tensor.Scope) *tensor.Tensor { return s.Zeros(tensor.Float32, 1, 4, 4, 3) }, "the partition used 2"},
		{"float point types", func(s *tensor.Scope) core.Module {
			return &PointTypeEmbedding{Dim: 3, Weight: s.Escape(s.Zeros(tensor.Float32, 5, 3))}
		}, func(s *tensor.Scope) *tensor.Tensor { return s.Zeros(tensor.Float32, 1, 2) }, "must be integers"},
		{"attention on the wrong map", func(s *tensor.Scope) core.Module {
			l, _ := NewRelativePositionAttention(4, 2, [2]int64{3, 3})
			l.Horizontal, l.Vertical = s.Escape(s.Zeros(tensor.Float32, 5, 2)), s.Escape(s.Zeros(tensor.Float32, 5, 2))
			return l
		}, func(s *tensor.Scope) *tensor.Tensor { return s.Zeros(tensor.Float32, 1, 4, 4, 12) }, "tables are for 3x3"},
		{"attention not loaded", func(*tensor.Scope) core.Module {
			l, _ := NewRelativePositionAttention(4, 2, [2]int64{3, 3})
			return l
		}, func(s *tensor.Scope) *tensor.Tensor { return s.Zeros(tensor.Float32, 1, 3, 3, 12) }, "not loaded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
				_, err := core.Forward(s, tc.layer(s), tc.input(s))
				return err
			})
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}

// TestPointTypeEmbedding: types 1..5 pick their rows, anything else zeros,
// the output is float32 whatever the weights' dtype.
func TestPointTypeEmbedding(t *testing.T) {
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		w := make([]float32, 10)
		for i := range w {
			w[i] = float32(i + 1)
		}
		l := &PointTypeEmbedding{Dim: 2, Weight: s.Escape(s.ToDType(s.FromFloat32(w, 5, 2), tensor.BFloat16))}
		out, err := core.Forward(s, l, s.FromInt64([]int64{0, 1, 5, 6, -1, 3}, 1, 6))
		if err != nil {
			return err
		}
		if out[0].DType() != tensor.Float32 {
			t.Errorf("dtype %s, want float32", out[0].DType())
		}
		got, want := s.Float32s(out[0]), []float32{0, 0, 1, 2, 9, 10, 0, 0, 0, 0, 5, 6}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("got %v, want %v", got, want)
			}
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPointPadding: without a box corner the type mask gains a
// not-a-point (and the points a zero row); with one nothing changes; bad
// masks fail.
func TestPointPadding(t *testing.T) {
	for _, tc := range []struct {
		name  string
		types []int64
		want  []int64 // the type mask after the layer, nil for an error
		err   string
	}{
		{"points", []int64{2, 1}, []int64{2, 1, NotAPoint}, ""},
		{"box", []int64{2, 3, 4}, []int64{2, 3, 4}, ""},
		{"half a box", []int64{4}, []int64{4}, ""},
		{"no mask", nil, nil, "set the point types first"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
				n := int64(len(tc.types))
				call := core.Call{Contexts: core.Contexts{}}
				if tc.types != nil {
					call.Contexts[pointContext] = map[string]any{typeMaskKey: s.FromInt64(tc.types, 1, n)}
				}
				m := core.NewChain(NewPointPadding(), core.NewParallel(core.NewIdentity(), core.NewUseContext(pointContext, typeMaskKey)))
				out, err := call.Forward(s, m, s.Ones(tensor.Float32, 1, n, 3))
				if err != nil {
					return err
				}
				if got := s.Int64s(out[1]); !slices.Equal(got, tc.want) {
					t.Errorf("type mask %v, want %v", got, tc.want)
				}
				points := s.Float32s(out[0])
				if len(points) != 3*len(tc.want) {
					t.Fatalf("%d point values, want %d", len(points), 3*len(tc.want))
				}
				for i, v := range points {
					want := float32(1)
					if i >= int(3*n) {
						want = 0
					}
					if v != want {
						t.Fatalf("points %v", points)
					}
				}
				return s.Err()
			})
			if tc.err == "" && err != nil {
				t.Fatal(err)
			}
			if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}

// TestDecoderLayerErrors: the decoder's layers say what is missing.
func TestDecoderLayerErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		layer core.Module
		err   string
	}{
		{"aggregator without context", &EmbeddingsAggregator{OutputMasks: 3}, `context "mask_decoder" has no key "image_embedding"`},
		{"tokens not loaded", &IOUMaskEncoder{Dim: 4, MaskTokens: 4}, "not loaded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
				_, err := core.Forward(s, tc.layer, s.Zeros(tensor.Float32, 1, 5, 4))
				return err
			})
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
	if _, err := core.BuildLayer(map[string]any{"type": "Hypernetworks", "embedding_dim": 16, "num_layers": 0}); err == nil || !strings.Contains(err.Error(), "at least 1") {
		t.Errorf("Hypernetworks with no layers: error %v", err)
	}
}

// TestNoMaskEmbedding: the MaskEncoder's own parameter is in its state
// dict and expands to the dense no-mask embedding.
func TestNoMaskEmbedding(t *testing.T) {
	enc, err := NewMaskEncoder(3, 16)
	if err != nil {
		t.Fatal(err)
	}
	if keys := core.StateDict(enc); len(keys) != 11 || keys[0].Key != "no_mask_embedding" {
		t.Fatalf("state dict starts with %q (%d keys), want no_mask_embedding (11 keys)", keys[0].Key, len(keys))
	}
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if _, err := NoMaskEmbedding(s, enc, 1, 2, 2); err == nil || !strings.Contains(err.Error(), "not loaded") {
			t.Errorf("before loading: error %v", err)
		}
		*enc.Own[0].Value = s.Escape(s.FromFloat32([]float32{1, 2, 3}, 1, 3))
		defer core.ReleaseParams(enc)
		out, err := NoMaskEmbedding(s, enc, 2, 1, 2)
		if err != nil {
			return err
		}
		if got, want := s.Float32s(s.Contiguous(out)), []float32{1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3}; !slices.Equal(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
		if _, err := NoMaskEmbedding(s, core.NewChain(), 1, 1, 1); err == nil {
			t.Error("a plain chain gave a no-mask embedding")
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestDensePositionalEmbeddingErrors(t *testing.T) {
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if _, err := DensePositionalEmbedding(s, core.NewChain(core.NewIdentity()), 2, 2); err == nil || !strings.Contains(err.Error(), "no CoordinateEncoder") {
			t.Errorf("without a CoordinateEncoder: error %v", err)
		}
		if _, err := DensePositionalEmbedding(s, core.NewChain(), 0, 2); err == nil || !strings.Contains(err.Error(), "grid 0x2") {
			t.Errorf("empty grid: error %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
