package diffusion

import (
	"math"

	"github.com/refiners-go/refiners/core/tensor"
)

// dpm is Refiners' DPMSolver: DPM-Solver++ 2M for noise-predicting models
// (arXiv:2211.01095). Each step first estimates the clean latents
// x̂0 = (x − σ_s·ε)/α_s at the current timestep s, then moves to the next
// timestep t (0 after the last step) in the λ = log α − log σ variable,
// h = λ_t − λ_s:
//
//	first order:  x_t = (σ_t/σ_s)·x − α_t(e^−h − 1)·x̂0
//	second order: x_t = (σ_t/σ_s)·x − α_t(e^−h − 1)·x̂0 − ½α_t(e^−h − 1)·D,
//	              D = (x̂0 − x̂0_prev) / ((λ_s − λ_prev)/h)
//
// The generation's first step is first order (there is no previous
// estimate), every other one second order, the last included
// (last_step_first_order is false for SD 1.5).
type dpm struct {
	base
	prev     *tensor.Tensor // x̂0 of the previous step, float32, escaped
	prevStep int            // the step that made prev
}

func (d *dpm) Step(s *tensor.Scope, x, predictedNoise *tensor.Tensor, step int) *tensor.Tensor {
	if !d.checkStep(s, "step", step, d.first) || !sameShape(s, "dpm: step", x, predictedNoise) {
		return nil
	}
	secondOrder := step > d.first
	if secondOrder && (d.prev == nil || d.prevStep != step-1) {
		s.Failf("dpm: step %d before step %d: steps run in order from the first step, %d", step, step-1, d.first)
		return nil
	}
	sch := d.sch
	cur := int(d.timesteps[step])
	next := 0 // the timestep the step lands on: 0 after the last step
	if step < d.steps-1 {
		next = int(d.timesteps[step+1])
	}
	scale, std := sch.CumulativeScaleFactors[cur], sch.NoiseStd[cur]
	// The coefficients are float32 scalars computed with the same
	// operations as Refiners' 0-d float32 tensors; exp goes through
	// libtorch, the rest is exactly rounded Go float32 arithmetic.
	lambdaNext, lambdaCur := sch.SignalToNoiseRatios[next], sch.SignalToNoiseRatios[cur]
	factor := expf(s, -(lambdaNext-lambdaCur)) - 1
	ratio := sch.NoiseStd[next] / std
	k := float32(factor * sch.CumulativeScaleFactors[next])
	var r float32 // (λ_s − λ_prev)/h
	if secondOrder {
		lambdaPrev := sch.SignalToNoiseRatios[int(d.timesteps[step-1])]
		r = (lambdaCur - lambdaPrev) / (lambdaNext - lambdaCur)
	}
	var estimate *tensor.Tensor
	out := inFloat32(s, func(c *tensor.Scope, v []*tensor.Tensor) *tensor.Tensor {
		x, eps := v[0], v[1]
		estimate = c.DivScalar(c.Sub(x, c.Scale(eps, float64(std))), float64(scale))
		y := c.Sub(c.Scale(x, float64(ratio)), c.Scale(estimate, float64(k)))
		if secondOrder {
			delta := c.DivScalar(c.Sub(estimate, d.prev), float64(r))
			y = c.Sub(y, c.Scale(delta, float64(float32(0.5*k))))
		}
		c.Escape(estimate)
		return y
	}, x, predictedNoise)
	if s.Err() != nil {
		estimate.Drop()
		return nil
	}
	d.prev.Drop()
	d.prev, d.prevStep = estimate, step
	if step == d.steps-1 {
		d.Close() // nothing follows the last step
	}
	return out
}

// Close drops the previous estimate.
func (d *dpm) Close() {
	d.prev.Drop()
	d.prev = nil
}

// expf is e^v rounded to float32 by libtorch's float32 exp, the kernel
// Refiners' 0-d tensors go through.
func expf(s *tensor.Scope, v float32) float32 { return scalarOp(s, v, (*tensor.Scope).Exp) }

// scalarOp applies a float32 libtorch op to v on a one-element CPU tensor.
// Refiners computes its step coefficients as 0-d float32 tensors, and
// libtorch's sqrt and exp are not always the correctly rounded results Go
// would give (sqrt(0.99246526) is one ulp above), so the solvers ask
// libtorch for those; +, −, × and ÷ are exactly rounded on both sides and
// stay Go float32 arithmetic.
func scalarOp(s *tensor.Scope, v float32, op func(c *tensor.Scope, t *tensor.Tensor) *tensor.Tensor) float32 {
	c := s.Child()
	defer c.Close()
	out := c.Float32s(op(c, c.FromFloat32([]float32{v}, 1)))
	if len(out) != 1 {
		return float32(math.NaN()) // c failed; the error reaches s when c closes
	}
	return out[0]
}
