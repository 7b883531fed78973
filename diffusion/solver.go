// Package diffusion holds what a latent diffusion pipeline needs besides
// its models: the solvers (DPM-Solver++ 2M, DDIM, Euler) that turn the
// U-Net's noise predictions into less noisy latents, with Refiners 0.4.0's
// noise schedule, timestep spacings and first/last-step rules.
//
// Solvers compute in float32 with the same operations, in the same order,
// as Refiners' float32 solvers, on a noise schedule libtorch computes
// exactly as Refiners does, so on the same CPU kernel (ATEN_CPU_CAPABILITY)
// every step's output is the reference's, bit for bit.
package diffusion

import (
	"fmt"
	"strings"

	"github.com/refiners-go/refiners/core/tensor"
)

// Solver runs the reverse diffusion of one generation. Inference steps are
// numbered 0..NumSteps()-1 from the noisiest; a generation runs
// FirstStep()..NumSteps()-1 (img2img starts past 0).
//
// A Solver carries per-run state (DPM-Solver keeps the previous step's data
// estimate), so make a fresh one per generation, call Step once per step in
// order, and Close it when the generation ends or is abandoned. A Solver is
// not safe for concurrent use.
//
// The tensor methods record failures in the scope, as tensor ops do, and
// then return nil: a step out of range, mismatched shapes, an operation
// the solver does not define (Euler's AddNoise).
type Solver interface {
	// Name is the solver's name for NewSolver: "dpm", "ddim" or "euler".
	Name() string
	// NumSteps is the number of inference steps of the schedule.
	NumSteps() int
	// FirstStep is the first step this generation runs (0 for txt2img).
	FirstStep() int
	// Timestep is the training timestep (0..999) the U-Net is conditioned
	// on at inference step step (Refiners' solver.timesteps[step]): an
	// integer for DPM and DDIM, a float32 value for Euler. It panics if
	// step is not in [0, NumSteps()).
	Timestep(step int) float64
	// InitNoiseSigma scales the initial latents (Refiners'
	// scale_model_input(x, step=-1)): txt2img starts from noise ×
	// InitNoiseSigma(), img2img from AddNoise(latents, noise, FirstStep())
	// × InitNoiseSigma(). 1 except for Euler (σ_max); multiply with
	// Scope.Scale, which rounds it to float32 as Refiners' tensor does.
	InitNoiseSigma() float64
	// ScaleModelInput is the U-Net input at step (in [0, NumSteps())) for
	// latents x of any shape (the guidance batch too): x / √(σ²+1) for
	// Euler, x itself (a shallow copy) for the others. Refiners' step −1
	// (the initial latents) is InitNoiseSigma.
	ScaleModelInput(s *tensor.Scope, x *tensor.Tensor, step int) *tensor.Tensor
	// Step advances the latents x at step, given the (guided) predicted
	// noise, to the latents of the next step: Refiners' solver(x,
	// predicted_noise, step). The result has x's shape and dtype; float16
	// and bfloat16 latents are stepped in float32 and rounded back.
	Step(s *tensor.Scope, x, predictedNoise *tensor.Tensor, step int) *tensor.Tensor
	// AddNoise noises clean latents x to the level of step:
	// √ᾱ_t·x + √(1−ᾱ_t)·noise with t = Timestep(step). Euler does not
	// define it (Refiners' Euler.add_noise fails on its float timesteps).
	AddNoise(s *tensor.Scope, x, noise *tensor.Tensor, step int) *tensor.Tensor
	// Close releases the tensors the solver keeps between steps. It is
	// idempotent; the solver must not be used afterwards.
	Close()
}

// SolverNames are the names NewSolver accepts; "dpm" is Refiners' default
// for Stable Diffusion 1.5.
var SolverNames = []string{"dpm", "ddim", "euler"}

// NewSolver makes a solver for one generation of numSteps inference steps
// that starts at firstStep (0 for txt2img; Refiners'
// solver.rebuild(num_inference_steps, first_inference_step)):
//
//   - "dpm": DPM-Solver++ 2M (DPMSolver), the first step it runs first order,
//     the last one second order;
//   - "ddim": DDIM with leading timestep spacing and offset 1;
//   - "euler": Euler with linspace (float) timesteps.
//
// The first call computes the noise schedule with libtorch (once per
// process).
func NewSolver(name string, numSteps, firstStep int) (Solver, error) {
	kind, ok := solverKinds[name]
	if !ok {
		return nil, fmt.Errorf("unknown solver %q (want %s)", name, strings.Join(SolverNames, ", "))
	}
	if numSteps <= 0 {
		return nil, fmt.Errorf("solver %s: %d inference steps, want at least 1", name, numSteps)
	}
	if numSteps > trainSteps {
		return nil, fmt.Errorf("solver %s: %d inference steps, want at most %d (the training steps)", name, numSteps, trainSteps)
	}
	if firstStep < 0 || firstStep >= numSteps {
		return nil, fmt.Errorf("solver %s: first step %d out of range [0, %d)", name, firstStep, numSteps)
	}
	sch, err := NoiseSchedule()
	if err != nil {
		return nil, fmt.Errorf("solver %s: %w", name, err)
	}
	b := base{name: name, steps: numSteps, first: firstStep, sch: sch}
	b.timesteps = kind.timesteps(numSteps)
	// Refiners does not check these and fails or divides by zero: with
	// 1000 steps, DPM-Solver's spacing repeats a timestep and DDIM's
	// offset reaches timestep 1000.
	if last := b.timesteps[0]; last > trainSteps-1 {
		return nil, fmt.Errorf("solver %s: %d inference steps reach timestep %g, past the last training step %d; use fewer steps", name, numSteps, last, trainSteps-1)
	}
	for i := 1; i < numSteps; i++ {
		if b.timesteps[i] >= b.timesteps[i-1] {
			return nil, fmt.Errorf("solver %s: %d inference steps repeat timestep %g; use fewer steps", name, numSteps, b.timesteps[i])
		}
	}
	return kind.make(b), nil
}

// solverKinds builds each solver: its timestep spacing and its type.
var solverKinds = map[string]struct {
	timesteps func(numSteps int) []float64
	make      func(b base) Solver
}{
	"dpm":   {dpmTimesteps, func(b base) Solver { return &dpm{base: b} }},
	"ddim":  {func(n int) []float64 { return leadingTimesteps(n, 1) }, func(b base) Solver { return &ddim{base: b} }},
	"euler": {linspaceTimesteps, func(b base) Solver { return newEuler(b) }},
}

// base is what every solver shares: the schedule and its timesteps.
type base struct {
	name         string
	steps, first int
	timesteps    []float64 // per inference step, noisiest first
	sch          *Schedule
}

func (b *base) Name() string              { return b.name }
func (b *base) NumSteps() int             { return b.steps }
func (b *base) FirstStep() int            { return b.first }
func (b *base) Timestep(step int) float64 { return b.timesteps[step] }
func (b *base) InitNoiseSigma() float64   { return 1 }
func (b *base) Close()                    {}

func (b *base) ScaleModelInput(s *tensor.Scope, x *tensor.Tensor, step int) *tensor.Tensor {
	if !b.checkStep(s, "scale model input", step, 0) {
		return nil
	}
	return s.ShallowCopy(x)
}

// AddNoise is √ᾱ_t·x + √(1−ᾱ_t)·noise (Refiners' Solver.add_noise).
func (b *base) AddNoise(s *tensor.Scope, x, noise *tensor.Tensor, step int) *tensor.Tensor {
	if !b.checkStep(s, "add noise", step, 0) || !sameShape(s, b.name+": add noise", x, noise) {
		return nil
	}
	t := int(b.timesteps[step])
	return inFloat32(s, func(c *tensor.Scope, v []*tensor.Tensor) *tensor.Tensor {
		return c.Add(c.Scale(v[0], float64(b.sch.CumulativeScaleFactors[t])), c.Scale(v[1], float64(b.sch.NoiseStd[t])))
	}, x, noise)
}

// checkStep records an error in s unless step is in [lowest, steps): Step
// runs only the generation's steps (lowest = first), the other methods
// take any step of the schedule (lowest = 0).
func (b *base) checkStep(s *tensor.Scope, what string, step, lowest int) bool {
	if s.Err() != nil {
		return false
	}
	if step < lowest || step >= b.steps {
		s.Failf("%s: %s: step %d out of range [%d, %d)", b.name, what, step, lowest, b.steps)
		return false
	}
	return true
}

// sameShape records an error in s unless a and b are valid tensors of the
// same shape.
func sameShape(s *tensor.Scope, what string, a, b *tensor.Tensor) bool {
	if !a.Valid() || !b.Valid() {
		s.Failf("%s: tensor is nil or dropped", what)
		return false
	}
	sa, sb := a.Shape(), b.Shape()
	if fmt.Sprint(sa) != fmt.Sprint(sb) {
		s.Failf("%s: shapes %v and %v differ", what, sa, sb)
		return false
	}
	return true
}

// inFloat32 runs f on the inputs in float32, Refiners' solver dtype, and
// returns its result in the first input's dtype: float32 inputs are used as
// they are, half-precision ones are widened first (so the step is more
// precise than a float16 Refiners solver, not less). Intermediates are
// dropped.
func inFloat32(s *tensor.Scope, f func(c *tensor.Scope, in []*tensor.Tensor) *tensor.Tensor, in ...*tensor.Tensor) *tensor.Tensor {
	c := s.Child()
	defer c.Close()
	dt := in[0].DType()
	if !dt.IsFloat() {
		s.Failf("solver: latents of dtype %s, want a floating type", dt)
		return nil
	}
	wide := make([]*tensor.Tensor, len(in))
	for i, t := range in {
		wide[i] = t
		if t.DType() != tensor.Float32 {
			wide[i] = c.ToDType(t, tensor.Float32)
		}
	}
	out := f(c, wide)
	if out != nil && dt != tensor.Float32 {
		out = c.ToDType(out, dt)
	}
	c.Close(out)
	return out
}
