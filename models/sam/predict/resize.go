package predict

import (
	"github.com/refiners-go/refiners/imageproc"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

// resizeBilinear scales an image to w×h as PIL's
// Image.resize((w, h), Image.Resampling.BILINEAR) does on an 8-bit RGB
// image (imageproc.Resize8 with the triangle filter: widened by the scale
// factor when shrinking, horizontal pass then vertical pass, each rounded
// to 8 bits). An image already w×h is returned as is (PIL copies it).
func resizeBilinear(m *pipeline.RGB, w, h int) *pipeline.RGB {
	if w == m.Width && h == m.Height {
		return m
	}
	return &pipeline.RGB{Width: w, Height: h, Pix: imageproc.Resize8(m.Pix, m.Width, m.Height, 3, w, h, imageproc.Bilinear)}
}
