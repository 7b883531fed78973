package sam

import "github.com/refiners-go/refiners/core"

// How Refiners 0.4.0 initialises the SAM layers' parameters (core.Initializer,
// for refinersd init): the relative-position tables are zeros, the point
// type and IoU/mask token tables torch.randn.

func (l *RelativePositionAttention) InitOf(core.Param) core.Init { return core.Constant(0) }
func (l *PointTypeEmbedding) InitOf(core.Param) core.Init        { return core.Normal(0, 1) }
func (l *IOUMaskEncoder) InitOf(core.Param) core.Init            { return core.Normal(0, 1) }
