package pipeline

import (
	"context"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
)

// BenchmarkPreview: a step's preview for a 512×512 image (latents
// [1, 4, 64, 64]): the projection and its PNG, the cost a step event with
// a preview adds (compare with refinersd_image_step_seconds).
func BenchmarkPreview(b *testing.B) {
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		vals := make([]float32, 4*64*64)
		for i := range vals {
			vals[i] = float32(i%97)/48 - 1
		}
		latents := s.FromFloat32(vals, 1, 4, 64, 64)
		b.ResetTimer()
		for range b.N {
			img, err := Preview(s, latents, 0)
			if err != nil {
				return err
			}
			if _, err := img.EncodePNG(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}
