package pipeline

import (
	"fmt"

	"github.com/refiners-go/refiners/core/tensor"
)

// latentRGB are the widely used linear factors that map SD 1.5's four
// latent channels to approximate RGB (rows: latent channels, columns: R,
// G, B), a least-squares fit of the decoder's colours. A preview with them
// costs a few multiply-adds per latent pixel instead of a decoder pass.
var latentRGB = [4][3]float32{
	{0.3512, 0.2297, 0.3227},
	{0.3250, 0.4974, 0.2350},
	{-0.2829, 0.1762, 0.2721},
	{-0.2120, -0.2616, -0.7177},
}

// Preview is a cheap picture of image i of a batch of latents [B, 4, h, w]
// (as Progress.Latents gives them): an h×w RGB image (an eighth of the
// output's size) from the latent-to-RGB projection, no VAE pass. The
// values, about [−1, 1], are mapped to bytes as the decoder's output is.
func Preview(s *tensor.Scope, latents *tensor.Tensor, i int) (*RGB, error) {
	shape := latents.Shape()
	if len(shape) != 4 || shape[1] != 4 || int64(i) >= shape[0] || i < 0 {
		return nil, fmt.Errorf("preview: latents %v, image %d: want [B, 4, h, w] with i < B", shape, i)
	}
	c := s.Child()
	defer c.Close()
	x := c.Narrow(latents, 0, int64(i), 1)
	if x.DType() != tensor.Float32 {
		x = c.ToDType(x, tensor.Float32)
	}
	if x.Device() != tensor.CPU {
		x = c.To(x, tensor.CPU)
	}
	vals := c.Float32s(c.Contiguous(x))
	if err := c.Err(); err != nil {
		c.TakeErr()
		return nil, fmt.Errorf("preview: %w", err)
	}
	h, w := int(shape[2]), int(shape[3])
	plane := h * w
	img := NewRGB(w, h)
	for p := range plane {
		for ch := range 3 {
			var v float32
			for l := range 4 {
				v += vals[l*plane+p] * latentRGB[l][ch]
			}
			v = (v + 1) / 2
			if !(v >= 0) { // also NaN
				v = 0
			}
			img.Pix[3*p+ch] = uint8(min(v, 1) * 255)
		}
	}
	return img, nil
}
