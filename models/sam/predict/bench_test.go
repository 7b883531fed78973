package predict

import (
	"context"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

// benchModel loads the tiny test model and an image for the benchmarks.
// Real-size numbers against Refiners: refiners-bench -mode sam.
func benchModel(b *testing.B, run func(s *tensor.Scope, m *Model, img *pipeline.RGB) error) {
	b.Helper()
	raw, err := pipeline.ReadImage("../../../conformance/testdata/sam/predict_wide.png")
	if err != nil {
		b.Fatal(err)
	}
	img := pipeline.ToRGB(raw)
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		m, err := Load(s, Config{Weights: tinyWeights})
		if err != nil {
			return err
		}
		defer m.Release()
		return run(s, m, img)
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkEmbed is the image embedding (pre-processing and encoder).
func BenchmarkEmbed(b *testing.B) {
	benchModel(b, func(s *tensor.Scope, m *Model, img *pipeline.RGB) error {
		b.ResetTimer()
		for range b.N {
			c := s.Child()
			_, err := m.Embed(c, img)
			c.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// BenchmarkPredict is one prompt on a cached embedding: what a second
// prompt on the same image costs.
func BenchmarkPredict(b *testing.B) {
	benchModel(b, func(s *tensor.Scope, m *Model, img *pipeline.RGB) error {
		e, err := m.Embed(s, img)
		if err != nil {
			return err
		}
		prompt := Prompt{Points: []Point{{X: 40, Y: 30, Foreground: true}}, Box: &Box{X0: 10, Y0: 10, X1: 120, Y1: 80}}
		b.ResetTimer()
		for range b.N {
			c := s.Child()
			_, err := m.Predict(c, e, prompt)
			c.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
}
