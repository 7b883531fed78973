package core

import "testing"

// TestCoreRegistersNoModelLayers: model-specific layers live in model
// packages (models/sd15, models/clip, ...) that register themselves; core
// alone knows none of them.
func TestCoreRegistersNoModelLayers(t *testing.T) {
	for _, name := range []string{"SinusoidalEmbedding", "StatefulFlatten", "PopContext", "ResidualAccumulator",
		"ResidualConcatenator", "UseResidual", "TokenEncoder", "PositionalEncoder",
		"RelativePositionAttention", "WindowPartition", "WindowMerge", "PointTypeEmbedding"} {
		if _, ok := LookupLayer(name); ok {
			t.Errorf("core registers the model-specific layer %s", name)
		}
	}
}
