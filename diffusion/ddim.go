package diffusion

import "github.com/refiners-go/refiners/core/tensor"

// ddim is Refiners' DDIM solver (arXiv:2010.02502), deterministic (η = 0),
// with leading timestep spacing and offset 1. With α = √ᾱ at the current
// timestep and α' at the next one (α at t = 0 after the last step):
//
//	x̂0 = (x − √(1−α²)·ε)/α,   x' = α'·x̂0 + √(1−α'²)·ε,
//
// with no noise term on the last step.
type ddim struct{ base }

func (d *ddim) Step(s *tensor.Scope, x, predictedNoise *tensor.Tensor, step int) *tensor.Tensor {
	if !d.checkStep(s, "step", step, d.first) || !sameShape(s, "ddim: step", x, predictedNoise) {
		return nil
	}
	csf := d.sch.CumulativeScaleFactors
	scale := csf[int(d.timesteps[step])]
	nextScale := csf[0]
	if step < d.steps-1 {
		nextScale = csf[int(d.timesteps[step+1])]
	}
	std := sqrtf(s, 1-float32(scale*scale))
	noiseFactor := sqrtf(s, 1-float32(nextScale*nextScale))
	if step == d.steps-1 {
		noiseFactor = 0 // no noise on the last step, to avoid artifacts
	}
	return inFloat32(s, func(c *tensor.Scope, v []*tensor.Tensor) *tensor.Tensor {
		x, eps := v[0], v[1]
		x0 := c.DivScalar(c.Sub(x, c.Scale(eps, float64(std))), float64(scale))
		return c.Add(c.Scale(x0, float64(nextScale)), c.Scale(eps, float64(noiseFactor)))
	}, x, predictedNoise)
}

// sqrtf is √v by libtorch's float32 sqrt (see scalarOp).
func sqrtf(s *tensor.Scope, v float32) float32 { return scalarOp(s, v, (*tensor.Scope).Sqrt) }
