package diffusion

import (
	"github.com/refiners-go/refiners/core/tensor"
)

// euler is Refiners' Euler solver (arXiv:2206.00364) for noise-predicting
// models, in the σ = √(1−ᾱ)/√ᾱ parametrisation: the latents live at scale
// √(σ²+1), the U-Net sees x/√(σ²+1), and a step is x + ε·(σ_next − σ).
// Timesteps are linspace(0, 999, n) as float32 values (not integers), σ at
// a timestep is interpolated linearly in the training σ's, and σ = 0 after
// the last step.
type euler struct {
	base
	sigmas []float32 // per inference step, then 0
	max    float32
}

func newEuler(b base) *euler {
	sch := b.sch
	train := make([]float64, trainSteps)
	for i := range train {
		train[i] = float64(sch.NoiseStd[i] / sch.CumulativeScaleFactors[i]) // a float32 division, as Refiners'
	}
	e := &euler{base: b, sigmas: make([]float32, b.steps+1)}
	for i, t := range b.timesteps {
		// np.interp in float64, then Refiners' .to(float32).
		e.sigmas[i] = float32(npInterp(t, train))
		e.max = max(e.max, e.sigmas[i])
	}
	return e
}

// InitNoiseSigma is σ_max: Refiners' init_noise_sigma (sigmas.max()).
func (e *euler) InitNoiseSigma() float64 { return float64(e.max) }

// ScaleModelInput is x / √(σ²+1), σ at step.
func (e *euler) ScaleModelInput(s *tensor.Scope, x *tensor.Tensor, step int) *tensor.Tensor {
	if !e.checkStep(s, "scale model input", step, 0) {
		return nil
	}
	sigma := e.sigmas[step]
	// (σ**2 + 1) ** 0.5, as Refiners writes it.
	denom := scalarOp(s, float32(sigma*sigma)+1, func(c *tensor.Scope, t *tensor.Tensor) *tensor.Tensor { return c.Pow(t, 0.5) })
	return inFloat32(s, func(c *tensor.Scope, v []*tensor.Tensor) *tensor.Tensor {
		return c.DivScalar(v[0], float64(denom))
	}, x)
}

// Step is x + ε·(σ_next − σ).
func (e *euler) Step(s *tensor.Scope, x, predictedNoise *tensor.Tensor, step int) *tensor.Tensor {
	if !e.checkStep(s, "step", step, e.first) || !sameShape(s, "euler: step", x, predictedNoise) {
		return nil
	}
	dsigma := e.sigmas[step+1] - e.sigmas[step]
	return inFloat32(s, func(c *tensor.Scope, v []*tensor.Tensor) *tensor.Tensor {
		return c.Add(v[0], c.Scale(v[1], float64(dsigma)))
	}, x, predictedNoise)
}

// AddNoise is not defined for Euler: Refiners 0.4.0's Euler.add_noise
// indexes the schedule with a float timestep and fails, so img2img and
// inpainting from an init image cannot use Euler there either.
func (e *euler) AddNoise(s *tensor.Scope, x, noise *tensor.Tensor, step int) *tensor.Tensor {
	if s.Err() == nil {
		s.Failf("euler: add noise is not defined (Refiners 0.4.0's Euler cannot noise an init image: its timesteps are not integers); use dpm or ddim for img2img")
	}
	return nil
}
