package diffusion

import (
	"context"
	"fmt"
	"math"
	"sync"

	"github.com/refiners-go/refiners/core/tensor"
)

// Refiners 0.4.0's Solver defaults: 1000 training steps and a
// "quadratic" (scaled-linear) schedule of diffusion rates β from 8.5e-4 to
// 1.2e-2.
const (
	trainSteps           = 1000
	initialDiffusionRate = 8.5e-4
	finalDiffusionRate   = 1.2e-2
)

// Schedule is the noise schedule over the training timesteps t = 0..999,
// as float32 values computed by libtorch with Refiners' float32 operations:
// β_t = linspace(√β_0, √β_999, 1000)_t², ᾱ_t = ∏_{s≤t} (1 − β_s).
type Schedule struct {
	// CumulativeScaleFactors is √ᾱ_t, the signal's scale at t.
	CumulativeScaleFactors []float32
	// NoiseStd is √(1 − ᾱ_t), the noise's standard deviation at t.
	NoiseStd []float32
	// SignalToNoiseRatios is log √ᾱ_t − log √(1 − ᾱ_t) (λ_t in
	// DPM-Solver's notation).
	SignalToNoiseRatios []float32
}

var (
	scheduleOnce sync.Once
	schedule     *Schedule
	scheduleErr  error
)

// NoiseSchedule returns the schedule every solver uses, computing it on the
// first call. Its values depend on libtorch's CPU kernel in use
// (ATEN_CPU_CAPABILITY), as Refiners' own do; the caller must not modify it.
func NoiseSchedule() (*Schedule, error) {
	scheduleOnce.Do(func() {
		scheduleErr = tensor.Run(context.Background(), func(s *tensor.Scope) error {
			schedule = computeSchedule(s)
			return s.Err()
		})
		if scheduleErr != nil {
			scheduleErr = fmt.Errorf("noise schedule: %w", scheduleErr)
		}
	})
	return schedule, scheduleErr
}

// computeSchedule runs Refiners' Solver.__init__ (sample_noise_schedule,
// then the cumulative buffers) op for op in float32, so that the values
// are its values bit for bit.
func computeSchedule(s *tensor.Scope) *Schedule {
	// sample_power_distribution(2): linspace(β_0^(1/2), β_999^(1/2)) ** 2.
	// Python's x ** (1/2) is the correctly rounded square root for these
	// two values, as math.Sqrt is.
	rates := s.Linspace(math.Sqrt(initialDiffusionRate), math.Sqrt(finalDiffusionRate), trainSteps, tensor.Float32)
	scaleFactors := oneMinus(s, s.Pow(rates, 2))
	cumulative := s.Cumprod(scaleFactors, 0)
	csf := s.Sqrt(cumulative)
	noiseStd := s.Sqrt(oneMinus(s, cumulative))
	snr := s.Sub(s.Log(csf), s.Log(noiseStd))
	out := &Schedule{
		CumulativeScaleFactors: s.Float32s(csf),
		NoiseStd:               s.Float32s(noiseStd),
		SignalToNoiseRatios:    s.Float32s(snr),
	}
	if s.Err() == nil && len(out.CumulativeScaleFactors) != trainSteps {
		s.Failf("noise schedule: %d values, want %d", len(out.CumulativeScaleFactors), trainSteps)
	}
	return out
}

// oneMinus is Python's 1 - t on a float tensor: −t + 1 rounds once, like
// torch's rsub.
func oneMinus(s *tensor.Scope, t *tensor.Tensor) *tensor.Tensor { return s.AddScalar(s.Neg(t), 1) }

// dpmTimesteps is DPMSolver's custom spacing: numpy's linspace(0, 999,
// n+1) rounded half to even, without its first value, noisiest first
// (n = 30 gives 999, 966, …, 33).
func dpmTimesteps(n int) []float64 {
	space := npLinspace(0, trainSteps-1, n+1)
	out := make([]float64, n)
	for i := range out {
		out[i] = math.RoundToEven(space[n-i])
	}
	return out
}

// leadingTimesteps is the LEADING spacing: (0, 1, …, n−1)·(1000 div n) +
// offset, noisiest first (DDIM's n = 30 with offset 1 gives 958, …, 1).
func leadingTimesteps(n, offset int) []float64 {
	ratio := trainSteps / n
	out := make([]float64, n)
	for i := range out {
		out[i] = float64((n-1-i)*ratio + offset)
	}
	return out
}

// linspaceTimesteps is the LINSPACE spacing Euler uses: numpy's
// linspace(0, 999, n) rounded to float32, noisiest first.
func linspaceTimesteps(n int) []float64 {
	space := npLinspace(0, trainSteps-1, n)
	out := make([]float64, n)
	for i := range out {
		out[i] = float64(float32(space[n-1-i]))
	}
	return out
}

// npLinspace is numpy.linspace(start, stop, num) in float64, computed as
// numpy computes it: i·step + start with step = (stop − start)/(num − 1),
// the last value set to stop.
func npLinspace(start, stop float64, num int) []float64 {
	out := make([]float64, num)
	if num == 1 {
		out[0] = start
		return out
	}
	step := (stop - start) / float64(num-1)
	for i := range out {
		out[i] = float64(float64(i)*step) + start
	}
	out[num-1] = stop
	return out
}

// npInterp is numpy.interp(x, arange(len(fp)), fp) in float64: linear
// interpolation between integer abscissae, as numpy computes it
// (slope·(x − j) + fp[j], with fp[j] itself at the nodes).
func npInterp(x float64, fp []float64) float64 {
	last := len(fp) - 1
	switch {
	case math.IsNaN(x):
		return x
	case x <= 0:
		return fp[0]
	case x >= float64(last):
		return fp[last]
	}
	j := int(math.Floor(x))
	if float64(j) == x {
		return fp[j]
	}
	slope := (fp[j+1] - fp[j]) / 1
	return float64(slope*(x-float64(j))) + fp[j]
}
