package all

import (
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/spec"
)

func TestModelLayersAreRegistered(t *testing.T) {
	for _, name := range []string{"SinusoidalEmbedding", "StatefulFlatten", "PopContext", "ResidualAccumulator",
		"ResidualConcatenator", "UseResidual", "TokenEncoder", "PositionalEncoder",
		"RelativePositionAttention", "WindowPartition", "WindowMerge", "PointTypeEmbedding", "PointPadding", "SAMPositionalEncoder", "IOUMaskEncoder", "EmbeddingsAggregator", "Hypernetworks", "MaskEncoder"} {
		if _, ok := core.LookupLayer(name); !ok {
			t.Errorf("%s is not registered", name)
		}
	}
	for _, path := range []string{"../../specs/sd15_unet.yaml", "../../specs/clip_text.yaml", "../../specs/sam.yaml", "../../specs/sam_point_encoder.yaml", "../../specs/sam_mask_decoder.yaml", "../../specs/sam_mask_encoder.yaml"} {
		s, err := spec.Load(path)
		if err == nil {
			_, err = s.Build(nil)
		}
		if err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
}
