package diffusion

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
)

func TestNewSolverErrors(t *testing.T) {
	for _, tc := range []struct {
		name         string
		steps, first int
		want         string
	}{
		{"dpmpp", 30, 0, `unknown solver "dpmpp" (want dpm, ddim, euler)`},
		{"", 30, 0, `unknown solver ""`},
		{"dpm", 0, 0, "solver dpm: 0 inference steps, want at least 1"},
		{"ddim", -3, 0, "solver ddim: -3 inference steps, want at least 1"},
		{"euler", 1001, 0, "solver euler: 1001 inference steps, want at most 1000"},
		{"dpm", 30, -1, "solver dpm: first step -1 out of range [0, 30)"},
		{"ddim", 30, 30, "solver ddim: first step 30 out of range [0, 30)"},
		{"dpm", 1000, 0, "solver dpm: 1000 inference steps repeat timestep"},
		{"ddim", 1000, 0, "solver ddim: 1000 inference steps reach timestep 1000, past the last training step 999"},
	} {
		sv, err := NewSolver(tc.name, tc.steps, tc.first)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewSolver(%q, %d, %d) = %v, %v; want error containing %q", tc.name, tc.steps, tc.first, sv, err, tc.want)
		}
	}
}

// Every solver accepts every step count up to the training steps (DPM and
// DDIM up to 999), with timesteps strictly decreasing inside [0, 999].
func TestTimestepsInRange(t *testing.T) {
	for _, name := range SolverNames {
		for n := 1; n <= trainSteps; n++ {
			sv, err := NewSolver(name, n, 0)
			if name != "euler" && n == trainSteps {
				if err == nil {
					t.Errorf("dpm with %d steps accepted", n)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%s, %d steps: %v", name, n, err)
			}
			if sv.Name() != name || sv.NumSteps() != n || sv.FirstStep() != 0 {
				t.Fatalf("%s, %d steps: got %s, %d steps from %d", name, n, sv.Name(), sv.NumSteps(), sv.FirstStep())
			}
			prev := math.Inf(1)
			for i := range n {
				ts := sv.Timestep(i)
				if ts < 0 || ts > trainSteps-1 || ts >= prev {
					t.Fatalf("%s, %d steps: timestep %d is %g after %g", name, n, i, ts, prev)
				}
				if name != "euler" && ts != math.Trunc(ts) {
					t.Fatalf("%s, %d steps: timestep %d is %g, not an integer", name, n, i, ts)
				}
				prev = ts
			}
		}
	}
}

// The spacings Refiners documents for 30 steps.
func TestTimestepEnds(t *testing.T) {
	for _, tc := range []struct {
		name        string
		first, last float64
	}{
		{"dpm", 999, 33},
		{"ddim", 958, 1},
		{"euler", 999, 0},
	} {
		sv, err := NewSolver(tc.name, 30, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got, gotLast := sv.Timestep(0), sv.Timestep(29); got != tc.first || gotLast != tc.last {
			t.Errorf("%s: timesteps %g … %g, want %g … %g", tc.name, got, gotLast, tc.first, tc.last)
		}
	}
}

func TestSchedule(t *testing.T) {
	sch, err := NoiseSchedule()
	if err != nil {
		t.Fatal(err)
	}
	if len(sch.CumulativeScaleFactors) != trainSteps || len(sch.NoiseStd) != trainSteps || len(sch.SignalToNoiseRatios) != trainSteps {
		t.Fatalf("schedule lengths %d, %d, %d", len(sch.CumulativeScaleFactors), len(sch.NoiseStd), len(sch.SignalToNoiseRatios))
	}
	// ᾱ_0 = 1 − β_0.
	if got, want := float64(sch.CumulativeScaleFactors[0]), math.Sqrt(1-initialDiffusionRate); math.Abs(got-want) > 1e-7 {
		t.Errorf("√ᾱ_0 = %.9g, want %.9g", got, want)
	}
	for i := range trainSteps {
		a, s, l := float64(sch.CumulativeScaleFactors[i]), float64(sch.NoiseStd[i]), float64(sch.SignalToNoiseRatios[i])
		if math.Abs(a*a+s*s-1) > 1e-6 {
			t.Fatalf("t=%d: α² + σ² = %g", i, a*a+s*s)
		}
		if math.Abs(l-(math.Log(a)-math.Log(s))) > 1e-5*math.Max(1, math.Abs(l)) {
			t.Fatalf("t=%d: λ = %g, want log α − log σ = %g", i, l, math.Log(a)-math.Log(s))
		}
		if i > 0 && (a >= float64(sch.CumulativeScaleFactors[i-1]) || s <= float64(sch.NoiseStd[i-1])) {
			t.Fatalf("t=%d: α or σ not monotonic", i)
		}
	}
	// Refiners' SD 1.5 schedule ends at ᾱ_999 ≈ 0.0047.
	if a := float64(sch.CumulativeScaleFactors[trainSteps-1]); math.Abs(a*a-0.0047) > 1e-4 {
		t.Errorf("ᾱ_999 = %g, want about 0.0047", a*a)
	}
}

// run runs f in a tensor job and fails the test on error.
func run(t *testing.T, f func(s *tensor.Scope) error) {
	t.Helper()
	if err := tensor.Run(context.Background(), f); err != nil {
		t.Fatal(err)
	}
}

func randn(s *tensor.Scope, seed uint64) *tensor.Tensor {
	return s.Randn(seed, tensor.Float32, 1, 4, 3, 5)
}

func maxAbsDiff(s *tensor.Scope, a, b *tensor.Tensor) float64 {
	av, bv := s.Float32s(a), s.Float32s(b)
	d := 0.0
	for i := range av {
		d = math.Max(d, math.Abs(float64(av[i])-float64(bv[i])))
	}
	if len(av) != len(bv) || len(av) == 0 {
		return math.Inf(1)
	}
	return d
}

// Given the true noise at every step, each solver denoises exactly: DDIM
// and DPM-Solver land on the noised sample of the next timestep (x̂0 is
// the clean sample), Euler on the sample at the next σ, and all three end
// on the clean latents (DPM at t = 0, where √ᾱ_0·x0 + √(1−ᾱ_0)·ε remains).
func TestTrueNoiseDenoises(t *testing.T) {
	sch, err := NoiseSchedule()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range SolverNames {
		for _, steps := range []struct{ n, first int }{{1, 0}, {2, 0}, {30, 0}, {20, 7}} {
			if name == "euler" && steps.first > 0 {
				continue // Euler cannot add noise
			}
			run(t, func(s *tensor.Scope) error {
				sv, err := NewSolver(name, steps.n, steps.first)
				if err != nil {
					return err
				}
				defer sv.Close()
				x0, eps := randn(s, 1), randn(s, 2)
				var x, want *tensor.Tensor
				switch name {
				case "euler":
					x = s.Add(x0, s.Scale(eps, sv.InitNoiseSigma()))
					want = x0
				case "ddim":
					x = sv.AddNoise(s, x0, eps, steps.first)
					want = s.Scale(x0, float64(sch.CumulativeScaleFactors[0]))
				case "dpm":
					x = sv.AddNoise(s, x0, eps, steps.first)
					want = s.Add(s.Scale(x0, float64(sch.CumulativeScaleFactors[0])), s.Scale(eps, float64(sch.NoiseStd[0])))
				}
				for k := sv.FirstStep(); k < sv.NumSteps(); k++ {
					x = sv.Step(s, x, eps, k)
					if name != "euler" && k+1 < sv.NumSteps() {
						if d := maxAbsDiff(s, x, sv.AddNoise(s, x0, eps, k+1)); d > 1e-4 {
							t.Errorf("%s %d/%d: after step %d, %g from the noised sample at step %d", name, steps.n, steps.first, k, d, k+1)
						}
					}
				}
				if d := maxAbsDiff(s, x, want); d > 1e-4 || s.Err() != nil {
					t.Errorf("%s %d/%d: final latents %g from the clean ones (%v)", name, steps.n, steps.first, d, s.Err())
				}
				return s.Err()
			})
		}
	}
}

func TestScaleModelInput(t *testing.T) {
	run(t, func(s *tensor.Scope) error {
		x := randn(s, 3)
		for _, name := range []string{"dpm", "ddim"} {
			sv, _ := NewSolver(name, 10, 0)
			if sv.InitNoiseSigma() != 1 {
				t.Errorf("%s: init noise sigma %g, want 1", name, sv.InitNoiseSigma())
			}
			if d := maxAbsDiff(s, sv.ScaleModelInput(s, x, 4), x); d != 0 {
				t.Errorf("%s: scale model input changed x by %g", name, d)
			}
		}
		sv, _ := NewSolver("euler", 10, 0)
		// σ_max of SD 1.5's schedule is √((1−ᾱ_999)/ᾱ_999) ≈ 14.6.
		if s := sv.InitNoiseSigma(); math.Abs(s-14.6146) > 1e-3 {
			t.Errorf("euler: init noise sigma %g, want about 14.6146", s)
		}
		got := sv.ScaleModelInput(s, x, 0)
		want := s.Scale(x, 1/math.Sqrt(sv.InitNoiseSigma()*sv.InitNoiseSigma()+1))
		if d := maxAbsDiff(s, got, want); d > 1e-6 {
			t.Errorf("euler: scale model input at step 0 is %g from x/√(σ_max²+1)", d)
		}
		return s.Err()
	})
}

// Misuse is an error recorded in the scope, with nil results.
func TestStepErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(s *tensor.Scope, sv Solver, x *tensor.Tensor) *tensor.Tensor
		want string
	}{
		{"dpm", func(s *tensor.Scope, sv Solver, x *tensor.Tensor) *tensor.Tensor { return sv.Step(s, x, x, 2) },
			"dpm: step: step 2 out of range [3, 10)"},
		{"ddim", func(s *tensor.Scope, sv Solver, x *tensor.Tensor) *tensor.Tensor { return sv.Step(s, x, x, 10) },
			"ddim: step: step 10 out of range [3, 10)"},
		{"euler", func(s *tensor.Scope, sv Solver, x *tensor.Tensor) *tensor.Tensor { return sv.ScaleModelInput(s, x, -1) },
			"euler: scale model input: step -1 out of range [0, 10)"},
		{"ddim", func(s *tensor.Scope, sv Solver, x *tensor.Tensor) *tensor.Tensor { return sv.AddNoise(s, x, x, 10) },
			"ddim: add noise: step 10 out of range [0, 10)"},
		{"dpm", func(s *tensor.Scope, sv Solver, x *tensor.Tensor) *tensor.Tensor {
			return sv.Step(s, x, s.Randn(1, tensor.Float32, 1, 4, 3, 4), 3)
		}, "dpm: step: shapes [1 4 3 5] and [1 4 3 4] differ"},
		{"dpm", func(s *tensor.Scope, sv Solver, x *tensor.Tensor) *tensor.Tensor { return sv.Step(s, x, nil, 3) },
			"dpm: step: tensor is nil or dropped"},
		// DPM-Solver needs the previous step's estimate.
		{"dpm", func(s *tensor.Scope, sv Solver, x *tensor.Tensor) *tensor.Tensor { return sv.Step(s, x, x, 4) },
			"dpm: step 4 before step 3: steps run in order from the first step, 3"},
		{"dpm", func(s *tensor.Scope, sv Solver, x *tensor.Tensor) *tensor.Tensor {
			sv.Step(s, x, x, 3)
			return sv.Step(s, x, x, 5)
		}, "dpm: step 5 before step 4"},
		{"euler", func(s *tensor.Scope, sv Solver, x *tensor.Tensor) *tensor.Tensor { return sv.AddNoise(s, x, x, 3) },
			"euler: add noise is not defined"},
		{"ddim", func(s *tensor.Scope, sv Solver, x *tensor.Tensor) *tensor.Tensor {
			return sv.Step(s, s.Zeros(tensor.Int64, 1, 4, 3, 5), s.Zeros(tensor.Int64, 1, 4, 3, 5), 3)
		}, "latents of dtype int64, want a floating type"},
	} {
		sv, err := NewSolver(tc.name, 10, 3)
		if err != nil {
			t.Fatal(err)
		}
		err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
			if out := tc.call(s, sv, randn(s, 4)); out != nil {
				t.Errorf("%s: got a result despite the error", tc.want)
			}
			return s.Err()
		})
		sv.Close()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got error %v, want one containing %q", err, tc.want)
		}
	}
}

// DPM-Solver keeps one estimate between steps and none after the last.
func TestDPMState(t *testing.T) {
	sv, err := NewSolver("dpm", 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	d := sv.(*dpm)
	run(t, func(s *tensor.Scope) error {
		x := randn(s, 5)
		for k := range 3 {
			c := s.Child()
			x = sv.Step(c, x, randn(c, uint64(10+k)), k)
			c.Close(x)
			if held := d.prev.Valid(); held != (k < 2) {
				t.Errorf("after step %d: holds an estimate: %v", k, held)
			}
		}
		return s.Err()
	})
	sv.Close()
	sv.Close()
}

// Half-precision latents are stepped in float32 and returned in their
// dtype.
func TestHalfPrecision(t *testing.T) {
	for _, name := range SolverNames {
		run(t, func(s *tensor.Scope) error {
			sv32, _ := NewSolver(name, 5, 0)
			sv16, _ := NewSolver(name, 5, 0)
			x16, eps16 := s.ToDType(randn(s, 6), tensor.Float16), s.ToDType(randn(s, 7), tensor.Float16)
			x, eps := s.ToDType(x16, tensor.Float32), s.ToDType(eps16, tensor.Float32)
			for k := range 2 {
				x = sv32.Step(s, x, eps, k)
				x16 = sv16.Step(s, x16, eps16, k)
			}
			if x16.DType() != tensor.Float16 {
				t.Errorf("%s: step returned %s for float16 latents", name, x16.DType())
			}
			if d := maxAbsDiff(s, x, x16); d > 2e-2 {
				t.Errorf("%s: float16 run %g from the float32 one", name, d)
			}
			return s.Err()
		})
	}
}
